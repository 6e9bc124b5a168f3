"""``edgeliquid demo``: simulator + node over a pty pair, a live status line, a summary.

The simulated device runs in its own process (as a microcontroller would), the
node in this one; nothing needs hardware or root.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..node import deadlines
from ..node import protocol as P
from ..node.config import load_config
from ..node.loop import MODE_NAMES, R_SHUTDOWN, R_STARTING, Node
from .sim import Push, push_recovery, random_pushes

BALANCED_RAD = 0.2  # pole within this angle ...
BALANCED_X_M = 2.4  # ... and the cart within this distance (no drifting away to keep it up)
SETTLE_BAND_RAD = 0.05  # after a push, "recovered" = back within this angle for good
FAULT_AT = 0.4  # --fault starts at this fraction of the run ...
FAULT_LEN_S = 0.3  # ... and lasts this long (seconds)


# With realtime=True the device process takes CPU 0 (SCHED_FIFO 40), the node thread this.
REALTIME_NODE = {"cpu": 1 if (os.cpu_count() or 1) > 1 else 0, "sched_fifo": 50}


def default_config_path() -> Path:
    pkg = Path(__file__).resolve().parents[1]  # edgeliquid/ (this file is edgeliquid/hil/demo.py)
    for cand in (pkg.parent / "configs" / "cartpole_demo.yaml", pkg / "data" / "cartpole_demo.yaml"):
        if cand.exists():
            return cand
    raise FileNotFoundError("cartpole_demo.yaml not found")


def failsafe_transitions(statuses: list[tuple[int, int, int]]) -> int:
    """Fault fail-safes the device was told about: STATUS frames switching it to SAFE for a
    reason other than the node starting or shutting down (repeated statuses count once)."""
    n, mode = 0, P.MODE_SAFE  # the device starts in SAFE
    for _, m, reason in statuses:
        if m == P.MODE_SAFE and mode != P.MODE_SAFE and reason not in (R_STARTING, R_SHUTDOWN):
            n += 1
        mode = m
    return n


def _device_main(conn, shared, kwargs, seconds):
    from .sim import Device

    if kwargs.pop("realtime", False):  # the device plays a microcontroller: give it a core
        try:
            os.sched_setaffinity(0, {0})
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(40))
        except (OSError, AttributeError):
            pass
    dev = Device(conn.recv(), **kwargs)  # the PtyMaster comes over the fork
    dev.record = True

    def mirror():
        while not dev._stop.is_set():
            shared[0] = dev.plant.angle
            shared[1] = float(dev.command[0])
            shared[2] = dev.push_now
            time.sleep(0.05)

    threading.Thread(target=mirror, daemon=True).start()
    st = dev.run(seconds)
    rtt = np.array(st.rtt_us) if st.rtt_us else np.array([np.nan])
    ang = np.array(st.angles, dtype=np.float64).reshape(-1, 2)
    t_s = (ang[:, 0] - dev._t0) / 1e9
    pushes = push_recovery(t_s, ang[:, 1], dev.pushes, SETTLE_BAND_RAD)
    first = min((p.at_s for p in dev.pushes), default=np.inf)
    before = np.abs(ang[t_s < first, 1])
    conn.send(
        {
            "max_abs_angle": st.max_abs_angle,
            "max_abs_x": st.max_abs_x,
            "sent": st.sent,
            "actuations": st.actuations,
            "stalls": st.stalls,
            "stalled_s": st.stalled_s,
            "rtt_us": {
                "p50": float(np.nanpercentile(rtt, 50)),
                "p99": float(np.nanpercentile(rtt, 99)),
                "max": float(np.nanmax(rtt)),
            },
            "statuses": st.statuses,
            "commands": st.commands,
            "pushes": pushes,
            "max_abs_angle_before_pushes": float(before.max()) if len(before) else float("nan"),
        }
    )


class DeviceRig:
    """The simulated device in its own process on a fresh pty; ``node_port`` is the node's end."""

    def __init__(self, **device_kwargs):
        from .sim import PtyMaster

        self.pty = PtyMaster()
        self.node_port = self.pty.node_port
        self.kwargs = device_kwargs
        ctx = mp.get_context("fork")
        self._ctx = ctx
        self.shared = ctx.Array("d", 3)  # angle, actuator force, push force
        self._parent, self._child = ctx.Pipe()
        self.proc = None

    def start(self, seconds: float) -> None:
        """Fork the device process and let it run for ``seconds``."""
        self.spawn(seconds)
        self.go()

    def spawn(self, seconds: float) -> None:
        """Fork the device process; it waits for :meth:`go`. Fork before a loop starts: a fork
        write-protects the whole address space, and the running loop pays for it in stalls."""
        self.proc = self._ctx.Process(
            target=_device_main, args=(self._child, self.shared, self.kwargs, seconds), daemon=True
        )
        self.proc.start()

    def go(self) -> None:
        self._parent.send(self.pty)  # the device process starts when it receives its pty

    def done(self) -> bool:
        """True once the device has finished and sent its summary."""
        return self._parent.poll(0)

    def finish(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the device's summary (max angle, round trips, statuses...)."""
        dev = (
            self._parent.recv()
            if self._parent.poll(timeout)
            else {"max_abs_angle": float("nan"), "rtt_us": {}, "statuses": [], "pushes": []}
        )
        self.proc.join(2)
        self.pty.close()
        return dev


def run_demo(
    seconds: float = 20.0,
    rate_hz: float = 100.0,
    mode: str = "event",
    plant: str = "cartpole",
    fault: str | None = None,
    protocol: str = "cobs",
    noise: float = 0.002,
    jitter: float = 0.2,
    seed: int = 0,
    config: str | None = None,
    model: str | None = None,
    live: bool = True,
    out=sys.stdout,
    realtime: bool = False,
    record: str | None = None,
    spin_us: float = 0.0,
    cpu_dma_latency_us: int | None = None,
    pushes: list[Push] | None = None,
    random_push_count: int = 0,
    controller: str = "node",
) -> dict[str, Any]:
    """Run the closed loop for ``seconds`` and return the summary dict (see ``--json``).

    ``controller="firmware"``: the generated bare-metal app under qemu instead of the Python
    node (firmware_export/app/demo_rig.py; event mode, binary protocol, no recording).

    ``pushes`` shove the cart at given times; ``random_push_count`` adds that many at random
    times (seeded by ``seed``). Each push's peak angle and settling time are in ``pushes``.
    ``model`` replaces the config's model file (any cell with the config's channel counts).
    """
    if not (seconds > 0 and rate_hz > 0):
        raise ValueError(f"run_demo needs seconds > 0 and rate_hz > 0, got {seconds}, {rate_hz}")
    pushes = list(pushes or [])
    if random_push_count:
        pushes += random_pushes(random_push_count, seconds, np.random.default_rng([seed, 1]))
    if controller == "firmware":
        if mode != "event" or protocol != "cobs":
            raise ValueError("--controller firmware runs the event loop over the binary protocol (cobs)")
        from firmware_export.app.demo_rig import run_firmware_demo

        return run_firmware_demo(
            seconds, rate_hz, fault, noise, jitter, seed, config, model, live, out, pushes
        )
    cfg = load_config(config or default_config_path())
    if model is not None:
        cfg.model = Path(model)
    rig = DeviceRig(
        plant=plant,
        rate_hz=rate_hz,
        protocol=protocol,
        noise=noise,
        jitter=jitter,
        seed=seed,
        fault=fault,
        fault_at_s=seconds * FAULT_AT,
        fault_len_s=FAULT_LEN_S,
        realtime=realtime,
        pushes=sorted(pushes, key=lambda p: p.at_s),
    )
    if realtime:  # warnings if the OS refuses
        cfg.cpu, cfg.sched_fifo = REALTIME_NODE["cpu"], REALTIME_NODE["sched_fifo"]
    cfg.spin_us, cfg.cpu_dma_latency_us = spin_us, cpu_dma_latency_us
    cfg.port, cfg.exclusive, cfg.mode, cfg.rate_hz, cfg.protocol = (
        rig.node_port,
        False,
        mode,
        rate_hz,
        protocol,
    )
    cfg.stats_every_s = max(seconds, 1.0) * 10  # the demo prints its own status line
    if record:
        cfg.telemetry = {"path": record, "rotate_mb": 256.0, "rotate_s": 1e9, "keep": 1}
    if live:
        out.write("loading and warming the policy (the first run on a machine compiles kernels)...\n")
        out.flush()
    node = Node(cfg)  # loads and warms the policy before anything moves
    rig.spawn(seconds)
    t = threading.Thread(target=node.run, args=(seconds + 60,), daemon=True)  # 60: a backstop
    t0 = time.monotonic()
    t.start()
    # The device starts once the node listens, and the node stops 0.5 s after the device is
    # done (so the summary includes its reaction to the stream ending): realtime setup (a full
    # gc pass) in a big process can take a noticeable part of a short run.
    node.ready.wait(30)
    rig.go()
    stop_at = None
    while t.is_alive():
        t.join(0.25)
        if stop_at is None and rig.done():
            stop_at = time.monotonic() + 0.5
        if stop_at is not None and time.monotonic() >= stop_at:
            node.stop()
        if live:
            lat = node.stats.latency_us()
            shove = f"PUSH {rig.shared[2]:+5.1f} N" if rig.shared[2] else " " * 12
            out.write(
                f"\r t={time.monotonic() - t0:5.1f}s  angle={rig.shared[0]:+.3f} rad  "
                f"force={rig.shared[1]:+6.2f} N  {shove}  latency p50={lat['p50']:5.0f} µs  "
                f"mode={MODE_NAMES[node.mode]:4s}  steps={node.stats.steps}   "
            )
            out.flush()
    if live:
        out.write("\n")
    dev = rig.finish()
    st = node.stats
    during = failsafe_transitions(dev["statuses"])
    # after every push the pole came back within the band, and the cart stayed on its track
    recovered = bool(
        all(p["settle_s"] is not None for p in dev.get("pushes", []))
        and dev.get("max_abs_x", np.inf) < BALANCED_X_M
    )
    return {
        "steps": st.steps,
        "seconds": seconds,
        "rate_hz": rate_hz,
        "mode": mode,
        "fault": fault,
        "balanced": bool(dev["max_abs_angle"] < BALANCED_RAD and dev.get("max_abs_x", 0) < BALANCED_X_M),
        "max_abs_angle": dev["max_abs_angle"],
        "max_abs_x": dev.get("max_abs_x", float("nan")),
        # frame ready -> command written; in fixed mode this includes the wait for the tick
        "latency_us": st.latency_us(),
        # cycle start (fixed: the tick; event: the frame ready) -> command written
        "compute_latency_us": st.compute_latency_us(),
        "device_rtt_us": dev.get("rtt_us", {}),
        "deadline_misses": st.deadline_misses,
        "ticks_missed": st.ticks_missed,
        "deadline_definition": f"command-to-command gap > {deadlines.LATE_FACTOR:g} nominal periods",
        # fixed mode: ticks skipped because the loop woke/ran late (as the wake-up floor counts
        # them) and ticks with no fresh frame to act on (the device's timing); 0 in event mode
        "ticks_late": st.ticks_late,
        "ticks_no_sample": st.ticks_no_sample,
        "frame_errors": node.rx.total_errors,
        "frames_lost": node.rx.lost,
        # faults the device was switched to SAFE for while it ran; the node's own count also
        # has the sensor timeout when the device stops streaming at the end of the demo
        "failsafe_events": during,
        "failsafe_events_after_device_stopped": max(0, st.failsafe_events - during),
        "shutdowns": st.shutdowns,
        "policy_errors": st.policy_errors,
        "pushes": dev.get("pushes", []),
        "max_abs_angle_before_pushes": dev.get("max_abs_angle_before_pushes", float("nan")),
        "recovered": recovered,
        "settle_band_rad": SETTLE_BAND_RAD,
        "recording": str(node.recorder.files[0]) if node.recorder and node.recorder.files else None,
        "_device": dev,
    }


def _pcts(d: dict[str, float]) -> str:
    return f"p50 {d['p50']:.0f} / p99 {d['p99']:.0f} / max {d['max']:.0f} µs"


def format_push(p: dict[str, Any], band_rad: float) -> str:
    """One line per push: what it was and how the policy recovered."""
    settle = (
        f"back within {band_rad:g} rad after {p['settle_s']:.2f} s"
        if p["settle_s"] is not None
        else f"NOT back within {band_rad:g} rad"
    )
    return (
        f"  push {p['force_n']:+.1f} N for {p['duration_s']:.2f} s at {p['at_s']:.2f} s: "
        f"max |theta| after it {p['max_abs_angle']:.3f} rad, {settle}"
    )


def format_summary(s: dict[str, Any]) -> str:
    """The demo's human-readable summary (the same numbers as ``--json``)."""
    rtt = s.get("device_rtt_us") or {}
    wait = " (incl. wait for tick)" if s["mode"] == "fixed" else ""
    pushes = s.get("pushes", [])
    if s["balanced"]:
        verdict = "BALANCED"
    elif pushes and s.get("recovered"):
        verdict = f"RECOVERED (pushed past the {BALANCED_RAD} rad balance limit, then back up)"
    else:
        verdict = "FELL"
    return "\n".join(
        [
            f"demo: {s['seconds']:g} s at {s['rate_hz']:g} Hz ({s['mode']} loop), fault={s['fault']}, "
            f"pushes={len(pushes)}",
            f"  pole {verdict}: max |theta| = {s['max_abs_angle']:.3f} rad, max |x| = {s['max_abs_x']:.2f} m",
        ]
        + (
            [f"  before the first push: max |theta| = {s['max_abs_angle_before_pushes']:.3f} rad"]
            if pushes
            else []
        )
        + [format_push(p, s["settle_band_rad"]) for p in pushes]
        + [
            f"  steps {s['steps']}; node latency:",
            f"    sensor-to-command{wait}: {_pcts(s['latency_us'])}",
            f"    compute (cycle start to command written): {_pcts(s['compute_latency_us'])}",
            f"  device round trip p50 {rtt.get('p50', float('nan')):.0f} µs, p99 "
            f"{rtt.get('p99', float('nan')):.0f} µs",
            f"  deadline misses {s['deadline_misses']} ({s['deadline_definition']}; "
            f"{s['ticks_missed']} periods without a command)"
            + (
                f"; fixed-mode ticks skipped late {s['ticks_late']}, without a fresh frame "
                f"{s['ticks_no_sample']}"
                if s["mode"] == "fixed" and "ticks_late" in s
                else ""
            ),
            f"  frame errors {s['frame_errors']}; fail-safe events {s['failsafe_events']} while the device "
            f"ran (faults), {s['failsafe_events_after_device_stopped']} after it stopped streaming, "
            f"then shutdown {s['shutdowns']}",
        ]
        + (
            [f"  flight recording: {s['recording']}  (edgeliquid replay / edgeliquid profile it)"]
            if s.get("recording")
            else []
        )
        + ([_firmware_lines(s)] if s.get("firmware") else [])
    )


def _firmware_lines(s: dict[str, Any]) -> str:
    from firmware_export.app.demo_rig import format_firmware

    return format_firmware(s)


def quiet_logging() -> None:
    logging.getLogger("edgeliquid").setLevel(logging.ERROR)
