"""Flight recorder: per-step telemetry and events to MCAP, off the control loop's thread.

The loop calls :meth:`FlightRecorder.record_step` / :meth:`event`, which copy into a
preallocated ring buffer and return (never wait on disk). A background thread drains
the ring into MCAP files (JSON-schema channels Foxglove can plot), rotating by size
and time and keeping the last ``keep`` files. A full disk or a failing write becomes
an event and a counter, never an exception in the loop. If the ring overflows (disk
slower than the loop for longer than the ring lasts) records are dropped and counted.

Channels:
    /edgeliquid/step   one message per policy step (see STEP_SCHEMA)
    /edgeliquid/event  arming, fail-safe, reconnect, reload, reset, errors
File metadata "edgeliquid": model path and sha256, the node config (JSON).
Floats are written with Python's repr, which round-trips exactly, so replay is bit-exact.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

STEP_TOPIC, EVENT_TOPIC = "/edgeliquid/step", "/edgeliquid/event"
STEP_SCHEMA = {
    "title": "edgeliquid.Step",
    "type": "object",
    "properties": {
        "seq": {"type": "integer", "description": "SENSOR seq answered (0 for hold steps)"},
        "t_us": {"type": "integer", "description": "device timestamp of the sample, µs"},
        "elapsed": {"type": "number", "description": "model time units of this step"},
        "mode": {"type": "integer", "description": "0 RUN, 1 HOLD, 2 SAFE"},
        "reset": {"type": "integer", "description": "1 if the policy state was reset before this step"},
        "x": {"type": "array", "items": {"type": "number"}, "description": "model inputs (normalised)"},
        "y": {"type": "array", "items": {"type": "number"}, "description": "model outputs"},
        "u": {"type": "array", "items": {"type": "number"}, "description": "actuator commands"},
        "t_ready_ns": {"type": "integer"},
        "t_decoded_ns": {"type": "integer"},
        "t_inferred_ns": {"type": "integer"},
        "t_encoded_ns": {"type": "integer"},
        "t_written_ns": {"type": "integer"},
    },
}
EVENT_SCHEMA = {
    "title": "edgeliquid.Event",
    "type": "object",
    "properties": {"kind": {"type": "string"}, "text": {"type": "string"}, "t_ns": {"type": "integer"}},
}
_TIMES = 5  # ready, decoded, inferred, encoded, written


class FlightRecorder:
    """Ring buffer + writer thread. Construct, call :meth:`start`, then record; :meth:`close`."""

    def __init__(
        self,
        path: str | os.PathLike,
        n_in: int,
        n_out: int,
        n_cmd: int,
        metadata: dict[str, str] | None = None,
        rotate_mb: float = 64.0,
        rotate_s: float = 3600.0,
        keep: int = 5,
        capacity: int = 1 << 16,
    ):
        self.path = Path(path)
        self.n_in, self.n_out, self.n_cmd = n_in, n_out, n_cmd
        self.metadata = dict(metadata or {})
        self.rotate_bytes = int(rotate_mb * 1e6)
        self.rotate_s, self.keep = rotate_s, keep
        self.cap = capacity
        self._f = np.zeros((capacity, n_in + n_out + n_cmd + 1), np.float64)  # x, y, u, elapsed
        self._i = np.zeros((capacity, 4 + _TIMES), np.int64)  # seq, t_us, mode, reset, times
        self._head = 0  # next slot to write (loop thread only)
        self._tail = 0  # next slot to drain (writer thread only)
        self._events: list[tuple[int, str, str]] = []
        self._lock = threading.Lock()  # events only; steps are lock-free (single producer)
        self._wake = threading.Event()
        self._stop = False
        self.dropped = 0
        self.written = 0
        self.write_errors = 0
        self.files: list[Path] = []
        self._n_opened = 0
        self._thread: threading.Thread | None = None
        self._writer = None
        self._file = None

    # ------------------------------------------------------------- loop side
    def record_step(
        self,
        seq: int,
        t_us: int,
        elapsed: float,
        mode: int,
        reset: bool,
        x,
        y,
        u,
        times: tuple[int, int, int, int, int],
    ) -> None:
        """Copy one step into the ring; drops (and counts) when the ring is full."""
        head = self._head
        if head - self._tail >= self.cap:
            self.dropped += 1
            return
        k = head % self.cap
        f = self._f[k]
        n_in, n_out = self.n_in, self.n_out
        f[:n_in] = x
        f[n_in : n_in + n_out] = y
        f[n_in + n_out : -1] = u
        f[-1] = elapsed
        i = self._i[k]
        i[0], i[1], i[2], i[3] = seq, t_us, mode, reset
        i[4:] = times
        self._head = head + 1

    def event(self, kind: str, text: str = "") -> None:
        with self._lock:
            self._events.append((time.monotonic_ns(), kind, text))
        self._wake.set()

    # ----------------------------------------------------------- writer side
    def start(self) -> FlightRecorder:
        self._thread = threading.Thread(target=self._run, name="edgeliquid-recorder", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _open(self) -> None:
        from mcap.writer import CompressionType, Writer

        ts = time.strftime("%Y%m%d-%H%M%S")
        self._n_opened += 1
        name = (
            self.path
            if self._n_opened == 1
            else self.path.with_name(f"{self.path.stem}-{ts}-{self._n_opened - 1}{self.path.suffix}")
        )
        name.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(name, "wb")
        # Chunks no larger than a tenth of the rotation size, so what is on disk stays close to
        # what was written (the writer buffers a whole chunk in memory).
        chunk = max(4096, min(1 << 20, self.rotate_bytes // 10))
        self._writer = Writer(self._file, chunk_size=chunk, compression=CompressionType.NONE)
        self._bytes = 0
        self._writer.start(profile="", library="edgeliquid")
        sid = self._writer.register_schema("edgeliquid.Step", "jsonschema", json.dumps(STEP_SCHEMA).encode())
        eid = self._writer.register_schema(
            "edgeliquid.Event", "jsonschema", json.dumps(EVENT_SCHEMA).encode()
        )
        self._step_ch = self._writer.register_channel(STEP_TOPIC, "json", sid)
        self._event_ch = self._writer.register_channel(EVENT_TOPIC, "json", eid)
        self._writer.add_metadata("edgeliquid", {k: str(v) for k, v in self.metadata.items()})
        self._opened_at = time.monotonic()
        self.files.append(name)
        while len(self.files) > self.keep:
            old = self.files.pop(0)
            try:
                old.unlink()
            except OSError:
                pass

    def _finish_file(self) -> None:
        if self._writer is not None:
            try:
                self._writer.finish()
                self._file.close()
            except Exception:  # a full disk can fail here too
                self.write_errors += 1
            self._writer = None

    def _run(self) -> None:
        try:
            self._open()
        except Exception as exc:
            self.write_errors += 1
            self._failed = f"cannot open {self.path}: {exc}"
            return
        seq = 0
        while True:
            self._wake.wait(0.05)
            self._wake.clear()
            stopping = self._stop
            with self._lock:
                events, self._events = self._events, []
            try:
                for t_ns, kind, text in events:
                    self._writer.add_message(
                        self._event_ch,
                        t_ns,
                        json.dumps({"kind": kind, "text": text, "t_ns": t_ns}).encode(),
                        t_ns,
                        seq,
                    )
                    seq += 1
                n = 0
                while self._tail < self._head:
                    self._write_step(self._tail % self.cap, seq)
                    self._tail += 1
                    seq += 1
                    n += 1
                    if n % 4 == 0:
                        time.sleep(0)  # let the control loop take the GIL
                if self._bytes > self.rotate_bytes or time.monotonic() - self._opened_at > self.rotate_s:
                    self._finish_file()
                    self._open()
            except Exception as exc:  # disk full, I/O error: an event and a counter, never a crash
                self.write_errors += 1
                self._tail = self._head  # what could not be written is lost, counted
                self.dropped += 1
                with self._lock:
                    self._events.append((time.monotonic_ns(), "recorder_error", str(exc)))
                time.sleep(0.2)
                if self.write_errors > 50:
                    return
            if stopping:
                break
        self._finish_file()

    def _write_step(self, k: int, seq: int) -> None:
        f, i = self._f[k], self._i[k]
        n_in, n_out = self.n_in, self.n_out
        t = [int(v) for v in i[4:]]
        msg = {
            "seq": int(i[0]),
            "t_us": int(i[1]),
            "mode": int(i[2]),
            "reset": int(i[3]),
            "elapsed": float(f[-1]),
            "x": f[:n_in].tolist(),
            "y": f[n_in : n_in + n_out].tolist(),
            "u": f[n_in + n_out : -1].tolist(),
            "t_ready_ns": t[0],
            "t_decoded_ns": t[1],
            "t_inferred_ns": t[2],
            "t_encoded_ns": t[3],
            "t_written_ns": t[4],
        }
        data = json.dumps(msg).encode()
        self._writer.add_message(self._step_ch, t[0], data, t[4], seq)
        self._bytes += len(data)
        self.written += 1


def read_recording(path: str | os.PathLike) -> dict[str, Any]:
    """All steps and events of an MCAP recording, in log order, plus its metadata."""
    from mcap.reader import make_reader

    steps, events, meta = [], [], {}
    with open(path, "rb") as f:
        reader = make_reader(f)
        for rec in reader.iter_metadata():
            if rec.name == "edgeliquid":
                meta = dict(rec.metadata)
        for _schema, channel, message in reader.iter_messages(log_time_order=True):
            d = json.loads(message.data)
            if channel.topic == STEP_TOPIC:
                d["_log_ns"] = message.log_time
                steps.append(d)
            elif channel.topic == EVENT_TOPIC:
                d["_log_ns"] = message.log_time
                events.append(d)
    return {"steps": steps, "events": events, "metadata": meta}
