"""The node's fail-safe state machine (edgeliquid/supervisor.py): every transition as a table row,
scenario tests for the rules that span several events, and a hypothesis test over random
event sequences with random clocks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeliquid.errors import ConfigError
from edgeliquid.node.config import parse_config
from edgeliquid.node.protocol import MODE_HOLD, MODE_RUN, MODE_SAFE
from edgeliquid.node.supervisor import (
    MODE_NAMES,
    MODES,
    R_BAD_SENSOR,
    R_HELLO_MISMATCH,
    R_NONE,
    R_POLICY,
    R_RECONNECT,
    R_SHUTDOWN,
    R_STARTING,
    R_TIMEOUT,
    REASONS,
    SEND_FAILSAFE,
    SEND_HOLD,
    SEND_NAMES,
    SEND_NONE,
    SEND_POLICY,
    Decision,
    Supervisor,
    decision,
)

MS = 1_000_000
PERIOD = 10 * MS
TIMEOUT = 25 * MS  # not a multiple of the period: the cycle count floors
CFG = dict(arm_after=3, hold_cycles=2, timeout_ns=TIMEOUT, period_ns=PERIOD)
T0 = 7_000_000_000_000

REASON_KEYS = {
    "none": R_NONE,
    "starting": R_STARTING,
    "timeout": R_TIMEOUT,
    "bad_sensor": R_BAD_SENSOR,
    "policy": R_POLICY,
    "mismatch": R_HELLO_MISMATCH,
    "shutdown": R_SHUTDOWN,
    "reconnect": R_RECONNECT,
}
MODE_KEYS = {v: k for k, v in MODE_NAMES.items()}
SEND_KEYS = {name: i for i, name in enumerate(SEND_NAMES)}
FLAGS = ("reset", "status", "changed", "fault")


class Rig:
    """A supervisor and a clock; frame events happen one period apart."""

    def __init__(self, **kw):
        self.sup = Supervisor(**{**CFG, **kw})
        self.t = T0

    def at(self, t: int) -> int:
        self.t = max(self.t, t)  # the clock never goes back in the table
        return self.t

    def do(self, event: str) -> Decision:
        s = self.sup
        tick_at = {
            "tick:in": s.last_valid_ns + TIMEOUT,  # at the timeout: not yet
            "tick:t1": s.last_valid_ns + TIMEOUT + 1,  # first HOLD cycle
            "tick:t2": s.last_valid_ns + TIMEOUT + PERIOD + 1,  # second HOLD cycle
            "tick:far": s.last_valid_ns + TIMEOUT + s.hold_cycles * PERIOD,  # one past hold_cycles
            "tick:1s": s.last_status_ns + 1_000_000_001,  # the STATUS repeat is due
        }
        if event in tick_at:
            return s.on_tick(self.at(tick_at[event]))
        now = self.at(self.t + PERIOD)
        return {
            "valid": s.on_valid_sample,
            "invalid": s.on_invalid_sample,
            "hello_ok": s.on_hello_ok,
            "hello_bad": s.on_hello_mismatch,
            "nan": s.on_policy_nonfinite,
            "lost": s.on_port_lost,
            "open": s.on_port_connected,
            "reload": s.on_reload_done,
            "reload_failed": s.on_reload_failed,
            "stop": s.on_stop,
        }[event](now)

    def run(self, events: str) -> Decision | None:
        d = None
        for e in events.split():
            d = self.do(e)
        return d


# Starting states: (events from a fresh supervisor, expected mode/reason afterwards).
STATES = {
    "fresh": ("", "SAFE/starting"),  # never connected
    "safe0": ("open", "SAFE/starting"),
    "arming": ("open valid valid", "SAFE/starting"),
    "run": ("open valid valid valid", "RUN/none"),
    "hold1": ("open valid valid valid invalid", "HOLD/bad_sensor"),
    "hold2": ("open valid valid valid invalid invalid", "HOLD/bad_sensor"),
    "holdT": ("open valid valid valid tick:t1", "HOLD/timeout"),
    "safe_to": ("open valid valid valid tick:far", "SAFE/timeout"),
    "safe_bad": ("open valid valid valid invalid invalid invalid", "SAFE/bad_sensor"),
    "safe_pol": ("open valid valid valid nan", "SAFE/policy"),
    "mismatch": ("open hello_bad", "SAFE/mismatch"),
    "lost": ("open valid valid valid lost", "SAFE/reconnect"),
    "stopped": ("open valid valid valid stop", "SAFE/shutdown"),
}

# (state, event, expected decision "MODE/reason send flags...").
SAFE_LIKE = {  # the rows shared by the connected SAFE states; {r} is the state's reason
    # One valid sample never arms, also in safe_to/safe_pol/safe_bad: the count restarts on
    # entering SAFE (node.py before the supervisor kept the old count and re-armed here).
    "valid": "SAFE/{r} none",
    "invalid": "SAFE/{r} none",
    "tick:in": "SAFE/{r} none",
    "tick:t1": "SAFE/{r} none",
    "tick:t2": "SAFE/{r} none",
    "tick:far": "SAFE/{r} none",
    "tick:1s": "SAFE/{r} failsafe status",
    "hello_ok": "SAFE/{r} none",
    "hello_bad": "SAFE/mismatch failsafe status changed",
    "nan": "SAFE/policy failsafe reset status changed",
    "lost": "SAFE/reconnect failsafe status changed",
    "open": "SAFE/{r} failsafe status",
    "reload": "SAFE/{r} none reset",
    "reload_failed": "SAFE/{r} none",
    "stop": "SAFE/shutdown failsafe status changed",
}
LEAVE_RUN_OR_HOLD = {  # the rows shared by RUN and HOLD: every way to SAFE is a fault
    "tick:far": "SAFE/timeout failsafe status changed fault",
    "tick:1s": "SAFE/timeout failsafe status changed fault",
    "hello_bad": "SAFE/mismatch failsafe status changed fault",
    "nan": "SAFE/policy failsafe reset status changed fault",
    "lost": "SAFE/reconnect failsafe status changed fault",
    "open": "SAFE/reconnect failsafe status changed fault",  # reopened without a reported loss
    "stop": "SAFE/shutdown failsafe status changed",  # orderly: not a fault
}


def _hold_rows(reason: str, rows: dict[str, str]) -> dict[str, str]:
    return {
        "valid": "RUN/none policy status changed",  # back to RUN at once, no reset
        "hello_ok": f"HOLD/{reason} none",
        "reload": f"HOLD/{reason} none reset",
        "reload_failed": f"HOLD/{reason} none",
        **LEAVE_RUN_OR_HOLD,
        **rows,
    }


ROWS: dict[str, dict[str, str]] = {
    "fresh": {
        **{e: "SAFE/starting none" for e in SAFE_LIKE},  # no port: frames and timers do nothing
        "nan": "SAFE/policy failsafe reset status changed",
        "lost": "SAFE/reconnect failsafe status changed",
        "open": "SAFE/starting failsafe status",
        "reload": "SAFE/starting none reset",
        "stop": "SAFE/shutdown failsafe status changed",
    },
    "safe0": {e: v.format(r="starting") for e, v in SAFE_LIKE.items()},
    "arming": {
        **{e: v.format(r="starting") for e, v in SAFE_LIKE.items()},
        "valid": "RUN/none policy reset status changed",  # the arm_after-th valid sample
    },
    "run": {
        "valid": "RUN/none policy",
        "invalid": "HOLD/bad_sensor hold status changed",
        "tick:in": "RUN/none none",
        "tick:t1": "HOLD/timeout hold status changed",
        "tick:t2": "HOLD/timeout hold status changed",
        "hello_ok": "RUN/none none",
        "reload": "RUN/none none reset",
        "reload_failed": "RUN/none none",
        **LEAVE_RUN_OR_HOLD,
    },
    "hold1": _hold_rows(
        "bad_sensor",
        {
            "invalid": "HOLD/bad_sensor hold",  # second HOLD cycle
            "tick:in": "HOLD/bad_sensor none",
            "tick:t1": "HOLD/bad_sensor none",  # one timeout cycle: already counted by the bad sample
            "tick:t2": "HOLD/bad_sensor hold",  # a second cycle without good inputs
        },
    ),
    "hold2": _hold_rows(
        "bad_sensor",
        {
            "invalid": "SAFE/bad_sensor failsafe status changed fault",  # hold_cycles + 1
            "tick:in": "HOLD/bad_sensor none",
            "tick:t1": "HOLD/bad_sensor none",
            "tick:t2": "HOLD/bad_sensor none",
        },
    ),
    "holdT": _hold_rows(
        "timeout",
        {
            "invalid": "HOLD/timeout hold",
            "tick:in": "HOLD/timeout none",  # same instant as the tick that entered HOLD
            "tick:t1": "HOLD/timeout none",
            "tick:t2": "HOLD/timeout hold",
        },
    ),
    "safe_to": {e: v.format(r="timeout") for e, v in SAFE_LIKE.items()},
    "safe_bad": {e: v.format(r="bad_sensor") for e, v in SAFE_LIKE.items()},
    "safe_pol": {
        **{e: v.format(r="policy") for e, v in SAFE_LIKE.items()},
        "nan": "SAFE/policy failsafe reset",  # no change of mode or reason: no STATUS
    },
    "mismatch": {
        **{e: v.format(r="mismatch") for e, v in SAFE_LIKE.items()},
        "hello_bad": "SAFE/mismatch none status",  # STATUS again, fail-safe already in force
    },
    "lost": {
        **{e: "SAFE/reconnect none" for e in SAFE_LIKE},  # no port: frames and timers do nothing
        "nan": "SAFE/policy failsafe reset status changed",
        "open": "SAFE/reconnect failsafe status",
        "reload": "SAFE/reconnect none reset",
        "stop": "SAFE/shutdown failsafe status changed",
    },
    "stopped": {
        **{e: "SAFE/shutdown none" for e in SAFE_LIKE},  # latched
        "tick:1s": "SAFE/shutdown failsafe status",
        "nan": "SAFE/shutdown failsafe reset",
        "open": "SAFE/shutdown failsafe status",
        "reload": "SAFE/shutdown none reset",
        "stop": "SAFE/shutdown failsafe status",  # again: fail-safe again, no new transition
    },
}
EVENTS = tuple(SAFE_LIKE)


def parse(expect: str) -> Decision:
    head, send, *flags = expect.split()
    mode, reason = head.split("/")
    assert set(flags) <= set(FLAGS), flags
    return Decision(MODE_KEYS[mode], REASON_KEYS[reason], SEND_KEYS[send], *(f in flags for f in FLAGS))


def show(d: Decision) -> str:
    flags = [f for f in FLAGS if getattr(d, f)]
    reason = {v: k for k, v in REASON_KEYS.items()}[d.reason]
    return " ".join([f"{MODE_NAMES[d.mode]}/{reason}", SEND_NAMES[d.send], *flags])


def test_table_is_exhaustive():
    assert set(ROWS) == set(STATES)
    for state, rows in ROWS.items():
        assert set(rows) == set(EVENTS), (state, set(EVENTS) ^ set(rows))


@pytest.mark.parametrize("state", sorted(STATES))
def test_starting_states(state):
    rig = Rig()
    rig.run(STATES[state][0])
    assert show(decision(rig.sup.mode, rig.sup.reason, SEND_NONE)) == STATES[state][1] + " none"


@pytest.mark.parametrize(
    "state,event", [(s, e) for s in sorted(STATES) for e in EVENTS], ids=lambda v: str(v)
)
def test_transition_table(state, event):
    rig = Rig()
    rig.run(STATES[state][0])
    before = rig.sup.mode
    d = rig.do(event)
    assert show(d) == show(parse(ROWS[state][event]))
    assert d == parse(ROWS[state][event])
    assert (rig.sup.mode, rig.sup.reason) == (d.mode, d.reason)
    if d.changed:
        assert rig.sup.prev_mode == before


# ------------------------------------------------------------------ rules over several events


def test_arming_needs_arm_after_consecutive_valid_samples():
    rig = Rig(arm_after=4)
    assert rig.run("open valid valid valid").mode == MODE_SAFE
    assert rig.run("invalid valid valid valid").mode == MODE_SAFE  # the count restarts
    d = rig.do("valid")
    assert d.mode == MODE_RUN and d.send == SEND_POLICY and d.reset


def test_arm_after_one_arms_on_the_first_valid_sample():
    rig = Rig(arm_after=1)
    assert rig.run("open valid") == decision(MODE_RUN, R_NONE, SEND_POLICY, True, True, True)


@pytest.mark.parametrize("via", ["tick:far", "nan", "invalid invalid invalid"])
def test_safe_entered_from_run_rearms_only_after_arm_after_new_samples(via):
    # The arming count restarts on entering SAFE: the samples that armed the node the
    # first time do not count again (a single good frame after a stall must not re-arm).
    rig = Rig()
    rig.run("open valid valid valid")
    assert rig.run(via).mode == MODE_SAFE
    assert rig.run("valid valid").mode == MODE_SAFE
    assert rig.do("valid").mode == MODE_RUN


def test_any_hello_restarts_the_arming_count():
    rig = Rig()
    rig.run("open valid valid hello_ok")
    assert rig.run("valid valid").mode == MODE_SAFE
    assert rig.do("valid").mode == MODE_RUN


def test_hello_mismatch_refuses_to_arm_until_a_matching_hello():
    rig = Rig()
    rig.run("open hello_bad")
    assert rig.run(" ".join(["valid"] * 20)).mode == MODE_SAFE
    assert not rig.sup.hello_ok
    rig.run("hello_ok valid valid")
    assert rig.sup.mode == MODE_SAFE
    assert rig.do("valid").mode == MODE_RUN


def test_hello_state_survives_a_reconnect():
    # A device that reported the wrong sizes must HELLO again before the node arms.
    rig = Rig()
    rig.run("open hello_bad lost open valid valid valid valid")
    assert rig.sup.mode == MODE_SAFE and not rig.sup.hello_ok
    rig.run("hello_ok valid valid")
    assert rig.do("valid").mode == MODE_RUN


def test_keep_state_on_recovery_does_not_reset():
    rig = Rig(reset_on_recovery=False)
    d = rig.run("open valid valid valid")
    assert d.mode == MODE_RUN and not d.reset
    assert rig.run("nan").reset  # a policy error resets all the same
    assert not rig.run("valid valid valid").reset


def test_hold_to_run_keeps_the_state():
    rig = Rig()
    rig.run("open valid valid valid invalid")
    d = rig.do("valid")
    assert d.mode == MODE_RUN and d.send == SEND_POLICY and not d.reset


def test_hold_cycles_zero_goes_straight_to_safe():
    for last in ("invalid", "tick:t1"):
        rig = Rig(hold_cycles=0)
        d = rig.run("open valid valid valid " + last)
        assert d == decision(
            MODE_SAFE,
            R_BAD_SENSOR if last == "invalid" else R_TIMEOUT,
            SEND_FAILSAFE,
            False,
            True,
            True,
            True,
        )


def test_hold_lasts_hold_cycles_bad_samples():
    rig = Rig(hold_cycles=5)
    rig.run("open valid valid valid")
    sends = [rig.do("invalid") for _ in range(6)]
    assert [d.send for d in sends] == [SEND_HOLD] * 5 + [SEND_FAILSAFE]
    assert [d.mode for d in sends] == [MODE_HOLD] * 5 + [MODE_SAFE]


def test_timeout_hold_counts_cycles_from_the_clock():
    # A late or rare timer must not stretch HOLD: the cycle count comes from the clock.
    rig = Rig(hold_cycles=4)
    rig.run("open valid valid valid")
    last = rig.sup.last_valid_ns
    assert rig.sup.on_tick(last + TIMEOUT + 1).send == SEND_HOLD  # cycle 1
    assert rig.sup.on_tick(last + TIMEOUT + 2).send == SEND_NONE  # same cycle
    assert rig.sup.on_tick(last + TIMEOUT + 2 * PERIOD + 1).send == SEND_HOLD  # cycle 3
    assert rig.sup.bad_streak == 3
    d = rig.sup.on_tick(last + TIMEOUT + 4 * PERIOD)  # cycle 5 > hold_cycles
    assert d == decision(MODE_SAFE, R_TIMEOUT, SEND_FAILSAFE, False, True, True, True)


def test_run_goes_straight_to_safe_after_a_long_stall():
    rig = Rig()
    rig.run("open valid valid valid")
    d = rig.sup.on_tick(rig.sup.last_valid_ns + 10 * TIMEOUT)
    assert d == decision(MODE_SAFE, R_TIMEOUT, SEND_FAILSAFE, False, True, True, True)


def test_status_repeats_every_second_while_not_run():
    sec = 1_000_000_000
    sup = Supervisor(**{**CFG, "timeout_ns": 5 * sec, "hold_cycles": 10})
    t = T0
    sup.on_port_connected(t)
    assert sup.on_tick(t + sec) == decision(MODE_SAFE, R_STARTING, SEND_NONE)  # not more than 1 s yet
    assert sup.on_tick(t + sec + 1) == decision(MODE_SAFE, R_STARTING, SEND_FAILSAFE, status=True)
    assert sup.on_tick(t + sec + sec // 2) == decision(MODE_SAFE, R_STARTING, SEND_NONE)
    # HOLD: STATUS alone, or with the HOLD command when a timeout cycle is due at the same tick.
    t += 2 * sec
    for i in range(3):
        sup.on_valid_sample(t + i * PERIOD)
    assert sup.on_invalid_sample(t + 3 * PERIOD).mode == MODE_HOLD
    assert sup.on_tick(t + 3 * PERIOD + sec + 1) == decision(MODE_HOLD, R_BAD_SENSOR, SEND_NONE, status=True)
    due = t + 2 * PERIOD + 5 * sec + PERIOD + 1  # the second timeout cycle, > 1 s after that STATUS
    assert sup.on_tick(due) == decision(MODE_HOLD, R_BAD_SENSOR, SEND_HOLD, status=True)
    # RUN: never.
    assert sup.on_valid_sample(due + 1).mode == MODE_RUN
    assert sup.on_tick(due + 3 * sec) == decision(MODE_RUN, R_NONE, SEND_NONE)


def test_stop_from_every_mode_ends_in_safe_with_the_failsafe():
    for pre in ("", "open", "open valid valid valid", "open valid valid valid invalid", "open hello_bad"):
        rig = Rig()
        rig.run(pre)
        before = rig.sup.mode
        d = rig.do("stop")
        assert d == decision(MODE_SAFE, R_SHUTDOWN, SEND_FAILSAFE, False, True, True, False)
        assert rig.sup.prev_mode == before and rig.sup.stopped
        rig.run("valid valid valid valid hello_ok valid valid valid open valid valid valid")
        assert (rig.sup.mode, rig.sup.reason) == (MODE_SAFE, R_SHUTDOWN)


def test_hot_path_decisions_are_shared_and_immutable():
    rig = Rig()
    rig.run("open valid valid valid")
    t = rig.t
    a, b = rig.sup.on_valid_sample(t + 1), rig.sup.on_valid_sample(t + 2)
    assert a is b and rig.sup.on_tick(t + 3) is rig.sup.on_tick(t + 4)
    with pytest.raises(AttributeError):
        a.mode = MODE_SAFE
    with pytest.raises(AttributeError):
        rig.sup.extra = 1  # __slots__: no per-instance dict


@pytest.mark.parametrize(
    "kw,key",
    [
        ({"arm_after": 0}, "arm_after"),
        ({"hold_cycles": -1}, "hold_cycles"),
        ({"timeout_ns": 0}, "timeout_ns"),
        ({"period_ns": 2.5}, "period_ns"),
        ({"status_every_ns": True}, "status_every_ns"),
    ],
)
def test_bad_parameters_are_rejected_naming_the_key(kw, key):
    with pytest.raises(ConfigError, match=rf"^Supervisor: {key}: expected an integer >= \d, got "):
        Supervisor(**{**CFG, **kw})


def test_from_config_maps_the_failsafe_section():
    cfg = parse_config(
        {
            "model": "m.onnx",
            "serial": {"port": "loop://"},
            "loop": {"rate_hz": 250},
            "failsafe": {
                "sensor_timeout_ms": 40,
                "hold_cycles": 5,
                "arm_after": 7,
                "on_recovery": "keep_state",
            },
            "inputs": [{"name": "x"}],
            "outputs": [{"name": "u"}],
        },
        "robot.yaml",
    )
    sup = Supervisor.from_config(cfg)
    assert (sup.arm_after, sup.hold_cycles, sup.timeout_ns, sup.period_ns, sup.reset_on_recovery) == (
        7,
        5,
        40 * MS,
        4 * MS,
        False,
    )


# ------------------------------------------------------------------ random event sequences

# Weighted so that sequences spend time in RUN and HOLD: a stop latches SAFE, so it is rare.
ALL_EVENTS = (
    ["valid"] * 14
    + ["invalid"] * 5
    + ["tick"] * 12
    + ["hello_ok", "hello_bad", "nan", "lost", "open", "reload", "reload_failed", "stop"]
)


class Spec:
    """The documented rules, tracked independently of the supervisor, checked after each event."""

    def __init__(self, sup: Supervisor):
        self.sup = sup
        self.connected = self.stopped = False
        self.hello_ok = True
        self.streak = 0  # consecutive valid samples since SAFE was entered, or the last reset
        self.bad_run = 0  # invalid samples since the last valid one
        self.hold_sends = 0  # HOLD commands in the current HOLD episode
        self.last_valid: int | None = None
        self.applied: int | None = None  # the command kind the device applies now
        self.last_status: int | None = None  # when STATUS was last due

    def check(self, event: str, now: int, d: Decision, mode0: int, reason0: int) -> None:
        s, sup = self, self.sup
        where = f"{event} at {now}: {mode0}/{reason0} -> {d}"
        # Always a defined decision, consistent with the supervisor's state.
        assert d.mode in MODES and 0 <= d.reason < len(REASONS) and 0 <= d.send < len(SEND_NAMES), where
        assert (sup.mode, sup.reason) == (d.mode, d.reason), where
        assert d.changed == ((mode0, reason0) != (d.mode, d.reason)), where
        assert not d.changed or d.status, where
        assert d.fault == (
            d.changed and d.mode == MODE_SAFE and mode0 != MODE_SAFE and d.reason != R_SHUTDOWN
        )
        if d.mode == MODE_SAFE and mode0 != MODE_SAFE:  # every entry into SAFE commands the fail-safe
            assert d.send == SEND_FAILSAFE and d.status, where
        if d.send in (SEND_POLICY, SEND_HOLD):
            assert d.mode == (MODE_RUN if d.send == SEND_POLICY else MODE_HOLD), where

        # The spec's own bookkeeping of the event.
        live = s.connected and not s.stopped
        if event == "open":
            s.connected, s.streak, s.applied = True, 0, None
        elif event == "lost":
            s.connected = False
        elif event == "stop":
            s.stopped = True
        elif event in ("hello_ok", "hello_bad") and live:
            s.hello_ok, s.streak = event == "hello_ok", 0
        elif event == "invalid":
            s.streak, s.bad_run = 0, s.bad_run + 1
        elif event == "valid":
            s.bad_run = 0
            s.last_valid = now
            if live and mode0 == MODE_SAFE:
                s.streak += 1
        if d.mode == MODE_SAFE and mode0 != MODE_SAFE:
            s.streak = 0

        # SAFE is left only on a valid sample, after arm_after of them, with HELLO ok.
        if mode0 == MODE_SAFE and d.mode != MODE_SAFE:
            assert event == "valid" and live and s.hello_ok, where
            assert s.streak >= sup.arm_after, where
            assert d.mode == MODE_RUN and d.send == SEND_POLICY, where
            assert d.reset == sup.reset_on_recovery, where
            s.streak = 0
        # A cycle with a sample in RUN/HOLD always ends with a command.
        if event in ("valid", "invalid") and mode0 != MODE_SAFE:
            assert d.send != SEND_NONE, where
            if event == "valid":
                assert d.mode == MODE_RUN and d.send == SEND_POLICY and not d.reset, where
        # HOLD is bounded, in samples and in time.
        if d.mode == MODE_HOLD:
            s.hold_sends += d.send == SEND_HOLD
            assert 1 <= s.hold_sends <= sup.hold_cycles, where
            assert s.bad_run <= sup.hold_cycles, where
        else:
            s.hold_sends = 0
        if event == "tick" and d.mode != MODE_SAFE and s.last_valid is not None:
            since = now - s.last_valid
            assert since <= sup.timeout_ns or since < sup.timeout_ns + sup.hold_cycles * sup.period_ns, where
            if d.mode == MODE_RUN:
                assert since <= sup.timeout_ns and d.send == SEND_NONE, where
        # A non-finite policy output is never sent: fail-safe and a reset, always.
        if event == "nan":
            assert d.send == SEND_FAILSAFE and d.reset and d.mode == MODE_SAFE, where
        # STATUS at least every status_every_ns while connected and not RUN.
        if event == "tick" and s.connected and d.mode != MODE_RUN and s.last_status is not None:
            if now - s.last_status > sup.status_every_ns:
                assert d.status, where
        if d.status or event == "open":
            s.last_status = now
        # Stop is final.
        if event == "stop":
            assert d.mode == MODE_SAFE and d.reason == R_SHUTDOWN and d.send == SEND_FAILSAFE and d.status
        if s.stopped:
            assert (d.mode, d.reason) == (MODE_SAFE, R_SHUTDOWN), where
            assert d.send in (SEND_NONE, SEND_FAILSAFE) and not d.fault, where
        if not s.connected:
            assert d.mode == MODE_SAFE and d.send not in (SEND_POLICY, SEND_HOLD), where
        # What the device applies matches the mode: the fail-safe in SAFE, the policy otherwise.
        if d.send != SEND_NONE:
            s.applied = SEND_FAILSAFE if d.send == SEND_FAILSAFE else SEND_POLICY
        if s.connected and event != "lost":
            want = SEND_FAILSAFE if d.mode == MODE_SAFE else SEND_POLICY
            assert s.applied == want, where


def handlers(sup: Supervisor) -> dict:
    return {
        "valid": sup.on_valid_sample,
        "invalid": sup.on_invalid_sample,
        "tick": sup.on_tick,
        "hello_ok": sup.on_hello_ok,
        "hello_bad": sup.on_hello_mismatch,
        "nan": sup.on_policy_nonfinite,
        "lost": sup.on_port_lost,
        "open": sup.on_port_connected,
        "reload": sup.on_reload_done,
        "reload_failed": sup.on_reload_failed,
        "stop": sup.on_stop,
    }


clock_steps = st.one_of(
    *[st.integers(0, 10 * MS)] * 6,  # frames and ticks within a cycle (weighted)
    *[st.integers(0, 300 * MS)] * 2,  # around the timeout and the HOLD cycles
    st.integers(0, 3_000_000_000),  # long stalls, STATUS repeats
    st.just(0),  # same instant
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arm_after=st.integers(1, 5),
    hold_cycles=st.integers(0, 5),
    period_ns=st.integers(1, 50 * MS),
    timeout_ns=st.integers(1, 200 * MS),
    reset=st.booleans(),
    t0=st.integers(0, 1 << 62),
    # Bursts: (event, how many times in a row, clock step before each).
    steps=st.lists(st.tuples(st.sampled_from(ALL_EVENTS), st.integers(1, 6), clock_steps), max_size=60),
)
def test_random_event_sequences_keep_the_rules(
    arm_after, hold_cycles, period_ns, timeout_ns, reset, t0, steps
):
    sup = Supervisor(arm_after, hold_cycles, timeout_ns, period_ns, reset)
    spec = Spec(sup)
    call = handlers(sup)
    now = t0
    for event, n, dt in [("open", 1, 0)] + steps + [("stop", 1, 1)]:
        for _ in range(n):
            now += dt
            mode0, reason0 = sup.mode, sup.reason
            d = call[event](now)
            spec.check(event, now, d, mode0, reason0)
    assert (sup.mode, sup.reason) == (MODE_SAFE, R_SHUTDOWN)


@settings(max_examples=200, deadline=None)
@given(
    times=st.lists(st.integers(-(1 << 62), 1 << 62), min_size=1, max_size=100),
    events=st.lists(st.sampled_from(sorted(set(ALL_EVENTS))), min_size=1, max_size=100),
)
def test_any_clock_at_all_gives_defined_decisions(times, events):
    # A clock that jumps backwards or wildly (it should not, but the supervisor must not care).
    sup = Supervisor(**CFG)
    call = handlers(sup)
    sup.on_port_connected(times[0])
    for i, event in enumerate(events):
        now = times[i % len(times)]
        d = call[event](now)
        assert d.mode in MODES and (d.mode, d.reason) == (sup.mode, sup.reason)
        if d.mode == MODE_SAFE and d.changed:
            assert d.send == SEND_FAILSAFE
    d = sup.on_stop(times[-1])
    assert (d.mode, d.send) == (MODE_SAFE, SEND_FAILSAFE)
