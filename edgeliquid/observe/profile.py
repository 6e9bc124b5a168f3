"""``edgeliquid profile``: latency the way control engineers read it.

Four views, each a terminal table, ``--json`` (percentiles under p50/p90/p99/p99.9/max,
in µs), ``--plot out.png`` (matplotlib, optional extra) and ``--baseline old.json``
(ratio per percentile, so a regression shows at a glance):

* a policy file: step latency per backend side by side (cold first call, warm steady
  state), optionally while other processes load every core (``--load``);
* a recording (.mcap): per-stage breakdown, loop period and jitter, deadline misses
  over time, end-to-end latency from the sensor's timestamp, events on a timeline;
* a live link (``--link PORT``): this tool plays the device and measures the round trip
  by ``ref_seq``, with coordinated omission corrected (HdrHistogram);
* ``--trace-tau``: each neuron's liquid time constant over an input sequence, against
  the Theorem 1 bounds.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

PCTS = (50, 90, 99, 99.9, 99.99)
KEYS = ("p50", "p90", "p99", "p99.9", "p99.99", "max")


def percentiles(us: np.ndarray) -> dict[str, float]:
    """p50 ... p99.99 and max of a sample (µs), nearest-rank (no interpolation beyond data)."""
    a = np.sort(np.asarray(us, np.float64))
    if a.size == 0:
        return {k: math.nan for k in KEYS}
    out = {}
    for p in PCTS:
        rank = max(1, math.ceil(p * a.size / 100 - 1e-9))  # nearest rank; guard 0.999*n rounding
        out[f"p{p:g}"] = float(a[rank - 1])
    out["max"] = float(a[-1])
    return out


def _busy(stop_at: float) -> None:
    x = 0
    while time.time() < stop_at:
        x += 1


class CpuLoad:
    """Keep every core busy with spinning processes while the block runs (``--load``)."""

    def __init__(self, procs: int | None = None):
        self.n = procs or os.cpu_count() or 1
        self.ps: list = []

    def __enter__(self):
        ctx = mp.get_context("fork")
        stop_at = time.time() + 3600
        self.ps = [ctx.Process(target=_busy, args=(stop_at,), daemon=True) for _ in range(self.n)]
        for p in self.ps:
            p.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        for p in self.ps:
            p.terminate()
        for p in self.ps:
            p.join(2)


# ----------------------------------------------------------------------------- a policy


def profile_policy(
    path: str, backends=("cpu", "reference"), steps: int = 20000, batch: int | None = None, load: bool = False
) -> dict[str, Any]:
    from ..runtime.policy import load as load_policy

    out: dict[str, Any] = {"model": str(path), "steps": steps, "batch": batch, "load": load, "backends": {}}

    def measure():
        for be in backends:
            pol = load_policy(path, backend=be, batch=batch)
            rows = batch or 1
            x = np.random.default_rng(0).uniform(-1, 1, (rows, pol.n_inputs) if batch else pol.n_inputs)
            x = x.astype(pol.dtype)
            t0 = time.perf_counter_ns()
            pol.step(x, 1.0)
            cold = (time.perf_counter_ns() - t0) / 1000
            n = steps if be != "reference" else max(200, steps // 20)
            for _ in range(min(1000, n)):
                pol.step(x, 1.0)
            lat = np.empty(n)
            clock = time.perf_counter_ns
            t_all = clock()
            for i in range(n):
                t = clock()
                pol.step(x, 1.0)
                lat[i] = clock() - t
            total = (clock() - t_all) / 1e9
            lat /= 1000.0
            r = percentiles(lat)
            r.update(
                cold_first_call=cold,
                mean=float(lat.mean()),
                jitter_std=float(lat.std()),
                steps_per_s=n / total,
                instance_steps_per_s=n * rows / total,
            )
            out["backends"][be] = r
            out.setdefault("_samples", {})[be] = lat

    if load:
        with CpuLoad():
            measure()
    else:
        measure()
    return out


# ---------------------------------------------------------------------------- a recording


def profile_recording(path: str, rate_hz: float | None = None) -> dict[str, Any]:
    """Stages, loop period, deadline misses (:mod:`.deadlines`), end-to-end latency, events."""
    from ..errors import RecordingError
    from ..node import deadlines
    from ..node.recorder import read_recording, truncation_note

    rec = read_recording(path)
    steps, meta = rec["steps"], rec["metadata"]
    note = truncation_note(path, rec)
    if not steps:
        raise RecordingError(f"{note}; no steps to profile" if note else f"{path}: no steps recorded")
    t = {
        k: np.array([s[f"t_{k}_ns"] for s in steps], np.int64)
        for k in ("ready", "decoded", "inferred", "encoded", "written")
    }
    stages = {
        "decode": (t["decoded"] - t["ready"]) / 1e3,
        "infer": (t["inferred"] - t["decoded"]) / 1e3,
        "encode": (t["encoded"] - t["inferred"]) / 1e3,
        "write": (t["written"] - t["encoded"]) / 1e3,
        "total": (t["written"] - t["ready"]) / 1e3,
    }
    rate = float(rate_hz or meta.get("rate_hz", 100.0))
    nominal = 1e6 / rate
    # The loop period and its misses are measured where the actuators see them: between
    # command writes, with the node's own definition (deadlines.py), so both report the same.
    period = np.diff(t["written"]) / 1e3
    dl = deadlines.count(t["written"], nominal * 1e3)
    late = dl["late_index"]
    period_ns = int(round(nominal * 1e3))
    late_ticks = np.array(
        [deadlines.ticks_missed(int(g * 1e3), period_ns) for g in period[late - 1]], np.int64
    )
    # Device and node clocks are not synchronised: the smallest (arrival - sampling) time is
    # taken as pure clock offset (transport latency ~0), as NTP does; the rest is latency.
    seqs = np.array([s["seq"] for s in steps])
    t_us = np.array([s["t_us"] for s in steps], np.int64)
    valid = seqs != 0
    e2e = None
    if valid.sum() > 1:
        dev_ns = np.unwrap(t_us[valid].astype(np.float64), period=2**32) * 1e3
        off = t["ready"][valid] - dev_ns
        e2e = (off - off.min() + (t["written"][valid] - t["ready"][valid])) / 1e3
    t0 = t["ready"][0]
    miss_t = (t["written"][late] - t0) / 1e9
    out = {
        "recording": str(path),
        "truncated": bool(rec["truncated"]),
        "note": note,
        "steps": len(steps),
        "rate_hz": rate,
        "stages": {k: percentiles(v) for k, v in stages.items()},
        # The node's compiled per-frame call decodes, steps and encodes in one go: it records
        # decode and encode as 0 and the whole call as infer. The share of such steps:
        "fused_share": float(np.mean((stages["decode"] == 0) & (stages["encode"] == 0))),
        "period": {**percentiles(period), "nominal": nominal, "jitter_std": float(period.std())},
        "deadline_misses": dl["misses"],
        "ticks_missed": dl["ticks_missed"],
        "deadline_rule": f"command interval > {deadlines.LATE_FACTOR:g}x the nominal period",
        "miss_times_s": miss_t.tolist()[:1000],
        "end_to_end": percentiles(e2e) if e2e is not None else None,
        "events": [
            {"t_s": (e["_log_ns"] - t0) / 1e9, "kind": e["kind"], "text": e["text"]} for e in rec["events"]
        ],
        "_samples": {
            "stages": stages,
            "t_s": (t["ready"] - t0) / 1e9,
            "period": period,
            "period_t_s": (t["written"][1:] - t0) / 1e9,
            "miss_t_s": miss_t,
            "miss_ticks": late_ticks,
            "end_to_end": e2e,
        },
    }
    out.update(percentiles(stages["total"]))
    return out


# ----------------------------------------------------------------------------- a live link


def profile_link(
    port: str,
    rate_hz: float = 1000.0,
    seconds: float = 10.0,
    n_in: int | None = None,
    late_factor: float = 10.0,
) -> dict[str, Any]:
    """Play the device against a node on ``port``; round trips by ref_seq, CO-corrected."""
    import serial
    from hdrh.histogram import HdrHistogram

    from ..node import protocol as P

    ser = serial.serial_for_url(port, baudrate=921600, timeout=0)
    split = P.Packetizer()
    seq = 0

    def send(ptype, values, t_us=0):
        nonlocal seq
        seq = (seq + 1) & 0xFFFF
        ser.write(P.encode_frame(ptype, seq, t_us, values))
        return seq

    def drain(wait):
        end = time.monotonic() + wait
        got = []
        while True:
            data = ser.read(4096)
            if data:
                now = time.monotonic_ns()
                for fr in split.feed(data):
                    try:
                        got.append((now, P.decode_frame(fr)))
                    except P.DecodeError:
                        pass
            elif time.monotonic() >= end:
                return got
            else:
                time.sleep(0.0002)

    sizes = None
    if n_in is None:  # learn the sizes from the node's HELLO (it answers any HELLO)
        send(P.HELLO, [0.0, 0.0, rate_hz])
        for _, pkt in drain(1.0):
            if pkt.type == P.HELLO and len(pkt.values) >= 2:
                sizes = (int(pkt.values[0]), int(pkt.values[1]))
        if sizes is None:
            raise TimeoutError(f"no HELLO from a node on {port} within 1 s")
        n_in = sizes[0]
    send(P.HELLO, [float(n_in), float(sizes[1] if sizes else 1), rate_hz])
    drain(0.2)
    period_ns = int(1e9 / rate_hz)
    hist = HdrHistogram(1, 60_000_000, 3)  # µs
    raw_hist = HdrHistogram(1, 60_000_000, 3)
    sent: dict[int, int] = {}
    rtts: list[float] = []
    late = 0
    x = [0.0] * n_in
    t_start = time.monotonic_ns()
    next_send = t_start
    t_end = t_start + int(seconds * 1e9)
    n_sent = 0
    while True:
        now = time.monotonic_ns()
        if now >= t_end:
            break
        if now >= next_send:
            s = send(P.SENSOR, x, (now // 1000) & 0xFFFFFFFF)
            sent[s] = now
            n_sent += 1
            next_send += period_ns
        data = ser.read(4096)
        if data:
            t_rx = time.monotonic_ns()
            for fr in split.feed(data):
                try:
                    pkt = P.decode_frame(fr)
                except P.DecodeError:
                    continue
                if pkt.type == P.ACTUATE and pkt.ref_seq in sent:
                    rtt_us = (t_rx - sent.pop(pkt.ref_seq)) / 1e3
                    rtts.append(rtt_us)
                    hist.record_corrected_value(max(1, int(rtt_us)), int(period_ns / 1e3))
                    raw_hist.record_value(max(1, int(rtt_us)))
                    if rtt_us > late_factor * period_ns / 1e3:
                        late += 1
        else:
            wait = (next_send - time.monotonic_ns()) / 1e9
            if wait > 0.0002:
                time.sleep(min(wait, 0.0005))
    for _t_rx, pkt in drain(0.2):
        if pkt.type == P.ACTUATE and pkt.ref_seq in sent:
            sent.pop(pkt.ref_seq)
            late += 1
    ser.close()
    lost = len(sent)
    corrected = {f"p{p:g}": float(hist.get_value_at_percentile(p)) for p in PCTS}
    corrected["max"] = float(hist.get_max_value())
    out = {
        "port": port,
        "rate_hz": rate_hz,
        "seconds": seconds,
        "sent": n_sent,
        "answered": len(rtts),
        "corrected_count": int(hist.get_total_count()),
        "lost": lost,
        "late": late,
        **corrected,
        "uncorrected": percentiles(np.array(rtts)),
        "_samples": {"rtt": np.array(rtts)},
    }
    out["warnings"] = usb_latency_warnings(np.array(rtts))
    return out


def usb_latency_warnings(rtt_us: np.ndarray) -> list[str]:
    """The signature of a USB-serial adapter's 16 ms latency timer: round trips bunched at ~16 ms."""
    if rtt_us.size < 20:
        return []
    near16 = np.mean((rtt_us > 14_000) & (rtt_us < 18_500))
    if near16 > 0.3 or 14_000 < np.median(rtt_us) < 33_000:
        return [
            "round trips cluster near 16 ms: the USB-serial adapter's latency timer is probably "
            "at its default (FTDI: echo 1 > /sys/bus/usb-serial/devices/ttyUSB0/latency_timer, "
            "or setserial /dev/ttyUSB0 low_latency)"
        ]
    return []


