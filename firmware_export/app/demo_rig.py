"""``edgeliquid demo --controller firmware``: the simulated cart-pole against the app under qemu.

The app is built once per (model, config, generator) and cached; qemu runs it with UART0 on a
pty; the same :class:`edgeliquid.hil.sim.Device` that plays the robot for the Python node
talks to it. The summary has the node demo's keys; the controller's own numbers (steps, frame
errors, deadline misses, latency, instructions per cycle) come from the app's answer to a
STATUS query at the end, measured on the emulated core's clock.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from . import build_app, default_config_path
from .controller_c import ERROR_FIELDS
from .qemu import NOTE, QemuApp, instructions

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgeliquid" / "firmware-app"


def _generator_digest() -> str:
    """Hash of the generator's own sources: a changed generator rebuilds the cached app."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parents[1]
    for p in sorted([*root.glob("*.py"), *root.glob("app/*.py")]):
        h.update(p.read_bytes())
    return h.hexdigest()


def cached_app(model: str | Path, config: str | Path) -> tuple[Path, dict]:
    """Build the app for ``model`` + ``config`` unless a build of the same inputs is cached."""
    import json

    key = hashlib.sha256()
    for part in (Path(model).read_bytes(), Path(config).read_bytes(), _generator_digest().encode()):
        key.update(hashlib.sha256(part).digest())
    out = CACHE / key.hexdigest()[:24]
    man = out / "manifest.json"
    if man.exists() and (out / "policy.elf").exists():
        return out / "policy.elf", json.loads(man.read_text())
    m = build_app(model, out, "policy", "mps2-an386", config, measure=False)
    return out / "policy.elf", m


