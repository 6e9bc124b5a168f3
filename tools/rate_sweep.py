#!/usr/bin/env python3
"""Highest loop rate at which the shipped policy still balances with 0 deadline misses.

Runs the demo (simulator + node over a pty) in fixed mode at increasing rates.

    python tools/rate_sweep.py [--rates 1000 2000 5000 10000] [--seconds 10] [--realtime]
"""

from __future__ import annotations

import argparse
import json

from edgeliquid.hil.demo import run_demo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=float, nargs="*", default=[1000, 2000, 5000, 10000])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--mode", default="fixed", choices=["fixed", "event"])
    ap.add_argument("--realtime", action="store_true")
    args = ap.parse_args()
    best = None
    print(
        f"{'rate Hz':>8} {'steps':>7} {'misses':>7} {'p50 µs':>8} {'p99 µs':>8} "
        f"{'rtt p50':>8} {'balanced':>9}"
    )
    for rate in args.rates:
        s = run_demo(
            seconds=args.seconds,
            rate_hz=rate,
            mode=args.mode,
            live=False,
            noise=0.002,
            jitter=0.2,
            realtime=args.realtime,
        )
        ok = s["balanced"] and s["deadline_misses"] == 0
        best = rate if ok else best
        print(
            f"{rate:8.0f} {s['steps']:7d} {s['deadline_misses']:7d} {s['latency_us']['p50']:8.1f} "
            f"{s['latency_us']['p99']:8.1f} {s['device_rtt_us'].get('p50', float('nan')):8.1f} "
            f"{str(s['balanced']):>9}",
            flush=True,
        )
    print(json.dumps({"highest_rate_balanced_without_misses_hz": best}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