# ------------------------------------------------------------------------- trace the taus


def trace_tau(
    model_path: str, recording: str | None = None, steps: int = 500, seed: int = 0
) -> dict[str, Any]:
    """tau_sys_i(t) = cm_i / (gleak_i + sum_j w_ji s_ji(t)) along an input sequence."""
    from ..model.cell import effective_parameters
    from ..model.file import read
    from ..model.guarantees import guarantees
    from ..runtime.policy import from_model
    from ..runtime.reference import map_inputs, synapse_sigmoid

    model = read(model_path)
    cfg = model.config
    p = effective_parameters(model)
    if recording:
        from ..node.recorder import read_recording

        st = read_recording(recording)["steps"]
        xs = np.array([s["x"] for s in st], np.float64)
        el = np.array([s["elapsed"] for s in st], np.float64)
    else:
        rng = np.random.default_rng(seed)
        xs = rng.normal(0, 1, (steps, cfg.n_inputs))
        el = np.ones(steps)
    pol = from_model(model, "reference", np.float64)
    u = cfg.units
    taus = np.empty((len(xs), u))
    ys = np.empty((len(xs), cfg.n_outputs))
    for k in range(len(xs)):
        v = pol.state[:u][None]
        xm = map_inputs(p, xs[k][None])
        g_syn = (p["w"] * p["sparsity_mask"] * synapse_sigmoid(v, p["mu"], p["sigma"])).sum(axis=1)
        g_sen = (
            p["sensory_w"]
            * p["sensory_sparsity_mask"]
            * synapse_sigmoid(xm, p["sensory_mu"], p["sensory_sigma"])
        ).sum(axis=1)
        taus[k] = p["cm"] / (p["gleak"] + g_syn[0] + g_sen[0])
        ys[k] = pol.step(xs[k], float(el[k]))
    g = guarantees(model)
    inside = bool(np.all(taus >= g.tau_min - 1e-12) & np.all(taus <= g.tau_max + 1e-12))
    return {
        "model": str(model_path),
        "steps": len(xs),
        "within_theorem1_bounds": inside,
        "neurons": [
            {
                "id": i,
                "role": model.roles[i],
                "tau_min_bound": float(g.tau_min[i]),
                "tau_max_bound": float(g.tau_max[i]) if np.isfinite(g.tau_max[i]) else None,
                "tau_observed_min": float(taus[:, i].min()),
                "tau_observed_max": float(taus[:, i].max()),
                "tau_observed_mean": float(taus[:, i].mean()),
            }
            for i in range(u)
        ],
        "_samples": {"tau": taus, "y": ys, "bounds": (g.tau_min, g.tau_max)},
    }


