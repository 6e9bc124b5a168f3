#!/usr/bin/env python3
"""Closed-loop benchmark: the node against the naive loop a user would write, same device.

Both run against the simulated cart-pole device (its own process) over a pty pair:
* node: ``edgeliquid`` node, event and fixed mode;
* syscall floor: select + read + one canned write per frame and nothing else (the OS's share);
* naive: pyserial + hand-rolled COBS/CRC framing + ncps torch ``LTCCell`` step per frame
  (the same model, rebuilt in ncps from the model file).

Reported: node latency (SENSOR frame readable -> ACTUATE written) p50/p99/max, the device's
round trip, deadline misses, CPU use (process CPU time / wall time), whether the pole stayed up.
Before the fixed-mode run, the same settings are given to an idle loop that only waits for
its ticks (``edgeliquid profile --wakeup``): its misses ("floor") are what the machine itself
costs; the node's ticks skipped for lateness ("late") are counted the same way, so the two
compare in the same run. Command gaps also come from ticks with no fresh frame ("nosamp": the
device sends with 20 % sample jitter), which are the device's timing, not the node's.

With ``--record DIR`` the event-mode node runs twice, without and with the flight recorder
(``DIR/node-event-rec.mcap``, the default writer process), so the recorder's cost on p50/p99 is
read in the same run; ``edgeliquid profile DIR/node-event-rec.mcap`` gives the per-stage times.

    python tools/bench_loop.py [--rate 1000] [--seconds 60] [--realtime] [--cpu-latency-us 0] [--record DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import time

import numpy as np
import serial
from cobs import cobs

from edgeliquid.hil.demo import REALTIME_NODE, DeviceRig, default_config_path, run_demo
from edgeliquid.node import protocol as P
from edgeliquid.node.config import load_config
from edgeliquid.node.realtime import probe_wakeups


def _cpu_wall(fn):
    c0, w0 = os.times(), time.monotonic()
    out = fn()
    c1, w1 = os.times(), time.monotonic()
    return out, ((c1.user - c0.user) + (c1.system - c0.system)) / (w1 - w0)


def _loop_result(lat_us: np.ndarray, dev: dict, balanced: bool) -> dict:
    """A comparison loop's row: latencies (µs) and what the device saw."""
    a = lat_us if lat_us.size else np.array([np.nan])
    return {
        "steps": int(lat_us.size),
        "latency_us": {
            "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)),
            "max": float(a.max()),
        },
        "device_rtt_us": dev.get("rtt_us", {}),
        "max_abs_angle": dev["max_abs_angle"],
        "balanced": balanced,
        "deadline_misses": None,
    }


