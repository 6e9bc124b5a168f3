"""The node's fail-safe decisions as a pure state machine: events in, a :class:`Decision` out.

No I/O, no clock, no numpy: the loop reports each event with the monotonic time it read
(``now_ns``) and does what the returned decision says (send a command, reset the policy
state, send STATUS, log the transition, count the fault). Rules (docs/protocol.md, "Node modes"):

* SAFE (at start) -> RUN after ``arm_after`` consecutive valid SENSOR samples, and only while
  the device's last HELLO matched the config. The count restarts on entering SAFE, on an invalid
  sample, on any HELLO and on opening the port. Leaving SAFE resets the policy state when
  ``reset_on_recovery`` (``failsafe.on_recovery: reset_state``).
* RUN -> HOLD on an invalid sample or a sensor timeout (``on_tick``, a timer: it fires with no
  frame at all). HOLD runs the policy on the last good inputs for at most ``hold_cycles`` cycles,
  then -> SAFE; a valid sample in HOLD returns to RUN at once (no re-arming, no reset).
* A non-finite policy output is never sent: fail-safe command, state reset, SAFE.
* A HELLO size mismatch -> SAFE and no arming until a matching HELLO.
* Port lost -> SAFE (fail-safe first if still writable); port opened -> fail-safe and STATUS.
* Stop -> SAFE with the fail-safe command, latched: nothing arms afterwards.
* STATUS on every change of mode or reason, and at least every ``status_every_ns`` while not
  RUN (with the fail-safe command repeated in SAFE).

Every decision is a shared, preallocated tuple: the per-cycle calls allocate nothing.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, NamedTuple

from ..errors import ConfigError
from .protocol import MODE_HOLD, MODE_RUN, MODE_SAFE

if TYPE_CHECKING:
    from .config import NodeConfig

MODES = (MODE_RUN, MODE_HOLD, MODE_SAFE)
MODE_NAMES = {MODE_RUN: "RUN", MODE_HOLD: "HOLD", MODE_SAFE: "SAFE"}
# STATUS reasons (the wire values, docs/protocol.md)
R_NONE, R_STARTING, R_TIMEOUT, R_BAD_SENSOR, R_POLICY, R_HELLO_MISMATCH, R_SHUTDOWN, R_RECONNECT = range(8)
REASONS = (
    "none",
    "starting",
    "sensor timeout",
    "bad sensor data",
    "policy output non-finite",
    "hello size mismatch",
    "shutdown",
    "reconnect",
)
# What to send this cycle.
SEND_NONE, SEND_POLICY, SEND_HOLD, SEND_FAILSAFE = range(4)
SEND_NAMES = ("none", "policy", "hold", "failsafe")


class Decision(NamedTuple):
    """What the loop does after one event (immutable; one shared instance per combination).

    Attributes:
        mode: MODE_RUN, MODE_HOLD or MODE_SAFE after the event.
        reason: one of the R_* STATUS reasons, after the event.
        send: SEND_NONE (nothing; in SAFE the fail-safe sent earlier stands), SEND_POLICY (step the
            policy on this sample's inputs, which become the last good ones, and send its
            command), SEND_HOLD (step the policy on the last good inputs with the nominal elapsed
            time, one period / model_dt), SEND_FAILSAFE (send the configured fail-safe command).
        reset: reset the policy state before anything else (recovery, policy error, new model).
        status: send STATUS ``[mode, reason]`` now.
        changed: mode or reason changed (log the transition; ``Supervisor.prev_mode`` holds
            the mode before it).
        fault: a transition to SAFE caused by a fault: counts in ``failsafe_events`` (an orderly
            shutdown does not).
    """

    mode: int
    reason: int
    send: int
    reset: bool = False
    status: bool = False
    changed: bool = False
    fault: bool = False


_B = (False, True)
_TABLE = {
    key: Decision(*key)
    for key in itertools.product(MODES, range(len(REASONS)), range(len(SEND_NAMES)), _B, _B, _B, _B)
}


def decision(
    mode: int,
    reason: int,
    send: int,
    reset: bool = False,
    status: bool = False,
    changed: bool = False,
    fault: bool = False,
) -> Decision:
    """The shared :class:`Decision` with these fields."""
    return _TABLE[(mode, reason, send, reset, status, changed, fault)]


class Supervisor:
    """The fail-safe state machine of one node; every ``on_*`` method returns a :class:`Decision`.

    Read-only state for the loop and its statistics: ``mode``, ``reason``, ``prev_mode``,
    ``hello_ok``, ``connected``, ``stopped``, ``valid_streak``, ``bad_streak``, ``last_valid_ns``.

    Args:
        arm_after: consecutive valid samples needed to leave SAFE (>= 1).
        hold_cycles: cycles HOLD may last before SAFE (>= 0; 0: no HOLD at all).
        timeout_ns: sensor timeout: time since the last valid sample before HOLD (> 0).
        period_ns: one control period (> 0); a timeout counts one HOLD cycle per period.
        reset_on_recovery: reset the policy state on leaving SAFE.
        status_every_ns: STATUS repeat interval while not RUN (> 0).
    """

    __slots__ = (
        "arm_after",
        "hold_cycles",
        "timeout_ns",
        "period_ns",
        "reset_on_recovery",
        "status_every_ns",
        "mode",
        "reason",
        "prev_mode",
        "hello_ok",
        "connected",
        "stopped",
        "valid_streak",
        "bad_streak",
        "last_valid_ns",
        "last_status_ns",
        "_idle",
        "_run_policy",
    )

    def __init__(
        self,
        arm_after: int = 3,
        hold_cycles: int = 3,
        timeout_ns: int = 100_000_000,
        period_ns: int = 10_000_000,
        reset_on_recovery: bool = True,
        status_every_ns: int = 1_000_000_000,
    ):
        for name, value, lo in (
            ("arm_after", arm_after, 1),
            ("hold_cycles", hold_cycles, 0),
            ("timeout_ns", timeout_ns, 1),
            ("period_ns", period_ns, 1),
            ("status_every_ns", status_every_ns, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise ConfigError(f"Supervisor: {name}: expected an integer >= {lo}, got {value!r}")
        self.arm_after, self.hold_cycles = arm_after, hold_cycles
        self.timeout_ns, self.period_ns = timeout_ns, period_ns
        self.reset_on_recovery = bool(reset_on_recovery)
        self.status_every_ns = status_every_ns
        self.mode, self.reason, self.prev_mode = MODE_SAFE, R_STARTING, MODE_SAFE
        self.hello_ok = True  # until a device says otherwise
        self.connected = self.stopped = False
        self.valid_streak = self.bad_streak = 0
        self.last_valid_ns = self.last_status_ns = 0
        self._idle = _TABLE[(MODE_SAFE, R_STARTING, SEND_NONE, False, False, False, False)]
        self._run_policy = _TABLE[(MODE_RUN, R_NONE, SEND_POLICY, False, False, False, False)]

    @classmethod
    def from_config(cls, cfg: NodeConfig) -> Supervisor:
        """The supervisor for a node config's ``failsafe:`` and ``loop.rate_hz`` settings."""
        return cls(
            arm_after=cfg.arm_after,
            hold_cycles=cfg.hold_cycles,
            timeout_ns=max(1, int(cfg.sensor_timeout_ms * 1e6)),
            period_ns=max(1, int(1e9 / cfg.rate_hz)),
            reset_on_recovery=cfg.on_recovery == "reset_state",
        )

    # ------------------------------------------------------------------ transitions
    def _go(self, mode: int, reason: int, send: int, reset: bool, now_ns: int) -> Decision:
        """Set mode and reason. A change sends STATUS, and entering SAFE sends the fail-safe and
        restarts the arming count; no change: just ``send`` and ``reset``."""
        old = self.mode
        if mode == old and reason == self.reason:
            return _TABLE[(mode, reason, send, reset, False, False, False)]
        fault = mode == MODE_SAFE and old != MODE_SAFE  # the orderly stop is on_stop's, not here
        if mode == MODE_SAFE:
            send = SEND_FAILSAFE
            self.valid_streak = 0  # SAFE is left only after arm_after valid samples *in* SAFE
        self.prev_mode, self.mode, self.reason = old, mode, reason
        self.last_status_ns = now_ns
        self._idle = _TABLE[(mode, reason, SEND_NONE, False, False, False, False)]
        return _TABLE[(mode, reason, send, reset, True, True, fault)]

    def _degrade(self, reason: int, now_ns: int) -> Decision:
        """Missing or bad inputs in RUN/HOLD: HOLD on the last good inputs while ``bad_streak``
        <= ``hold_cycles``, then SAFE."""
        if self.bad_streak <= self.hold_cycles:
            if self.mode != MODE_HOLD:
                return self._go(MODE_HOLD, reason, SEND_HOLD, False, now_ns)
            return _TABLE[(MODE_HOLD, self.reason, SEND_HOLD, False, False, False, False)]
        return self._go(MODE_SAFE, reason, SEND_FAILSAFE, False, now_ns)

    # ------------------------------------------------------------------ events
    def on_valid_sample(self, now_ns: int) -> Decision:
        """A SENSOR sample of the right size, finite and in range (a control cycle)."""
        self.bad_streak = 0
        self.last_valid_ns = now_ns
        mode = self.mode
        if mode == MODE_RUN:  # the hot path: no allocation, no lookup
            return self._run_policy
        if mode == MODE_HOLD:
            return self._go(MODE_RUN, R_NONE, SEND_POLICY, False, now_ns)
        if self.stopped or not self.connected:
            return self._idle
        self.valid_streak += 1
        if not self.hello_ok or self.valid_streak < self.arm_after:
            return self._idle
        return self._go(MODE_RUN, R_NONE, SEND_POLICY, self.reset_on_recovery, now_ns)

    def on_invalid_sample(self, now_ns: int) -> Decision:
        """A SENSOR sample that cannot be used (wrong size, non-finite, out of range; in event
        mode also a frame dropped as non-finite): a control cycle without good inputs."""
        self.valid_streak = 0
        self.bad_streak += 1
        if self.mode == MODE_SAFE:
            return self._idle
        return self._degrade(R_BAD_SENSOR, now_ns)

    def on_tick(self, now_ns: int) -> Decision:
        """The timer: call it every loop iteration (with or without frames). Sensor timeout in
        RUN/HOLD, and the STATUS (and fail-safe) repeat while not RUN."""
        mode = self.mode
        since = now_ns - self.last_valid_ns
        if mode == MODE_RUN and since <= self.timeout_ns:  # the hot path
            return self._idle
        d = self._idle
        if mode != MODE_SAFE:
            if since > self.timeout_ns:
                # One HOLD cycle per period past the timeout, counted from the clock, so a
                # stall is bounded even when the loop wakes late or rarely.
                cycles = (since - self.timeout_ns) // self.period_ns + 1
                if cycles > self.hold_cycles:
                    return self._go(MODE_SAFE, R_TIMEOUT, SEND_FAILSAFE, False, now_ns)
                if cycles > self.bad_streak:
                    self.bad_streak = cycles
                    d = self._degrade(R_TIMEOUT, now_ns)
                    if d.status:
                        return d
        if self.connected and self.mode != MODE_RUN and now_ns - self.last_status_ns > self.status_every_ns:
            self.last_status_ns = now_ns
            send = SEND_FAILSAFE if self.mode == MODE_SAFE else d.send
            return _TABLE[(self.mode, self.reason, send, False, True, False, False)]
        return d

    def on_hello_ok(self, now_ns: int) -> Decision:
        """A device HELLO whose sizes match the config: arming allowed (the count restarts)."""
        if self.stopped or not self.connected:
            return self._idle
        self.valid_streak = 0
        self.hello_ok = True
        return self._idle

    def on_hello_mismatch(self, now_ns: int) -> Decision:
        """A device HELLO whose sizes differ from the config: SAFE, STATUS, no arming until a
        matching HELLO."""
        if self.stopped or not self.connected:
            return self._idle
        self.valid_streak = 0
        self.hello_ok = False
        d = self._go(MODE_SAFE, R_HELLO_MISMATCH, SEND_NONE, False, now_ns)
        if d.status:
            return d
        self.last_status_ns = now_ns  # STATUS again even when already SAFE for this reason
        return _TABLE[(MODE_SAFE, R_HELLO_MISMATCH, SEND_NONE, False, True, False, False)]

    def on_policy_nonfinite(self, now_ns: int) -> Decision:
        """The policy produced a non-finite command (never sent): fail-safe, reset, SAFE."""
        if self.stopped:
            return _TABLE[(self.mode, self.reason, SEND_FAILSAFE, True, False, False, False)]
        return self._go(MODE_SAFE, R_POLICY, SEND_FAILSAFE, True, now_ns)

    def on_port_lost(self, now_ns: int) -> Decision:
        """A serial error: SAFE (the loop writes the fail-safe if the port still takes it),
        then closes the port and reconnects."""
        self.connected = False
        if self.stopped:
            return self._idle
        return self._go(MODE_SAFE, R_RECONNECT, SEND_NONE, False, now_ns)

    def on_port_connected(self, now_ns: int) -> Decision:
        """The port is (re)opened and our HELLO sent: fail-safe command and STATUS, SAFE."""
        self.connected = True
        self.valid_streak = 0
        self.last_valid_ns = now_ns
        if self.mode != MODE_SAFE:  # reopened without on_port_lost: a fault all the same
            return self._go(MODE_SAFE, R_RECONNECT, SEND_FAILSAFE, False, now_ns)
        self.last_status_ns = now_ns
        return _TABLE[(MODE_SAFE, self.reason, SEND_FAILSAFE, False, True, False, False)]

    def on_reload_done(self, now_ns: int) -> Decision:
        """A new model was swapped in: it starts from a zero state; the mode is unchanged."""
        return _TABLE[(self.mode, self.reason, SEND_NONE, True, False, False, False)]

    def on_reload_failed(self, now_ns: int) -> Decision:
        """A reload was rejected: the running model stays; nothing changes."""
        return self._idle

    def on_stop(self, now_ns: int) -> Decision:
        """Stop requested (SIGINT/SIGTERM, end of run): SAFE with the fail-safe command and
        STATUS, latched; an orderly shutdown is not a fault."""
        first = not self.stopped
        self.stopped = True
        self.valid_streak = 0
        self.prev_mode, self.mode, self.reason = self.mode, MODE_SAFE, R_SHUTDOWN
        self.last_status_ns = now_ns
        self._idle = _TABLE[(MODE_SAFE, R_SHUTDOWN, SEND_NONE, False, False, False, False)]
        return _TABLE[(MODE_SAFE, R_SHUTDOWN, SEND_FAILSAFE, False, True, first, False)]