# ------------------------------------------------------------------------------- output


def with_baseline(result: dict[str, Any], baseline: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Ratio new/old per percentile for every block that has percentile keys in both."""
    ratios = {}

    def blocks(d, prefix=""):
        if any(k in d for k in KEYS):
            yield prefix or "result", d
        for k, v in d.items():
            if isinstance(v, dict) and not k.startswith("_"):
                yield from blocks(v, f"{prefix}.{k}" if prefix else k)

    old = dict(blocks(baseline))
    for name, block in blocks(result):
        if name in old:
            ratios[name] = {
                k: block[k] / old[name][k] for k in KEYS if k in block and k in old[name] and old[name][k]
            }
    return ratios


def public(d: Any) -> Any:
    """Drop the raw samples (keys starting with '_') for JSON output."""
    if isinstance(d, dict):
        return {k: public(v) for k, v in d.items() if not k.startswith("_")}
    if isinstance(d, list):
        return [public(v) for v in d]
    return d


def table(title: str, rows: dict[str, dict[str, float]]) -> str:
    lines = [title, f"  {'':18}" + "".join(f"{k:>10}" for k in KEYS)]
    for name, r in rows.items():
        lines.append(f"  {name:18}" + "".join(f"{r.get(k, math.nan):10.1f}" for k in KEYS))
    return "\n".join(lines)


def baseline_table(ratios: dict[str, dict[str, float]]) -> str:
    """Ratios new/old (from :func:`with_baseline`) as aligned columns, one row per block."""
    width = max([len(n) for n in ratios] + [8])
    lines = ["ratio to baseline (new / old):", f"  {'':{width}}" + "".join(f"{k:>9}" for k in KEYS)]
    for name, rr in ratios.items():
        cells = "".join(f"{rr[k]:9.2f}" if k in rr else f"{'-':>9}" for k in KEYS)
        lines.append(f"  {name:{width}}{cells}")
    if not ratios:
        lines.append("  (no block of percentiles in common with the baseline)")
    return "\n".join(lines)


_STAGE_COLORS = {"decode": "C0", "infer": "C1", "encode": "C2", "write": "C4", "total": "k"}
_NINES = (50, 90, 99, 99.9, 99.99)


def _nines(p: np.ndarray) -> np.ndarray:
    """Percentile -> 'number of nines' (p50 0.3, p90 1, p99 2, ...): the tail gets room."""
    return -np.log10(1 - np.asarray(p, np.float64) / 100)


def _mode_timeline(events: list[dict[str, Any]], t_end: float) -> tuple[list[float], list[int]]:
    """Node mode over time from the recorded events (RUN 0, HOLD 1, SAFE 2; SAFE at start)."""
    mode_of = {"arm": 0, "hold": 1, "failsafe": 2, "reconnect": 2}
    ts, ms = [min([0.0] + [e["t_s"] for e in events])], [2]
    for e in events:
        if e["kind"] in mode_of:
            ts.append(e["t_s"])
            ms.append(mode_of[e["kind"]])
    ts.append(max(t_end, ts[-1]))
    ms.append(ms[-1])
    return ts, ms


def _label_events(ax, events: list[dict[str, Any]], span: float) -> None:
    """One marker per event; events closer than 1.5% of the run share one label, and labels
    alternate between three heights, so they do not overlap."""
    colors = {"failsafe": "red", "reconnect": "magenta", "hold": "orange", "arm": "green", "reset": "C0"}
    groups: list[list[dict[str, Any]]] = []
    for e in events:
        if groups and e["t_s"] - groups[-1][-1]["t_s"] < 0.015 * span:
            groups[-1].append(e)
        else:
            groups.append([e])
    for g_i, g in enumerate(groups):
        for e in g:
            ax.axvline(e["t_s"], color=colors.get(e["kind"], "0.5"), lw=0.8, alpha=0.7)
        # the orderly stop is not a fault: name it as such
        kinds = list(dict.fromkeys("shutdown" if "shutdown" in e["text"] else e["kind"] for e in g))
        label = "+".join(kinds)
        ax.annotate(
            label,
            (g[0]["t_s"], 2.45 + 0.5 * (g_i % 3)),
            fontsize=7,
            ha="left",
            va="center",
            xytext=(2, 0),
            textcoords="offset points",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
        )


def _plot_recording(result: dict[str, Any], fig) -> None:
    """A recording: stage latency, loop period, misses and the mode/event timeline over time
    (left, one shared time axis), distributions beside them (right)."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    smp = result["_samples"]
    t_s, stages = smp["t_s"], smp["stages"]
    nominal = result["period"]["nominal"]
    span = float(max(t_s[-1], 1e-3))
    gs = fig.add_gridspec(4, 2, width_ratios=(3, 1), height_ratios=(1.2, 1, 0.8, 1))
    ax_lat = fig.add_subplot(gs[0, 0])
    ax_per = fig.add_subplot(gs[1, 0], sharex=ax_lat)
    ax_miss = fig.add_subplot(gs[2, 0], sharex=ax_lat)
    ax_ev = fig.add_subplot(gs[3, 0], sharex=ax_lat)
    ax_pct = fig.add_subplot(gs[0, 1])
    ax_hist = fig.add_subplot(gs[1, 1])
    ax_txt = fig.add_subplot(gs[2:, 1])
    # 1. latency per stage over time, and its percentiles
    for name, v in stages.items():
        c = _STAGE_COLORS.get(name)
        ok = v > 0
        ax_lat.plot(t_s[ok], v[ok], ".", ms=2 if name != "total" else 3, color=c, label=name, alpha=0.7)
        q = np.array([p for p in np.linspace(0, 99.99, 300) if p >= 10])
        if ok.any():
            ax_pct.plot(_nines(q), np.percentile(v[ok], q), color=c, label=name)
    if smp.get("end_to_end") is not None:
        e2e = smp["end_to_end"]
        q = np.linspace(10, 99.99, 300)
        ax_pct.plot(_nines(q), np.percentile(e2e, q), color="C3", ls="--", label="end to end")
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (µs)")
    ax_lat.set_title(f"latency per stage ({result['steps']} steps at {result['rate_hz']:g} Hz)", fontsize=10)
    ax_lat.legend(fontsize=7, ncol=5, loc="upper right", markerscale=3)
    ax_pct.set_yscale("log")
    ax_pct.xaxis.set_major_locator(FixedLocator(_nines(_NINES)))
    ax_pct.set_xticklabels([f"p{p:g}" for p in _NINES], fontsize=8)
    ax_pct.set_ylabel("µs")
    ax_pct.set_title("latency percentiles per stage", fontsize=10)
    ax_pct.legend(fontsize=7)
    # 2. loop period between commands: nominal, the miss threshold, the late ones
    per, per_t = smp["period"] / 1e3, smp["period_t_s"]
    ax_per.plot(per_t, per, lw=0.6, color="C0", label="period")
    ax_per.axhline(nominal / 1e3, color="green", lw=0.8, ls="--", label=f"nominal {nominal / 1e3:g} ms")
    thr = 1.5 * nominal / 1e3
    ax_per.axhline(thr, color="red", lw=0.8, ls=":", label="miss threshold (1.5x)")
    late = per > thr
    ax_per.plot(per_t[late], per[late], "o", ms=3, color="red")
    ax_per.set_yscale("log")
    ax_per.set_ylabel("period (ms)")
    ax_per.set_title("loop period (between commands)", fontsize=10)
    ax_per.legend(fontsize=7, loc="upper right", ncol=3)
    if per.size:
        ax_hist.hist(per, bins=np.logspace(np.log10(max(per.min(), 1e-3)), np.log10(per.max() * 1.01), 50))
    ax_hist.axvline(thr, color="red", lw=0.8, ls=":")
    ax_hist.set_xscale("log")
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("period (ms)")
    ax_hist.set_title("loop period histogram", fontsize=10)
    # 3. deadline misses over time: ticks missed per miss, and the running count
    mt, mk = smp["miss_t_s"], smp["miss_ticks"]
    if mt.size:
        ax_miss.vlines(mt, 0, mk, color="red", lw=1.5)
    ax_miss.set_ylabel("ticks missed")
    ax_miss.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    ax_miss.set_ylim(0, max(1, int(mk.max()) if mk.size else 1) * 1.15)
    ax_cum = ax_miss.twinx()
    ax_cum.step(
        np.r_[0.0, mt, span], np.r_[0, np.arange(1, mt.size + 1), mt.size], where="post", color="k", lw=0.8
    )
    ax_cum.set_ylabel("misses (total)")
    ax_cum.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=4))
    ax_cum.set_ylim(0, max(1, mt.size) * 1.15)
    ax_miss.set_title(
        f"deadline misses: {result['deadline_misses']} ({result['ticks_missed']} ticks missed; "
        f"{result['deadline_rule']})",
        fontsize=10,
    )
    # 4. fail-safe / reconnect timeline: the node's mode and every event
    events = result["events"]
    ts, ms = _mode_timeline(events, span)
    ax_ev.step(ts, ms, where="post", color="k", lw=1.2)
    ax_ev.set_yticks([0, 1, 2])
    ax_ev.set_yticklabels(["RUN", "HOLD", "SAFE"])
    ax_ev.set_ylim(-0.4, 3.9)
    _label_events(ax_ev, events, span)
    ax_ev.set_title("fail-safe / reconnect timeline (mode, events)", fontsize=10)
    ax_ev.set_xlabel("time since the first step (s)")
    ax_ev.xaxis.set_major_locator(MaxNLocator(nbins=10))
    for ax in (ax_lat, ax_per, ax_miss):
        ax.tick_params(labelbottom=False)
    for ax in (ax_lat, ax_per, ax_miss, ax_ev):
        ax.grid(alpha=0.3)
    # summary text: what the terminal table says, for a picture shared on its own
    counts: dict[str, int] = {}
    for e in events:
        counts[e["kind"]] = counts.get(e["kind"], 0) + 1
    tot = result["stages"]["total"]
    lines = [
        str(Path(result["recording"]).name),
        f"steps {result['steps']} at {result['rate_hz']:g} Hz",
        f"latency p50 {tot['p50']:.0f} µs, p99 {tot['p99']:.0f} µs, max {tot['max']:.0f} µs",
        f"period jitter (std) {result['period']['jitter_std'] / 1e3:.2f} ms",
        f"deadline misses {result['deadline_misses']}, ticks missed {result['ticks_missed']}",
        "events: " + (", ".join(f"{k} {n}" for k, n in counts.items()) or "none"),
    ]
    if result.get("truncated"):
        lines.append("TRUNCATED recording (not closed):")
        lines.append(f"  recovered {result['steps']} steps")
    ax_txt.axis("off")
    ax_txt.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace", wrap=True)


