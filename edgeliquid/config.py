"""Node configuration: YAML -> validated dataclasses; every error names the key and the file.

Channel conventions (physical units in, physical units out)::

    model input  x = (clip(raw, clip) - offset) * scale
    command      u = clip(y * scale + offset, clip), then rate-limited to max_rate units/s
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class InputChannel:
    name: str
    scale: float = 1.0
    offset: float = 0.0
    clip: tuple[float, float] = (-math.inf, math.inf)


@dataclass
class OutputChannel:
    name: str
    scale: float = 1.0
    offset: float = 0.0
    clip: tuple[float, float] = (-math.inf, math.inf)
    failsafe: float = 0.0
    max_rate: float = math.inf  # units per second


@dataclass
class NodeConfig:
    model: Path
    port: str
    baudrate: int = 115200
    protocol: str = "cobs"
    exclusive: bool = True
    mode: str = "event"
    rate_hz: float = 100.0
    model_dt: float = 0.01
    inputs: list[InputChannel] = field(default_factory=list)
    outputs: list[OutputChannel] = field(default_factory=list)
    sensor_timeout_ms: float = 100.0
    hold_cycles: int = 3
    on_recovery: str = "reset_state"
    arm_after: int = 3
    cpu: int | None = None
    sched_fifo: int | None = None
    mlockall: bool = False
    gc_freeze: bool = True
    spin_us: float = 0.0
    cpu_dma_latency_us: int | None = None
    stats_every_s: float = 10.0
    reconnect_min_s: float = 0.05
    reconnect_max_s: float = 2.0
    backend: str = "cpu"
    telemetry: dict[str, Any] | None = None
    source: str = "<dict>"

    def realtime_settings(self) -> dict[str, Any]:
        """The ``realtime:`` section as keywords of :func:`edgeliquid.realtime.apply`."""
        return {
            "cpu": self.cpu,
            "sched_fifo": self.sched_fifo,
            "mlockall": self.mlockall,
            "gc_freeze": self.gc_freeze,
            "cpu_dma_latency_us": self.cpu_dma_latency_us,
        }


_TOP = {
    "model",
    "serial",
    "loop",
    "inputs",
    "outputs",
    "failsafe",
    "realtime",
    "stats_every_s",
    "reconnect",
    "backend",
    "telemetry",
}


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {msg}")

    def section(self, data: dict, key: str, allowed: set[str]) -> dict:
        sec = data.get(key) or {}
        if not isinstance(sec, dict):
            raise self.fail(key, f"expected a mapping, got {type(sec).__name__}")
        extra = sorted(set(sec) - allowed)
        if extra:
            raise self.fail(f"{key}.{extra[0]}", f"unknown key; allowed: {sorted(allowed)}")
        return sec

    def num(
        self, sec: dict, key: str, path: str, default, lo=-math.inf, hi=math.inf, kind=float, strict_lo=False
    ):
        if key not in sec or sec[key] is None:
            return default
        v = sec[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.fail(path, f"expected a number, got {v!r}")
        if kind is int and int(v) != v:
            raise self.fail(path, f"expected an integer, got {v!r}")
        if not (v > lo if strict_lo else v >= lo) or v > hi or (isinstance(v, float) and math.isnan(v)):
            raise self.fail(path, f"{v!r} out of range ({'>' if strict_lo else '>='} {lo}, <= {hi})")
        return kind(v)

    def choice(self, sec: dict, key: str, path: str, default: str, options: tuple[str, ...]) -> str:
        v = sec.get(key, default)
        if v not in options:
            raise self.fail(path, f"{v!r} is not one of {list(options)}")
        return v

    def clip(self, ch: dict, path: str) -> tuple[float, float]:
        c = ch.get("clip")
        if c is None:
            return (-math.inf, math.inf)
        if (
            not (
                isinstance(c, (list, tuple))
                and len(c) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c)
            )
            or c[0] > c[1]
        ):
            raise self.fail(path, f"expected [low, high] with low <= high, got {c!r}")
        return (float(c[0]), float(c[1]))


def parse_config(data: Any, source: str = "<dict>", base: Path | None = None) -> NodeConfig:
    """Validate a config mapping; relative model paths resolve against ``base``."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    extra = sorted(set(data) - _TOP)
    if extra:
        raise r.fail(extra[0], f"unknown key; allowed: {sorted(_TOP)}")
    if "model" not in data or not isinstance(data["model"], str):
        raise r.fail("model", "required: path of the .onnx model file")
    model = Path(data["model"])
    if not model.is_absolute() and base is not None:
        model = base / model
    ser = r.section(data, "serial", {"port", "baudrate", "protocol", "exclusive"})
    if not isinstance(ser.get("port"), str) or not ser["port"]:
        raise r.fail("serial.port", "required: a device path or a pyserial URL")
    loop = r.section(data, "loop", {"mode", "rate_hz", "model_dt"})
    fs = r.section(data, "failsafe", {"sensor_timeout_ms", "hold_cycles", "on_recovery", "arm_after"})
    rt = r.section(
        data, "realtime", {"cpu", "sched_fifo", "mlockall", "gc_freeze", "spin_us", "cpu_dma_latency_us"}
    )
    rc = r.section(data, "reconnect", {"min_s", "max_s"})
    cfg = NodeConfig(
        model=model,
        port=ser["port"],
        source=source,
        baudrate=r.num(ser, "baudrate", "serial.baudrate", 115200, 1, kind=int),
        protocol=r.choice(ser, "protocol", "serial.protocol", "cobs", ("cobs", "text")),
        exclusive=bool(ser.get("exclusive", True)),
        mode=r.choice(loop, "mode", "loop.mode", "event", ("event", "fixed")),
        rate_hz=r.num(loop, "rate_hz", "loop.rate_hz", 100.0, 0, 100_000, strict_lo=True),
        model_dt=r.num(loop, "model_dt", "loop.model_dt", 0.01, 0, strict_lo=True),
        sensor_timeout_ms=r.num(
            fs, "sensor_timeout_ms", "failsafe.sensor_timeout_ms", 100.0, 0, strict_lo=True
        ),
        hold_cycles=r.num(fs, "hold_cycles", "failsafe.hold_cycles", 3, 0, kind=int),
        on_recovery=r.choice(
            fs, "on_recovery", "failsafe.on_recovery", "reset_state", ("reset_state", "keep_state")
        ),
        arm_after=r.num(fs, "arm_after", "failsafe.arm_after", 3, 1, kind=int),
        cpu=r.num(rt, "cpu", "realtime.cpu", None, 0, kind=int),
        sched_fifo=r.num(rt, "sched_fifo", "realtime.sched_fifo", None, 1, 99, kind=int),
        mlockall=bool(rt.get("mlockall", False)),
        gc_freeze=bool(rt.get("gc_freeze", True)),
        spin_us=r.num(rt, "spin_us", "realtime.spin_us", 0.0, 0),
        cpu_dma_latency_us=r.num(
            rt, "cpu_dma_latency_us", "realtime.cpu_dma_latency_us", None, 0, 2**31 - 1, kind=int
        ),
        stats_every_s=r.num(data, "stats_every_s", "stats_every_s", 10.0, 0, strict_lo=True),
        reconnect_min_s=r.num(rc, "min_s", "reconnect.min_s", 0.05, 0, strict_lo=True),
        reconnect_max_s=r.num(rc, "max_s", "reconnect.max_s", 2.0, 0, strict_lo=True),
        backend=r.choice(data, "backend", "backend", "cpu", ("cpu", "reference")),
        telemetry=_telemetry(r, data),
    )
    for key, cls in (("inputs", InputChannel), ("outputs", OutputChannel)):
        chans = data.get(key)
        if not isinstance(chans, list) or not chans:
            raise r.fail(key, "required: a non-empty list of channels")
        allowed = {"name", "scale", "offset", "clip", "unit"} | (
            {"failsafe", "max_rate"} if cls is OutputChannel else set()
        )
        out = []
        for i, ch in enumerate(chans):
            path = f"{key}[{i}]"
            if not isinstance(ch, dict) or not isinstance(ch.get("name"), str):
                raise r.fail(f"{path}.name", "each channel needs a name")
            bad = sorted(set(ch) - allowed)
            if bad:
                raise r.fail(f"{path}.{bad[0]}", f"unknown key; allowed: {sorted(allowed)}")
            kw = dict(
                name=ch["name"],
                scale=r.num(ch, "scale", f"{path}.scale", 1.0),
                offset=r.num(ch, "offset", f"{path}.offset", 0.0),
                clip=r.clip(ch, f"{path}.clip"),
            )
            if cls is OutputChannel:
                kw["failsafe"] = r.num(ch, "failsafe", f"{path}.failsafe", 0.0)
                lo, hi = kw["clip"]
                if not lo <= kw["failsafe"] <= hi:
                    raise r.fail(f"{path}.failsafe", f"{kw['failsafe']!r} outside clip {[lo, hi]}")
                kw["max_rate"] = r.num(ch, "max_rate", f"{path}.max_rate", math.inf, 0, strict_lo=True)
            out.append(cls(**kw))
        setattr(cfg, key, out)
    return cfg


def _telemetry(r: _Reader, data: dict) -> dict[str, Any] | None:
    if data.get("telemetry") is None:
        return None
    t = r.section(data, "telemetry", {"path", "rotate_mb", "rotate_s", "keep"})
    if not isinstance(t.get("path"), str) or not t["path"]:
        raise r.fail("telemetry.path", "required: the .mcap file to write")
    return {
        "path": t["path"],
        "rotate_mb": r.num(t, "rotate_mb", "telemetry.rotate_mb", 64.0, 0, strict_lo=True),
        "rotate_s": r.num(t, "rotate_s", "telemetry.rotate_s", 3600.0, 0, strict_lo=True),
        "keep": r.num(t, "keep", "telemetry.keep", 5, 1, kind=int),
    }


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    return parse_config(data, str(path), path.parent)
