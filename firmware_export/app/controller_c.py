"""The controller main loop in C: protocol v1 and the node's fail-safe rules, on the device.

``app.c`` mirrors the node in event mode (edgeliquid/node/loop.py, supervisor.py, channels.py):
HELLO answered with the config's sizes and rate (a size mismatch: SAFE, no arming until a
matching HELLO), SENSOR frames decoded (COBS + CRC, the node's error kinds counted), seq gaps,
duplicates and stale frames counted (stale dropped), invalid samples (wrong count, non-finite,
outside ``inputs[].range``) held then SAFE, elapsed from the device's ``t_us``, the channel maps
(clip, offset, scale; scale, offset, clip, rate limit; fail-safe values) from ``app_config.h``,
ACTUATE with ``ref_seq``, STATUS on every change and every second while not RUN, sensor timeout
-> HOLD (``hold_cycles``) -> SAFE, arming after ``arm_after`` valid frames (state reset on
recovery with ``on_recovery: reset_state``), a non-finite policy output never sent.

A STATUS frame *sent to* the app (the node ignores a device's STATUS) is answered with
STATUS ``[mode, reason, counters..., measurements...]`` (:data:`DEBUG_FIELDS`): the app's
counters and the instruction measurements, for tests and the demo.
"""

from __future__ import annotations

import math
from string import Template

from .board_mps2 import TICK_HZ

#: What the app's answer to a STATUS frame holds, in order.
DEBUG_FIELDS = (
    "mode",
    "reason",
    "frames",
    "crc",
    "cobs",
    "version",
    "flags",
    "length",
    "type",
    "nonfinite",
    "lost",
    "duplicates",
    "reordered",
    "wrong_size",
    "out_of_range",
    "hello_mismatch",
    "clipped",
    "steps",
    "policy_errors",
    "failsafe_events",
    "deadline_misses",
    "ticks_missed",
    "measured_cycles",
    "step_ticks_min",
    "step_ticks_mean",
    "step_ticks_max",
    "cycle_ticks_min",
    "cycle_ticks_mean",
    "cycle_ticks_max",
    "latency_us_p50",
    "latency_us_p99",
    "latency_us_max",
    "tick_hz",
)
ERROR_FIELDS = ("crc", "cobs", "version", "flags", "length", "type", "nonfinite")
LAT_BUCKET_US = 16
LAT_BUCKETS = 128