def naive_loop(rate_hz: float, seconds: float, seed: int = 0) -> dict:
    """What a user without edgeliquid writes: read, unframe, torch step, frame, write."""
    import torch

    # One intra-op thread: torch's default pool spins on both cores and starves the device
    # process (the loop then falls behind and the pole falls), which would flatter the node.
    torch.set_num_threads(1)

    from edgeliquid.model.export import to_ncps
    from edgeliquid.model.file import read

    cfg = load_config(default_config_path())
    cell = to_ncps(read(cfg.model)).rnn_cell.eval()
    scale = torch.tensor([[c.scale for c in cfg.inputs]])
    rig = DeviceRig(rate_hz=rate_hz, noise=0.002, jitter=0.2, seed=seed)
    ser = serial.Serial(rig.node_port, 921600, timeout=0.01)
    rig.start(seconds)
    h = torch.zeros(1, cell.state_size)
    lat, buf, seq, last_t = [], b"", 0, None
    end = time.monotonic() + seconds + 0.3
    while time.monotonic() < end:
        data = ser.read(ser.in_waiting or 1)
        if not data:
            continue
        t_ready = time.monotonic_ns()
        buf += data
        while b"\x00" in buf:
            frame, buf = buf.split(b"\x00", 1)
            if not frame:
                continue
            try:
                pkt = cobs.decode(frame)
            except cobs.DecodeError:
                continue
            if len(pkt) < 14 or P.crc16(pkt[:-2]) != struct.unpack("<H", pkt[-2:])[0]:
                continue
            _, ptype, _, count, rseq, t_us, _ = struct.unpack_from("<BBBBHIH", pkt)
            if ptype != P.SENSOR:
                continue
            vals = struct.unpack_from(f"<{count}f", pkt, 12)
            dt = 0.01 if last_t is None else ((t_us - last_t) & 0xFFFFFFFF) / 1e6
            last_t = t_us
            with torch.no_grad():
                x = torch.tensor([vals], dtype=torch.float32) * scale
                y, h = cell(x, h, torch.tensor([[dt / cfg.model_dt]]))
            u = float(np.clip(float(y[0, 0]) * 10.0, -10, 10))
            seq = (seq + 1) & 0xFFFF
            body = struct.pack("<BBBBHIHf", 1, P.ACTUATE, 0, 1, seq, 0, rseq, u)
            ser.write(cobs.encode(body + struct.pack("<H", P.crc16(body))) + b"\x00")
            lat.append((time.monotonic_ns() - t_ready) / 1000.0)
    ser.close()
    dev = rig.finish()
    return _loop_result(np.array(lat), dev, balanced=bool(dev["max_abs_angle"] < 0.2))