def plot(result: dict[str, Any], path: str) -> list[str]:
    """One PNG: a recording's timelines (see :func:`_plot_recording`); otherwise histogram
    (log axis), percentile curve and timeline of the samples. Returns the panels' titles."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install 'edgeliquid[plot]'") from None
    samples = result.get("_samples", {})
    if "stages" in samples:
        fig = plt.figure(figsize=(15, 11), layout="constrained")
        _plot_recording(result, fig)
    elif "tau" in samples:
        tau, y = samples["tau"], samples["y"]
        lo, hi = samples["bounds"]
        fig, axes = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
        for i in range(tau.shape[1]):
            axes[0].plot(tau[:, i], lw=0.8)
        axes[0].hlines(
            [lo.min(), np.nanmax(np.where(np.isfinite(hi), hi, np.nan))],
            0,
            len(tau),
            colors="k",
            linestyles="--",
            label="Theorem 1 bounds (extremes)",
        )
        axes[0].set_ylabel("tau_sys (model time units)")
        axes[0].set_yscale("log")
        axes[0].legend()
        axes[1].plot(y)
        axes[1].set_ylabel("outputs")
        axes[1].set_xlabel("step")
    else:
        series = {
            k: v
            for k, v in samples.items()
            if isinstance(v, np.ndarray) and v.ndim == 1 and k not in ("t_s", "period")
        }
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        for name, v in series.items():
            v = v[np.isfinite(v) & (v > 0)]
            if not v.size:
                continue
            bins = np.logspace(np.log10(v.min()), np.log10(v.max() * 1.01 + 1e-9), 60)
            axes[0].hist(v, bins=bins, histtype="step", label=name)
            q = np.linspace(10, 99.99, 400)
            axes[1].plot(_nines(q), np.percentile(v, q), label=name)
            axes[2].plot(samples.get("t_s", np.arange(v.size))[: v.size], v, lw=0.5, label=name)
        axes[0].set_xscale("log")
        axes[0].set_yscale("log")
        axes[0].set_xlabel("latency (µs)")
        axes[0].set_title("histogram")
        axes[1].set_yscale("log")
        axes[1].set_xticks(_nines(_NINES), [f"p{p:g}" for p in _NINES])
        axes[1].set_xlabel("percentile")
        axes[1].set_ylabel("µs")
        axes[1].set_title("percentile curve")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("time (s)" if "t_s" in samples else "sample")
        axes[2].set_title("timeline")
        for ax in axes:
            ax.legend(fontsize=7)
    if "stages" not in samples:  # the recording figure lays itself out (constrained)
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    plt.close(fig)
    return titles


def dumps(result: dict[str, Any]) -> str:
    return json.dumps(public(result), indent=2, default=float)
