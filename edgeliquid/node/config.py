"""Node configuration: YAML -> validated dataclasses; every error names the key and the file.

Channel conventions (physical units in, physical units out)::

    model input  x = (clip(raw, clip) - offset) * scale
    command      u = clip(y * scale + offset, clip), then rate-limited to max_rate units/s

A raw input outside its channel's ``range`` (a plausible physical range, optional) is an
invalid sample, like NaN: the node holds, then goes SAFE.

Hostile files cost bounded work: a config file may be at most :data:`MAX_CONFIG_BYTES`;
YAML anchors and aliases, nesting deeper than :data:`MAX_DEPTH`, duplicate keys and integers
longer than :data:`MAX_INT_DIGITS` characters are refused before the values are used; every
number must be finite and inside the bounds below; error messages show at most ~60
characters of any value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

MAX_CONFIG_BYTES = 256 * 1024  # real configs are a few KiB
MAX_DEPTH = 16  # nesting of mappings/sequences (a config needs 4)
MAX_INT_DIGITS = 40
MAX_TEXT = 4096  # model path, port, telemetry path
MAX_NAME = 64  # channel names and units
CHANNEL_LIMIT = 1e12  # |scale|, |offset|, |clip|, |range|, |failsafe|, max_rate: fits float32 with room
RATE_HZ = (0.1, 100_000.0)
MODEL_DT_S = (1e-6, 1e3)


@dataclass
class InputChannel:
    name: str
    scale: float = 1.0
    offset: float = 0.0
    clip: tuple[float, float] = (-math.inf, math.inf)
    range: tuple[float, float] | None = None  # plausible raw values; outside = invalid sample


@dataclass
class OutputChannel:
    name: str
    scale: float = 1.0
    offset: float = 0.0
    # Without a clip the command is still bounded so it always fits the wire's float32.
    clip: tuple[float, float] = (-CHANNEL_LIMIT, CHANNEL_LIMIT)
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
    allow_unstable: bool = False  # run a model whose explicit solver is unstable at nominal_elapsed
    telemetry: dict[str, Any] | None = None
    source: str = "<dict>"

    @property
    def nominal_elapsed(self) -> float:
        """Model time units per nominal period: ``(1 / rate_hz) / model_dt``."""
        return (1.0 / self.rate_hz) / self.model_dt

    def realtime_settings(self) -> dict[str, Any]:
        """The ``realtime:`` section as keywords of :func:`edgeliquid.node.realtime.apply`."""
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
    "allow_unstable",
    "telemetry",
}


_NONE = object()


def _short(v: Any, limit: int = 60, depth: int = 0) -> str:
    """``repr(v)`` cut to ``limit`` characters, in time bounded by ``limit`` (not by ``v``)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 160:
        s = f"<integer of {v.bit_length()} bits>"
    elif isinstance(v, str):
        s = repr(v[: limit + 1])
    elif isinstance(v, (list, tuple, dict)):
        items = list(v.items() if isinstance(v, dict) else v) if len(v) <= 4 else None
        if depth >= 2 or items is None:
            s = f"<{type(v).__name__} of {len(v)}>"
        elif isinstance(v, dict):
            s = "{" + ", ".join(f"{_short(k, 20, depth + 1)}: {_short(x, 20, depth + 1)}" for k, x in items)
            s += "}"
        else:
            s = "[" + ", ".join(_short(x, 20, depth + 1) for x in items) + "]"
    elif v is None or isinstance(v, (bool, float, int)):
        s = repr(v)
    else:
        s = f"<{type(v).__name__}>"
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _cut(text: str, limit: int = 120) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    one = " ".join(text[: 4 * limit].split())
    return one if len(one) <= limit else one[: limit - 3] + "..."