def syscall_floor(rate_hz: float, seconds: float, seed: int = 0, realtime: bool = False) -> dict:
    """The least any loop can do per frame: select, one read into a preallocated buffer and one
    write of a canned ACTUATE (no decoding, no policy). Its "frame readable -> written" is the
    operating system's share of the node's latency (pty wake-ups, syscalls) on this machine."""
    import select

    rig = DeviceRig(rate_hz=rate_hz, noise=0.002, jitter=0.2, seed=seed, realtime=realtime)
    if realtime:  # what the node gets with realtime settings
        os.sched_setaffinity(0, {REALTIME_NODE["cpu"]})
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_NODE["sched_fifo"]))
        except OSError:
            pass
    fd = os.open(rig.node_port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    body = struct.pack("<BBBBHIHf", 1, P.ACTUATE, 0, 1, 1, 0, 0, 0.0)
    canned = cobs.encode(body + struct.pack("<H", P.crc16(body))) + b"\x00"
    buf = bytearray(4096)
    lat = np.zeros(int(rate_hz * (seconds + 5)), dtype=np.int64)
    n = 0
    rig.start(seconds)
    end = time.monotonic() + seconds + 0.3
    try:
        while time.monotonic() < end and n < len(lat):
            if not select.select([fd], (), (), 0.01)[0]:
                continue
            try:
                k = os.readv(fd, [buf])
            except BlockingIOError:
                continue
            t_ready = time.monotonic_ns()
            if k and 0 in buf[:k]:  # one write per frame delimiter seen, like a node
                os.write(fd, canned)
                lat[n] = time.monotonic_ns() - t_ready
                n += 1
    finally:
        os.close(fd)
        if realtime:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    # it commands nothing useful: keeping the pole up is not its job
    return _loop_result(lat[:n] / 1000.0, rig.finish(), balanced=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--no-naive", action="store_true")
    ap.add_argument("--spin-us", type=float, default=0.0, help="node realtime.spin_us (0: sleep)")
    ap.add_argument(
        "--realtime",
        action="store_true",
        help="node on CPU 1 at SCHED_FIFO 50, device on CPU 0 at SCHED_FIFO 40",
    )
    ap.add_argument(
        "--cpu-latency-us", type=int, default=None, help="node realtime.cpu_dma_latency_us (PM QoS)"
    )
    ap.add_argument("--record", metavar="DIR", help="also run event mode with the flight recorder on")
    ap.add_argument("--json")
    args = ap.parse_args()
    results = {}
    node_cfg = load_config(default_config_path())
    settings = {  # what run_demo gives the node
        **node_cfg.realtime_settings(),
        **(REALTIME_NODE if args.realtime else {}),
        "cpu_dma_latency_us": args.cpu_latency_us,
    }
    runs = [("event", None), ("fixed", None)]
    if args.record:
        os.makedirs(args.record, exist_ok=True)
        runs.insert(1, ("event", os.path.join(args.record, "node-event-rec.mcap")))
    for mode, record in runs:
        floor = None
        if mode == "fixed":
            floor = probe_wakeups(args.rate, args.seconds, args.spin_us, **settings)
        r, cpu = _cpu_wall(
            lambda mode=mode, record=record: run_demo(
                seconds=args.seconds,
                rate_hz=args.rate,
                mode=mode,
                live=False,
                noise=0.002,
                jitter=0.2,
                realtime=args.realtime,
                spin_us=args.spin_us,
                cpu_dma_latency_us=args.cpu_latency_us,
                record=record,
            )
        )
        r.pop("_device", None)
        r["cpu_use"] = cpu
        r["floor_misses"] = None if floor is None else floor["missed"]
        r["floor"] = floor
        results[f"node-{mode}{'-rec' if record else ''}"] = r
    r, cpu = _cpu_wall(lambda: syscall_floor(args.rate, args.seconds, realtime=args.realtime))
    r["cpu_use"], r["floor_misses"] = cpu, None
    results["syscall-floor"] = r
    if not args.no_naive:
        r, cpu = _cpu_wall(lambda: naive_loop(args.rate, args.seconds))
        r["cpu_use"] = cpu
        r["floor_misses"] = None
        results["naive-torch"] = r
    print(
        f"closed loop at {args.rate:.0f} Hz for {args.seconds:.0f} s over a pty pair"
        f"{' (realtime: pinned, SCHED_FIFO)' if args.realtime else ''}"
        f"{f' (spin {args.spin_us:.0f} µs)' if args.spin_us else ''}"
        f"{f' (cpu_dma_latency {args.cpu_latency_us} µs)' if args.cpu_latency_us is not None else ''}"
    )
    print(
        f"  {'loop':12} {'steps':>7} {'p50 µs':>8} {'p99 µs':>8} {'max µs':>8} {'rtt p50':>8} "
        f"{'misses':>7} {'late':>6} {'floor':>6} {'nosamp':>6} {'cpu':>6} {'pole':>9}"
    )
    for name, r in results.items():
        lat, rtt = r["latency_us"], r.get("device_rtt_us") or {}
        print(
            f"  {name:12} {r['steps']:7d} {lat['p50']:8.1f} {lat['p99']:8.1f} {lat['max']:8.1f} "
            f"{rtt.get('p50', float('nan')):8.1f} {str(r['deadline_misses']):>7} "
            f"{r.get('ticks_late', '-') if r['floor_misses'] is not None else '-':>6} "
            f"{'-' if r['floor_misses'] is None else r['floor_misses']:>6} "
            f"{r.get('ticks_no_sample', '-') if r['floor_misses'] is not None else '-':>6} "
            f"{100 * r['cpu_use']:5.0f}% {'balanced' if r['balanced'] else 'FELL':>9}"
        )
    print("  misses: command-to-command gaps > 1.5 periods (any cause)")
    print("  late: fixed-mode ticks the node skipped because it woke or ran late, counted like floor:")
    print("  floor: ticks an idle loop with the node's realtime settings missed just before (same rate/time)")
    print("  nosamp: fixed-mode ticks with no fresh frame since the last one (the device's jitter)")
    print("  syscall-floor: select + read + one canned write per frame, nothing else (the OS's share)")
    if "naive-torch" in results:
        ratio = results["naive-torch"]["latency_us"]["p50"] / results["node-event"]["latency_us"]["p50"]
        print(f"  naive p50 / node (event) p50 = {ratio:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