def run_firmware_demo(
    seconds: float = 20.0,
    rate_hz: float = 100.0,
    fault: str | None = None,
    noise: float = 0.002,
    jitter: float = 0.2,
    seed: int = 0,
    config: str | None = None,
    model: str | None = None,
    live: bool = True,
    out=sys.stdout,
    pushes=None,
    init_scale: float = 0.05,
) -> dict[str, Any]:
    """The closed loop with the app as controller; returns the node demo's summary keys plus
    ``firmware`` (image size, instructions per cycle, the app's counters)."""
    from edgeliquid.hil.demo import (
        BALANCED_RAD,
        BALANCED_X_M,
        FAULT_AT,
        FAULT_LEN_S,
        SETTLE_BAND_RAD,
        failsafe_transitions,
    )
    from edgeliquid.hil.sim import Device, push_recovery
    from edgeliquid.node.config import load_config

    config = str(config or default_config_path())
    cfg = load_config(config)
    model = str(model or cfg.model)
    if live:
        out.write("building the controller app (cached after the first run) and starting qemu...\n")
        out.flush()
    elf, man = cached_app(model, config)
    # the app's rate is the config's; the simulated robot samples at --rate
    pushes = sorted(pushes or [], key=lambda p: p.at_s)
    with QemuApp(elf) as q:
        q.handshake(len(cfg.inputs), len(cfg.outputs), cfg.rate_hz)
        dev = Device(
            q.port,
            rate_hz=rate_hz,
            noise=noise,
            jitter=jitter,
            seed=seed,
            init_scale=init_scale,
            fault=fault,
            fault_at_s=seconds * FAULT_AT,
            fault_len_s=FAULT_LEN_S,
            pushes=pushes,
        )
        box: dict[str, Any] = {}
        t = threading.Thread(target=lambda: box.setdefault("st", dev.run(seconds)), daemon=True)
        t0 = time.monotonic()
        t.start()
        while t.is_alive():
            t.join(0.25)
            if live:
                shove = f"PUSH {dev.push_now:+5.1f} N" if dev.push_now else " " * 12
                mode = {0: "RUN", 1: "HOLD", 2: "SAFE"}.get(dev.mode, "?")
                out.write(
                    f"\r t={time.monotonic() - t0:5.1f}s  angle={dev.plant.angle:+.3f} rad  "
                    f"force={float(dev.command[0]):+6.2f} N  {shove}  firmware (qemu)  "
                    f"mode={mode:4s}  steps={dev.stats.actuations}   "
                )
                out.flush()
        if live:
            out.write("\n")
        st = box["st"]
        dbg = q.debug()
        alive = q.alive()
    rtt = np.array(st.rtt_us) if st.rtt_us else np.array([np.nan])
    ang = np.array(st.angles, dtype=np.float64).reshape(-1, 2)
    t_s = (ang[:, 0] - dev._t0) / 1e9
    push_res = push_recovery(t_s, ang[:, 1], pushes, SETTLE_BAND_RAD)
    first = min((p.at_s for p in pushes), default=np.inf)
    before = np.abs(ang[t_s < first, 1])
    during = failsafe_transitions(st.statuses)
    top = dbg["latency_us_max"]  # p50/p99 are 16 µs histogram bucket edges: never above the max
    lat = {"p50": min(dbg["latency_us_p50"], top), "p99": min(dbg["latency_us_p99"], top), "max": top}
    app = man["app"]
    return {
        "controller": "firmware",
        "steps": int(dbg["steps"]),
        "seconds": seconds,
        "rate_hz": rate_hz,
        "mode": "event",
        "fault": fault,
        "balanced": bool(st.max_abs_angle < BALANCED_RAD and st.max_abs_x < BALANCED_X_M),
        "max_abs_angle": st.max_abs_angle,
        "max_abs_x": st.max_abs_x,
        # on the emulated core's clock (virtual time under qemu -icount), frame delimiter
        # received -> command written; 16 µs histogram buckets for p50/p99
        "latency_us": lat,
        "compute_latency_us": lat,
        "device_rtt_us": {
            "p50": float(np.nanpercentile(rtt, 50)),
            "p99": float(np.nanpercentile(rtt, 99)),
            "max": float(np.nanmax(rtt)),
        },
        "deadline_misses": int(dbg["deadline_misses"]),
        "ticks_missed": int(dbg["ticks_missed"]),
        "deadline_definition": "command-to-command gap > 1.5 nominal periods (the app's clock)",
        "frame_errors": int(sum(dbg[k] for k in ERROR_FIELDS)),
        "frames_lost": int(dbg["lost"]),
        "failsafe_events": during,
        "failsafe_events_after_device_stopped": max(0, int(dbg["failsafe_events"]) - during),
        "shutdowns": 0,
        "policy_errors": int(dbg["policy_errors"]),
        "pushes": push_res,
        "max_abs_angle_before_pushes": float(before.max()) if len(before) else float("nan"),
        "recovered": bool(all(p["settle_s"] is not None for p in push_res) and st.max_abs_x < BALANCED_X_M),
        "settle_band_rad": SETTLE_BAND_RAD,
        "recording": None,
        "firmware": {
            "board": app["board"],
            "elf": str(elf),
            "flash_bytes": app["flash_bytes"],
            "ram_bytes": app["ram_bytes"],
            "instructions": instructions(dbg),
            "counters": dbg,
            "app_alive_at_end": alive,
            "note": NOTE,
        },
        "_device": {
            "statuses": st.statuses,
            "commands": st.commands,
            "sent": st.sent,
            "stalls": st.stalls,
            "stalled_s": st.stalled_s,
        },
    }


def format_firmware(s: dict[str, Any]) -> str:
    """The firmware lines of the demo summary."""
    f = s["firmware"]
    i = f["instructions"]
    return (
        f"  controller: firmware on qemu {f['board']} ({f['flash_bytes']} B flash, {f['ram_bytes']} B RAM); "
        f"instructions per cycle {i['cycle_mean']} (policy step {i['step_mean']}), max {i['cycle_max']}\n"
        f"    ({f['note']}); latency above is on the emulated clock"
    )