def _looks_numeric(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _key(k: Any) -> str:
    """A mapping key for a message: strings bare, anything else as a short repr."""
    return _cut(k, 40) if isinstance(k, str) else _short(k, 40)


def _bound(x: float) -> str:
    return f"{x:g}"


class _Reader:
    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {key}: {msg}")

    def section(self, data: dict, key: str, allowed: set[str]) -> dict:
        sec = data.get(key)
        if sec is None:
            return {}
        if not isinstance(sec, dict):
            raise self.fail(key, f"expected a mapping, got {type(sec).__name__}")
        self.known(sec, key, allowed)
        return sec

    def known(self, sec: dict, path: str, allowed: set[str]) -> None:
        """Refuse keys outside ``allowed``; the first in repr order (keys may be of mixed types)."""
        bad = min((k for k in sec if k not in allowed), key=_short, default=_NONE)
        if bad is not _NONE:
            where = f"{path}.{_key(bad)}" if path else _key(bad)
            raise self.fail(where, f"unknown key; allowed: {sorted(allowed)}")

    def num(
        self,
        sec: dict,
        key: str,
        path: str,
        default,
        lo: float = -math.inf,
        hi: float = math.inf,
        kind=float,
        strict_lo: bool = False,
    ):
        """A finite number in [lo, hi] (or (lo, hi] with ``strict_lo``); ``default`` when absent."""
        if key not in sec or sec[key] is None:
            return default
        v = sec[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            hint = ""
            if isinstance(v, str) and len(v) < 40 and _looks_numeric(v):
                hint = " (a string: YAML 1.1 floats need a dot, e.g. 1.0e-3)"
            raise self.fail(path, f"expected a number, got {_short(v)}{hint}")
        if isinstance(v, float) and not math.isfinite(v):
            raise self.fail(path, f"must be a finite number, got {v!r}")
        if kind is int and isinstance(v, float) and not v.is_integer():
            raise self.fail(path, f"expected an integer, got {v!r}")
        if not (v > lo if strict_lo else v >= lo) or v > hi:
            want = f"{'>' if strict_lo else '>='} {_bound(lo)}, <= {_bound(hi)}"
            raise self.fail(path, f"{_short(v)} out of range ({want})")
        return kind(v)

    def text(self, sec: dict, key: str, path: str, what: str, limit: int = MAX_TEXT) -> str:
        v = sec.get(key)
        if not isinstance(v, str) or not v:
            raise self.fail(path, f"required: {what}")
        if len(v) > limit or "\0" in v:
            raise self.fail(path, f"expected {what}: at most {limit} characters, no NUL; got {_short(v)}")
        return v

    def flag(self, sec: dict, key: str, path: str, default: bool) -> bool:
        v = sec.get(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise self.fail(path, f"expected true or false, got {_short(v)}")
        return v

    def choice(self, sec: dict, key: str, path: str, default: str, options: tuple[str, ...]) -> str:
        v = sec.get(key, default)
        if not isinstance(v, str) or v not in options:
            raise self.fail(path, f"{_short(v)} is not one of {list(options)}")
        return v

    def pair(self, ch: dict, key: str, path: str, strict: bool) -> tuple[float, float] | None:
        """``[low, high]``: finite, |v| <= CHANNEL_LIMIT, low <= high (low < high with ``strict``)."""
        c = ch.get(key)
        if c is None:
            return None
        op = "<" if strict else "<="
        if not (
            isinstance(c, list)
            and len(c) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c)
        ):
            raise self.fail(path, f"expected [low, high] with low {op} high, got {_short(c)}")
        if not all(math.isfinite(v) and abs(v) <= CHANNEL_LIMIT for v in c):
            raise self.fail(
                path, f"bounds must be finite and within +-{_bound(CHANNEL_LIMIT)}, got {_short(c)}"
            )
        if not (c[0] < c[1] if strict else c[0] <= c[1]):
            raise self.fail(path, f"expected [low, high] with low {op} high, got {_short(c)}")
        return (float(c[0]), float(c[1]))

    def channel_num(self, ch: dict, key: str, path: str, default: float, nonzero: bool = False) -> float:
        v = self.num(ch, key, path, default, -CHANNEL_LIMIT, CHANNEL_LIMIT)
        if nonzero and v == 0:
            raise self.fail(path, "must be non-zero")
        return float(v)


def parse_config(data: Any, source: str = "<dict>", base: Path | None = None) -> NodeConfig:
    """Validate a config mapping; relative model paths resolve against ``base``."""
    r = _Reader(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    r.known(data, "", _TOP)
    model = Path(r.text(data, "model", "model", "path of the .onnx model file"))
    if not model.is_absolute() and base is not None:
        model = base / model
    ser = r.section(data, "serial", {"port", "baudrate", "protocol", "exclusive"})
    port = r.text(ser, "port", "serial.port", "a device path or a pyserial URL")
    loop = r.section(data, "loop", {"mode", "rate_hz", "model_dt"})
    fs = r.section(data, "failsafe", {"sensor_timeout_ms", "hold_cycles", "on_recovery", "arm_after"})
    rt = r.section(
        data, "realtime", {"cpu", "sched_fifo", "mlockall", "gc_freeze", "spin_us", "cpu_dma_latency_us"}
    )
    rc = r.section(data, "reconnect", {"min_s", "max_s"})
    cfg = NodeConfig(
        model=model,
        port=port,
        source=source,
        baudrate=r.num(ser, "baudrate", "serial.baudrate", 115200, 1, 100_000_000, kind=int),
        protocol=r.choice(ser, "protocol", "serial.protocol", "cobs", ("cobs", "text")),
        exclusive=r.flag(ser, "exclusive", "serial.exclusive", True),
        mode=r.choice(loop, "mode", "loop.mode", "event", ("event", "fixed")),
        rate_hz=r.num(loop, "rate_hz", "loop.rate_hz", 100.0, *RATE_HZ),
        model_dt=r.num(loop, "model_dt", "loop.model_dt", 0.01, *MODEL_DT_S),
        sensor_timeout_ms=r.num(
            fs, "sensor_timeout_ms", "failsafe.sensor_timeout_ms", 100.0, 0, 60_000, strict_lo=True
        ),
        hold_cycles=r.num(fs, "hold_cycles", "failsafe.hold_cycles", 3, 0, 10_000, kind=int),
        on_recovery=r.choice(
            fs, "on_recovery", "failsafe.on_recovery", "reset_state", ("reset_state", "keep_state")
        ),
        arm_after=r.num(fs, "arm_after", "failsafe.arm_after", 3, 1, 10_000, kind=int),
        cpu=r.num(rt, "cpu", "realtime.cpu", None, 0, 8191, kind=int),
        sched_fifo=r.num(rt, "sched_fifo", "realtime.sched_fifo", None, 1, 99, kind=int),
        mlockall=r.flag(rt, "mlockall", "realtime.mlockall", False),
        gc_freeze=r.flag(rt, "gc_freeze", "realtime.gc_freeze", True),
        spin_us=r.num(rt, "spin_us", "realtime.spin_us", 0.0, 0, 1_000_000),
        cpu_dma_latency_us=r.num(
            rt, "cpu_dma_latency_us", "realtime.cpu_dma_latency_us", None, 0, 2**31 - 1, kind=int
        ),
        stats_every_s=r.num(data, "stats_every_s", "stats_every_s", 10.0, 0, 86_400, strict_lo=True),
        reconnect_min_s=r.num(rc, "min_s", "reconnect.min_s", 0.05, 0, 3600, strict_lo=True),
        reconnect_max_s=r.num(rc, "max_s", "reconnect.max_s", 2.0, 0, 3600, strict_lo=True),
        backend=r.choice(data, "backend", "backend", "cpu", ("cpu", "reference")),
        allow_unstable=r.flag(data, "allow_unstable", "allow_unstable", False),
        telemetry=_telemetry(r, data),
    )
    if cfg.reconnect_min_s > cfg.reconnect_max_s:
        raise r.fail("reconnect.min_s", f"{cfg.reconnect_min_s:g} is above reconnect.max_s")
    cfg.inputs = [_input(r, ch, f"inputs[{i}]") for i, ch in enumerate(_channels(r, data, "inputs"))]
    cfg.outputs = [_output(r, ch, f"outputs[{i}]") for i, ch in enumerate(_channels(r, data, "outputs"))]
    return cfg


_IN_KEYS = {"name", "scale", "offset", "clip", "unit", "range"}
_OUT_KEYS = {"name", "scale", "offset", "clip", "unit", "failsafe", "max_rate"}


def _channels(r: _Reader, data: dict, key: str) -> list[dict]:
    chans = data.get(key)
    if not isinstance(chans, list) or not chans:
        raise r.fail(key, "required: a non-empty list of channels")
    allowed = _IN_KEYS if key == "inputs" else _OUT_KEYS
    names: set[str] = set()
    for i, ch in enumerate(chans):
        path = f"{key}[{i}]"
        if not isinstance(ch, dict):
            raise r.fail(f"{path}.name", "each channel needs a name")
        name = r.text(ch, "name", f"{path}.name", "a channel name", MAX_NAME)
        if name in names:
            raise r.fail(f"{path}.name", f"duplicate channel name {_short(name)}")
        names.add(name)
        r.known(ch, path, allowed)
        if "unit" in ch:
            r.text(ch, "unit", f"{path}.unit", "a unit", MAX_NAME)
    return chans


def _input(r: _Reader, ch: dict, path: str) -> InputChannel:
    return InputChannel(
        name=ch["name"],
        scale=r.channel_num(ch, "scale", f"{path}.scale", 1.0, nonzero=True),
        offset=r.channel_num(ch, "offset", f"{path}.offset", 0.0),
        clip=r.pair(ch, "clip", f"{path}.clip", strict=False) or (-math.inf, math.inf),
        range=r.pair(ch, "range", f"{path}.range", strict=True),
    )


def _output(r: _Reader, ch: dict, path: str) -> OutputChannel:
    lo, hi = r.pair(ch, "clip", f"{path}.clip", strict=False) or (-CHANNEL_LIMIT, CHANNEL_LIMIT)
    failsafe = r.channel_num(ch, "failsafe", f"{path}.failsafe", 0.0)
    if not lo <= failsafe <= hi:
        raise r.fail(f"{path}.failsafe", f"{failsafe!r} outside clip [{lo!r}, {hi!r}]")
    return OutputChannel(
        name=ch["name"],
        scale=r.channel_num(ch, "scale", f"{path}.scale", 1.0, nonzero=True),
        offset=r.channel_num(ch, "offset", f"{path}.offset", 0.0),
        clip=(lo, hi),
        failsafe=failsafe,
        max_rate=float(r.num(ch, "max_rate", f"{path}.max_rate", math.inf, 0, CHANNEL_LIMIT, strict_lo=True)),
    )


def _telemetry(r: _Reader, data: dict) -> dict[str, Any] | None:
    if data.get("telemetry") is None:
        return None
    t = r.section(
        data, "telemetry", {"path", "rotate_mb", "rotate_s", "keep", "flush_s", "encoding", "writer"}
    )
    return {
        "path": r.text(t, "path", "telemetry.path", "the .mcap file to write"),
        "rotate_mb": r.num(t, "rotate_mb", "telemetry.rotate_mb", 64.0, 0, 1_048_576, strict_lo=True),
        "rotate_s": r.num(t, "rotate_s", "telemetry.rotate_s", 3600.0, 0, 1e9, strict_lo=True),
        "keep": r.num(t, "keep", "telemetry.keep", 5, 1, 10_000, kind=int),
        "flush_s": r.num(t, "flush_s", "telemetry.flush_s", 1.0, 0, strict_lo=True),
        "encoding": r.choice(t, "encoding", "telemetry.encoding", "protobuf", ("protobuf", "json")),
        # process (default): the writer in a child process, off the loop's GIL
        # (node/recorder_process.py); it outlives a killed node and closes the file whole.
        # thread: the writer shares the loop's GIL (the file dies truncated with the node).
        "writer": r.choice(t, "writer", "telemetry.writer", "process", ("thread", "process")),
    }


# ------------------------------------------------------------------ bounded YAML

_Base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~8x faster


class _Loader(_Base):  # type: ignore[misc, valid-type]
    """SafeLoader that refuses over-long integers (also checked, with the key, by _check_events)."""


def _construct_int(loader, node):
    if len(node.value) > MAX_INT_DIGITS:
        raise yaml.constructor.ConstructorError(
            None, None, f"integer longer than {MAX_INT_DIGITS} characters", node.start_mark
        )
    return yaml.constructor.SafeConstructor.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


_INT_TAG = "tag:yaml.org,2002:int"
_TIME_TAG = "tag:yaml.org,2002:timestamp"


def _key_path(stack: list[list]) -> str:
    """Where the parser is, as ``loop.rate_hz`` / ``outputs[0].clip[1]``."""
    s = ""
    for is_map, key_next, at, _ in stack:
        if is_map:
            s += ("." if s else "") + ("<key>" if key_next else at)
        else:
            s += f"[{at}]"
    return s or "<top level>"


def _check_events(text: str, source: Path) -> None:
    """Stream the parser's events and refuse, before anything is built, what costs unbounded work.

    An alias expands to a shared object, so a few hundred bytes can stand for billions of
    values (a "billion laughs"); a config never needs one, nor an anchor. Also refused here:
    nesting deeper than MAX_DEPTH, integers longer than MAX_INT_DIGITS characters, duplicate
    keys (the last would win silently), collection keys and dates.
    Errors name the key path and the line.
    """
    resolver = yaml.resolver.Resolver()
    # per open collection: [is_mapping, expecting_a_key, key or index, keys seen (mappings)]
    stack: list[list] = []

    def fail(ev, msg: str) -> ConfigError:
        return ConfigError(f"{source}: {_key_path(stack)}: {msg} (line {ev.start_mark.line + 1})")

    def done() -> None:  # a node ended: advance its parent
        if stack:
            f = stack[-1]
            if f[0]:
                f[1] = not f[1]
            else:
                f[2] += 1

    for ev in yaml.parse(text, Loader=_Base):
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            raise fail(ev, "YAML anchors and aliases (&name, *name) are not allowed")
        if isinstance(ev, yaml.ScalarEvent):
            tag = ev.tag
            if tag is None or tag == "!":
                tag = resolver.resolve(yaml.ScalarNode, ev.value, ev.implicit)
            if stack and stack[-1][0] and stack[-1][1]:
                key = _cut(ev.value, 40)
                if (tag, ev.value) in stack[-1][3]:
                    stack[-1][1:3] = [False, key]  # name the repeated key itself
                    raise fail(ev, "duplicate key (the last one would win silently)")
                stack[-1][2] = key
                stack[-1][3].add((tag, ev.value))
            if tag == _INT_TAG and len(ev.value) > MAX_INT_DIGITS:
                raise fail(ev, f"integer longer than {MAX_INT_DIGITS} characters")
            if tag == _TIME_TAG:
                raise fail(ev, "a date or time is not a valid config value")
            done()
        elif isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if stack and stack[-1][0] and stack[-1][1]:
                raise fail(ev, "mapping keys must be plain values, not lists or mappings")
            if len(stack) >= MAX_DEPTH:
                raise fail(ev, f"nested deeper than {MAX_DEPTH} levels")
            is_map = isinstance(ev, yaml.MappingStartEvent)
            stack.append([is_map, True, "?", set()] if is_map else [False, False, 0, None])
        elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            stack.pop()
            done()


def _yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    what = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"{path}: invalid YAML{where}: {_cut(str(what))}")


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file (at most :data:`MAX_CONFIG_BYTES`)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)  # never more, whatever the file is
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        _check_events(text, path)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # SafeConstructor raises these for some malformed scalars (e.g. a timestamp 2001-13-45).
        raise ConfigError(f"{path}: invalid YAML value ({_cut(str(exc))})") from None
    return parse_config(data, str(path), path.parent)