APP_C = Template(r"""#include "app_config.h"
#include "board.h"
#include "edgeliquid_proto.h"
#include <math.h>
#include <string.h>

enum { MODE_RUN = 0, MODE_HOLD = 1, MODE_SAFE = 2 };
enum { R_NONE, R_STARTING, R_TIMEOUT, R_BAD_SENSOR, R_POLICY, R_HELLO_MISMATCH, R_SHUTDOWN, R_RECONNECT };
enum { SEND_NONE, SEND_POLICY, SEND_HOLD, SEND_FAILSAFE };

/* the supervisor's decision (edgeliquid/node/supervisor.py: Decision) */
typedef struct {
    uint8_t mode, reason, send, reset, status, changed, fault;
} decision;

/* the node's counters, in the order of the debug STATUS (controller_c.DEBUG_FIELDS) */
enum {
    C_FRAMES, C_CRC, C_COBS, C_VERSION, C_FLAGS, C_LENGTH, C_TYPE, C_NONFINITE, C_LOST, C_DUPLICATES,
    C_REORDERED, C_WRONG_SIZE, C_OUT_OF_RANGE, C_HELLO_MISMATCH, C_CLIPPED, C_STEPS, C_POLICY_ERRORS,
    C_FAILSAFE_EVENTS, C_DEADLINE_MISSES, C_TICKS_MISSED, C_N
};
#define LAT_BUCKETS ${lat_buckets}
#define LAT_BUCKET_TICKS (BOARD_TICK_HZ / 1000000u * ${lat_bucket_us}u)

static uint32_t count[C_N];
static struct {
    uint8_t mode, reason, prev_mode, hello_ok;
    uint32_t valid_streak, bad_streak;
    uint64_t last_valid, last_status;
} sup;
static float state[APP_STATE_SIZE];
static float last_raw[APP_N_IN];
static float last_u[APP_N_OUT]; /* the rate limiter's previous command */
static float u[APP_N_OUT];
static uint16_t tx_seq, rx_last_seq;
static uint8_t rx_have_seq, have_t_us;
static uint32_t last_t_us;
static uint64_t last_cmd, last_write, t_frame;
static elq_rx rx;
static elq_packet in, out;
static uint8_t wire[ELQ_MAX_FRAME];
/* measurements (board ticks; instructions under qemu -icount, see the manifest) */
static uint32_t m_n, step_min = 0xFFFFFFFFu, step_max, cyc_min = 0xFFFFFFFFu, cyc_max, step_ticks;
static uint64_t step_sum, cyc_sum, lat_max;
static uint16_t lat_hist[LAT_BUCKETS];

static decision mk(uint8_t mode, uint8_t reason, uint8_t send, uint8_t reset, uint8_t status, uint8_t changed,
                   uint8_t fault)
{
    decision d;
    d.mode = mode;
    d.reason = reason;
    d.send = send;
    d.reset = reset;
    d.status = status;
    d.changed = changed;
    d.fault = fault;
    return d;
}

static decision idle(void) { return mk(sup.mode, sup.reason, SEND_NONE, 0, 0, 0, 0); }

/* ------------------------------------------------------------ the supervisor (supervisor.py) */
static decision go(uint8_t mode, uint8_t reason, uint8_t send, uint8_t reset, uint64_t now)
{
    uint8_t old = sup.mode;
    decision d;
    if (mode == old && reason == sup.reason) {
        return mk(mode, reason, send, reset, 0, 0, 0);
    }
    d = mk(mode, reason, send, reset, 1, 1, (uint8_t)(mode == MODE_SAFE && old != MODE_SAFE));
    if (mode == MODE_SAFE) {
        d.send = SEND_FAILSAFE;
        sup.valid_streak = 0;
    }
    sup.prev_mode = old;
    sup.mode = mode;
    sup.reason = reason;
    sup.last_status = now;
    return d;
}

static decision degrade(uint8_t reason, uint64_t now)
{
    if (sup.bad_streak <= APP_HOLD_CYCLES) {
        if (sup.mode != MODE_HOLD) {
            return go(MODE_HOLD, reason, SEND_HOLD, 0, now);
        }
        return mk(MODE_HOLD, sup.reason, SEND_HOLD, 0, 0, 0, 0);
    }
    return go(MODE_SAFE, reason, SEND_FAILSAFE, 0, now);
}

static decision on_valid(uint64_t now)
{
    sup.bad_streak = 0;
    sup.last_valid = now;
    if (sup.mode == MODE_RUN) {
        return mk(MODE_RUN, R_NONE, SEND_POLICY, 0, 0, 0, 0);
    }
    if (sup.mode == MODE_HOLD) {
        return go(MODE_RUN, R_NONE, SEND_POLICY, 0, now);
    }
    sup.valid_streak++;
    if (!sup.hello_ok || sup.valid_streak < APP_ARM_AFTER) {
        return idle();
    }
    return go(MODE_RUN, R_NONE, SEND_POLICY, APP_RESET_ON_RECOVERY, now);
}

static decision on_invalid(uint64_t now)
{
    sup.valid_streak = 0;
    sup.bad_streak++;
    if (sup.mode == MODE_SAFE) {
        return idle();
    }
    return degrade(R_BAD_SENSOR, now);
}

static decision on_tick(uint64_t now)
{
    decision d = idle();
    uint64_t since = now - sup.last_valid;
    if (sup.mode == MODE_RUN && since <= APP_TIMEOUT_TICKS) {
        return d;
    }
    if (sup.mode != MODE_SAFE && since > APP_TIMEOUT_TICKS) {
        /* one HOLD cycle per period past the timeout, counted from the clock */
        uint64_t over = since - APP_TIMEOUT_TICKS;
        uint32_t cycles = over >= (uint64_t)APP_PERIOD_TICKS * (APP_HOLD_CYCLES + 1u)
                              ? APP_HOLD_CYCLES + 1u
                              : (uint32_t)over / APP_PERIOD_TICKS + 1u;
        if (cycles > APP_HOLD_CYCLES) {
            return go(MODE_SAFE, R_TIMEOUT, SEND_FAILSAFE, 0, now);
        }
        if (cycles > sup.bad_streak) {
            sup.bad_streak = cycles;
            d = degrade(R_TIMEOUT, now);
            if (d.status) {
                return d;
            }
        }
    }
    if (sup.mode != MODE_RUN && now - sup.last_status > APP_STATUS_EVERY_TICKS) {
        sup.last_status = now;
        return mk(sup.mode, sup.reason, sup.mode == MODE_SAFE ? SEND_FAILSAFE : d.send, 0, 1, 0, 0);
    }
    return d;
}

/* ------------------------------------------------------------ output */
static void send(uint8_t type, const float *values, uint8_t n, uint16_t ref_seq)
{
    size_t len;
    tx_seq = (uint16_t)(tx_seq + 1u);
    out.type = type;
    out.flags = 0;
    out.count = n;
    out.seq = tx_seq;
    out.t_us = (uint32_t)(board_now() / (BOARD_TICK_HZ / 1000000u));
    out.ref_seq = ref_seq;
    memcpy(out.values, values, n * sizeof(float));
    len = elq_encode_frame(&out, wire);
    board_write(wire, (uint32_t)len);
}

static void send_status(void)
{
    float v[2];
    v[0] = (float)sup.mode;
    v[1] = (float)sup.reason;
    send(ELQ_STATUS, v, 2, 0);
}

static void send_failsafe(void)
{
    memcpy(last_u, out_failsafe, sizeof last_u);
    memcpy(u, out_failsafe, sizeof u);
    send(ELQ_ACTUATE, u, APP_N_OUT, 0);
}

static void send_hello(void)
{
    float v[3];
    v[0] = (float)APP_N_IN;
    v[1] = (float)APP_N_OUT;
    v[2] = APP_RATE_HZ;
    send(ELQ_HELLO, v, 3, 0);
}

/* ------------------------------------------------------------ compute (channels.py) */
static int compute(const float *raw, float elapsed, float dt_s)
{
    float x[APP_N_IN], y[APP_N_OUT];
    uint64_t t0;
    int i;
    for (i = 0; i < APP_N_IN; ++i) {
        float c = raw[i] < in_lo[i] ? in_lo[i] : raw[i];
        c = c > in_hi[i] ? in_hi[i] : c;
        count[C_CLIPPED] += (c != raw[i]);
        x[i] = (c - in_offset[i]) * in_scale[i];
    }
    t0 = board_now();
    APP_POLICY_STEP(x, state, elapsed, y);
    step_ticks = (uint32_t)(board_now() - t0);
    for (i = 0; i < APP_N_OUT; ++i) {
        if (!isfinite(y[i])) {
            return 0;
        }
    }
    for (i = 0; i < APP_N_OUT; ++i) {
        float v = y[i] * out_scale[i] + out_offset[i];
        float sm = out_rate[i] * (dt_s > 0.0f ? dt_s : 0.0f);
        v = v < out_lo[i] ? out_lo[i] : v;
        v = v > out_hi[i] ? out_hi[i] : v;
        if (sm == sm) { /* inf * 0 is no limit */
            v = v < last_u[i] - sm ? last_u[i] - sm : v;
            v = v > last_u[i] + sm ? last_u[i] + sm : v;
        }
        last_u[i] = v;
        u[i] = v;
    }
    return 1;
}

static decision on_policy_nonfinite(uint64_t now) { return go(MODE_SAFE, R_POLICY, SEND_FAILSAFE, 1, now); }
static void act(decision d, uint16_t ref_seq, int failsafe_first, uint64_t now);

static void record(uint64_t t_ready, uint64_t t_encoded, uint64_t t_written, int measured)
{
    uint64_t lat = t_written - t_ready;
    uint64_t q = lat / LAT_BUCKET_TICKS;
    uint32_t b = (uint32_t)(q > LAT_BUCKETS - 1u ? LAT_BUCKETS - 1u : q);
    if (lat_hist[b] < 0xFFFFu) {
        lat_hist[b]++;
    }
    lat_max = lat > lat_max ? lat : lat_max;
    if (last_write) {
        uint64_t gap = t_written - last_write;
        if (gap * 2u > 3u * (uint64_t)APP_PERIOD_TICKS) { /* > 1.5 periods: node/deadlines.py */
            uint64_t k = (gap + APP_PERIOD_TICKS / 2u) / APP_PERIOD_TICKS;
            count[C_DEADLINE_MISSES]++;
            count[C_TICKS_MISSED] += k > 1u ? (uint32_t)(k - 1u) : 1u;
        }
    }
    last_write = t_written;
    if (measured) {
        uint32_t cyc = (uint32_t)(t_encoded - t_ready);
        m_n++;
        step_sum += step_ticks;
        cyc_sum += cyc;
        step_min = step_ticks < step_min ? step_ticks : step_min;
        step_max = step_ticks > step_max ? step_ticks : step_max;
        cyc_min = cyc < cyc_min ? cyc : cyc_min;
        cyc_max = cyc > cyc_max ? cyc : cyc_max;
    }
}

static void infer_and_send(float elapsed, uint16_t ref_seq, uint64_t t_ready, int measured)
{
    uint64_t now = board_now(), t_enc, t_written;
    uint64_t since = now - last_cmd;
    float dt_s = (float)(since > 0xFFFFFFFFu ? 0xFFFFFFFFu : (uint32_t)since) / (float)BOARD_TICK_HZ;
    size_t len;
    if (!compute(last_raw, elapsed, dt_s)) {
        count[C_POLICY_ERRORS]++;
        act(on_policy_nonfinite(now), ref_seq, 1, now);
        return;
    }
    last_cmd = now;
    tx_seq = (uint16_t)(tx_seq + 1u);
    out.type = ELQ_ACTUATE;
    out.flags = 0;
    out.count = APP_N_OUT;
    out.seq = tx_seq;
    out.t_us = (uint32_t)(now / (BOARD_TICK_HZ / 1000000u));
    out.ref_seq = ref_seq;
    memcpy(out.values, u, sizeof u);
    len = elq_encode_frame(&out, wire);
    t_enc = board_now();
    board_write(wire, (uint32_t)len);
    t_written = board_now();
    count[C_STEPS]++;
    record(t_ready, t_enc, t_written, measured);
}

/* carry out a decision except SEND_POLICY (loop.py: Node._act) */
static void act(decision d, uint16_t ref_seq, int failsafe_first, uint64_t now)
{
    if (d.reset) {
        APP_POLICY_RESET(state);
    }
    if (d.changed && d.fault) {
        count[C_FAILSAFE_EVENTS]++;
    }
    if (d.send == SEND_FAILSAFE && (failsafe_first || d.changed)) {
        send_failsafe();
        if (d.status) {
            send_status();
        }
        return;
    }
    if (d.status) {
        send_status();
    }
    if (d.send == SEND_FAILSAFE) {
        send_failsafe();
    } else if (d.send == SEND_HOLD) {
        infer_and_send(APP_NOMINAL_ELAPSED, ref_seq, now, 0); /* a HOLD cycle: one period */
    }
}

/* ------------------------------------------------------------ input */
static int track_seq(uint16_t seq)
{
    int16_t d;
    if (!rx_have_seq) {
        rx_have_seq = 1;
        rx_last_seq = seq;
        return 1;
    }
    d = (int16_t)(uint16_t)(seq - rx_last_seq);
    if (d == 0) {
        count[C_DUPLICATES]++;
        return 0;
    }
    if (d < 0) {
        count[C_REORDERED]++;
        return 0;
    }
    count[C_LOST] += (uint32_t)(d - 1);
    rx_last_seq = seq;
    return 1;
}

static int hello_size_ok(float v, int want)
{
    return isfinite(v) && v >= 0.0f && v <= (float)ELQ_MAX_COUNT && v == (float)(int)v && (int)v == want;
}

static void on_hello(const elq_packet *p)
{
    uint64_t now;
    send_hello();
    rx_have_seq = 0;
    now = board_now();
    if (p->count < 2 || !hello_size_ok(p->values[0], APP_N_IN) || !hello_size_ok(p->values[1], APP_N_OUT)) {
        decision d;
        count[C_HELLO_MISMATCH]++;
        sup.valid_streak = 0;
        sup.hello_ok = 0;
        d = go(MODE_SAFE, R_HELLO_MISMATCH, SEND_NONE, 0, now);
        if (!d.status) {
            sup.last_status = now; /* STATUS again even when already SAFE for this reason */
            d = mk(MODE_SAFE, R_HELLO_MISMATCH, SEND_NONE, 0, 1, 0, 0);
        }
        act(d, 0, 1, now);
    } else {
        sup.valid_streak = 0;
        sup.hello_ok = 1;
    }
}

static int valid(const elq_packet *p)
{
    int i;
    if (p->count != APP_N_IN) {
        count[C_WRONG_SIZE]++;
        count[C_LENGTH]++;
        return 0;
    }
    for (i = 0; i < APP_N_IN; ++i) {
        if (!isfinite(p->values[i])) {
            count[C_NONFINITE]++;
            return 0;
        }
    }
    for (i = 0; i < APP_N_IN; ++i) {
        if (in_has_range[i] && !(in_range_lo[i] <= p->values[i] && p->values[i] <= in_range_hi[i])) {
            count[C_OUT_OF_RANGE]++;
            return 0;
        }
    }
    return 1;
}

/* model time since the previous sample, from the device's own timestamps (loop.py: _elapsed_from) */
static float elapsed_from(const elq_packet *p)
{
    float e = APP_NOMINAL_ELAPSED;
    if (have_t_us) {
        uint32_t d = p->t_us - last_t_us;
        if (d > 0u && d < 0x80000000u) {
            e = (float)d / APP_US_PER_MODEL_UNIT;
        }
    }
    have_t_us = 1;
    last_t_us = p->t_us;
    return e;
}

static void on_sample(const elq_packet *p, uint64_t t_ready)
{
    uint64_t now = board_now();
    decision d;
    float e;
    if (!valid(p)) {
        d = on_invalid(now);
        if (d.status || d.send) {
            act(d, p->seq, 1, now);
        }
        return;
    }
    e = elapsed_from(p);
    d = on_valid(now);
    if (!(d.mode == MODE_RUN && d.send == SEND_POLICY && !d.status && !d.reset)) {
        if (d.status || d.reset) {
            act(d, p->seq, 1, now);
        }
        if (d.send != SEND_POLICY) {
            return;
        }
    }
    memcpy(last_raw, p->values, sizeof last_raw);
    infer_and_send(e, p->seq, t_ready, 1);
}

static float lat_pct(uint32_t total, uint32_t num, uint32_t den)
{
    uint32_t acc = 0, i;
    for (i = 0; i < LAT_BUCKETS; ++i) {
        acc += lat_hist[i];
        if (total && (uint64_t)acc * den >= (uint64_t)total * num) {
            return (float)((i + 1u) * ${lat_bucket_us}u);
        }
    }
    return 0.0f;
}

static void send_debug(void)
{
    float v[${n_debug}];
    uint32_t total = 0, i;
    for (i = 0; i < LAT_BUCKETS; ++i) {
        total += lat_hist[i];
    }
    v[0] = (float)sup.mode;
    v[1] = (float)sup.reason;
    for (i = 0; i < C_N; ++i) {
        v[2 + i] = (float)count[i];
    }
    i = 2 + C_N;
    v[i++] = (float)m_n;
    v[i++] = m_n ? (float)step_min : 0.0f;
    v[i++] = m_n ? (float)step_sum / (float)m_n : 0.0f;
    v[i++] = (float)step_max;
    v[i++] = m_n ? (float)cyc_min : 0.0f;
    v[i++] = m_n ? (float)cyc_sum / (float)m_n : 0.0f;
    v[i++] = (float)cyc_max;
    v[i++] = lat_pct(total, 50u, 100u);
    v[i++] = lat_pct(total, 99u, 100u);
    v[i++] = (float)lat_max / (float)(BOARD_TICK_HZ / 1000000u);
    v[i++] = (float)BOARD_TICK_HZ;
    send(ELQ_STATUS, v, (uint8_t)i, 0);
}

static void handle(const elq_packet *p, uint64_t t_ready)
{
    if (p->type == ELQ_HELLO) {
        on_hello(p);
    } else if (p->type == ELQ_SENSOR) {
        if (track_seq(p->seq)) {
            on_sample(p, t_ready);
        }
    } else if (p->type == ELQ_STATUS) {
        send_debug();
    }
}

static void count_error(int rc)
{
    switch (rc) {
    case ELQ_ERR_CRC: count[C_CRC]++; break;
    case ELQ_ERR_COBS: count[C_COBS]++; break;
    case ELQ_ERR_VERSION: count[C_VERSION]++; break;
    case ELQ_ERR_FLAGS: count[C_FLAGS]++; break;
    case ELQ_ERR_TYPE: count[C_TYPE]++; break;
    default: count[C_LENGTH]++; break;
    }
}

int main(void)
{
    uint64_t now;
    board_init();
    elq_rx_init(&rx);
    APP_POLICY_RESET(state);
    sup.mode = MODE_SAFE;
    sup.reason = R_STARTING;
    sup.prev_mode = MODE_SAFE;
    sup.hello_ok = 1;
    now = board_now();
    last_cmd = now;
    /* as the node does on opening its port: HELLO, fail-safe command, STATUS SAFE */
    send_hello();
    sup.last_valid = now;
    sup.last_status = now;
    act(mk(MODE_SAFE, R_STARTING, SEND_FAILSAFE, 0, 1, 0, 0), 0, 1, now);
    for (;;) {
        int c;
        decision d;
        while ((c = board_getc()) >= 0) {
            int rc, overflow = 0;
            if (c == 0) {
                t_frame = board_now(); /* the frame is complete: the cycle starts */
                overflow = rx.overflow;
            }
            rc = elq_rx_push(&rx, (uint8_t)c, &in);
            if (rc == 0) {
                continue;
            }
            count[C_FRAMES] += (uint32_t)!overflow;
            if (rc < 0) {
                count_error(rc);
                continue;
            }
            handle(&in, t_frame);
        }
        now = board_now();
        d = on_tick(now);
        if (d.status || d.send) {
            act(d, 0, 0, now);
        }
        board_idle();
    }
}
""")


def _f(v: float) -> str:
    """A float32 literal; +-INFINITY for the config's unbounded clips and rates."""
    if math.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    from ..cgen import c_float

    return c_float(v)


def _arr(ctype: str, name: str, values) -> str:
    vals = [_f(v) if ctype == "float" else str(int(v)) for v in values]
    return f"static const {ctype} {name}[{len(vals)}] = {{{', '.join(vals)}}};\n"


def config_header(cfg, name: str, state_size: int, banner: str) -> str:
    """``app_config.h``: the node config's loop, fail-safe and channel settings, compiled in."""
    ins, outs = cfg.inputs, cfg.outputs
    ticks = lambda seconds: max(1, round(seconds * TICK_HZ))  # noqa: E731
    lines = [
        banner,
        "#ifndef EDGELIQUID_APP_CONFIG_H",
        "#define EDGELIQUID_APP_CONFIG_H",
        f'#include "{name}.h"',
        "#include <math.h>",
        "#include <stdint.h>",
        f"/* from {cfg.source} */",
        f"#define APP_N_IN {len(ins)}",
        f"#define APP_N_OUT {len(outs)}",
        f"#define APP_STATE_SIZE {state_size}",
        f"#define APP_POLICY_STEP {name}_step",
        f"#define APP_POLICY_RESET {name}_reset",
        f"#define APP_RATE_HZ {_f(cfg.rate_hz)}",
        f"#define APP_PERIOD_TICKS {ticks(1.0 / cfg.rate_hz)}u /* loop.rate_hz */",
        f"#define APP_TIMEOUT_TICKS {ticks(cfg.sensor_timeout_ms / 1000.0)}u /* sensor_timeout_ms */",
        f"#define APP_STATUS_EVERY_TICKS {TICK_HZ}u /* STATUS repeat while not RUN: 1 s */",
        f"#define APP_HOLD_CYCLES {cfg.hold_cycles}u",
        f"#define APP_ARM_AFTER {cfg.arm_after}u",
        f"#define APP_RESET_ON_RECOVERY {1 if cfg.on_recovery == 'reset_state' else 0}",
        f"#define APP_NOMINAL_ELAPSED {_f(cfg.nominal_elapsed)} /* (1 / rate_hz) / model_dt */",
        f"#define APP_US_PER_MODEL_UNIT {_f(cfg.model_dt * 1e6)} /* loop.model_dt in us */",
        "/* model input x = (clip(raw) - offset) * scale; raw outside range: invalid sample */",
        _arr("float", "in_lo", [c.clip[0] for c in ins]),
        _arr("float", "in_hi", [c.clip[1] for c in ins]),
        _arr("float", "in_offset", [c.offset for c in ins]),
        _arr("float", "in_scale", [c.scale for c in ins]),
        _arr("uint8_t", "in_has_range", [c.range is not None for c in ins]),
        _arr("float", "in_range_lo", [c.range[0] if c.range else 0.0 for c in ins]),
        _arr("float", "in_range_hi", [c.range[1] if c.range else 0.0 for c in ins]),
        "/* command = clip(y * scale + offset), then at most max_rate units/s from the previous */",
        _arr("float", "out_scale", [c.scale for c in outs]),
        _arr("float", "out_offset", [c.offset for c in outs]),
        _arr("float", "out_lo", [c.clip[0] for c in outs]),
        _arr("float", "out_hi", [c.clip[1] for c in outs]),
        _arr("float", "out_rate", [c.max_rate for c in outs]),
        _arr("float", "out_failsafe", [c.failsafe for c in outs]),
        "#endif",
        "",
    ]
    return "\n".join(lines)


def app_source(banner: str) -> str:
    """``app.c``, the controller main loop."""
    return banner + APP_C.substitute(
        lat_buckets=LAT_BUCKETS, lat_bucket_us=LAT_BUCKET_US, n_debug=len(DEBUG_FIELDS)
    )
