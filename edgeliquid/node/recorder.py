"""Flight recorder: per-step telemetry and events to MCAP, off the control loop's thread.

The loop calls :meth:`FlightRecorder.record_step` / :meth:`event`, which copy into a
preallocated ring buffer and return (never wait on disk). A background thread drains
the ring into MCAP files (JSON-schema channels Foxglove can plot), rotating by size
and time and keeping the last ``keep`` files. A full disk or a failing write becomes
an event and a counter, never an exception in the loop. If the ring overflows (disk
slower than the loop for longer than the ring lasts) records are dropped and counted.

Crash safety: the writer thread closes the open chunk, flushes and fsyncs at least every
``flush_s`` seconds, so a ``kill -9`` or a power cut loses at most the last ``flush_s`` of
data; :func:`read_recording` reads such an unclosed file up to its last complete record.

Channels:
    /edgeliquid/step   one message per policy step (see STEP_SCHEMA)
    /edgeliquid/event  arming, fail-safe, reconnect, reload, reset, errors
File metadata "edgeliquid": model path and sha256, the node config (JSON).
Floats are written with Python's repr, which round-trips exactly, so replay is bit-exact.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RecordingError

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
        flush_s: float = 1.0,
    ):
        self.path = Path(path)
        self.n_in, self.n_out, self.n_cmd = n_in, n_out, n_cmd
        self.metadata = dict(metadata or {})
        self.rotate_bytes = int(rotate_mb * 1e6)
        self.rotate_s, self.keep = rotate_s, keep
        self.cap = capacity
        self.flush_s = float(flush_s)
        # The writer wakes every `_wake_s` and flushes every `_flush_every` s: a step recorded
        # just after a flush waits at most one wake-up plus one interval (plus the write
        # itself) before it is on disk, which stays under flush_s.
        self._wake_s = min(0.05, self.flush_s / 4)
        self._flush_every = max(0.002, 0.8 * self.flush_s - self._wake_s)
        self.flushes = 0
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
        self._flushed_at = 0.0

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
        if self._thread is None:
            return
        # Wait while the writer drains the ring (a long backlog on a busy machine can take
        # more than a few seconds); give up only after 10 s without progress (a hung disk).
        last, idle_since = (self._tail, self.flushes), time.monotonic()
        while self._thread.is_alive() and time.monotonic() - idle_since < 10:
            self._thread.join(0.5)
            now = (self._tail, self.flushes)
            if now != last:
                last, idle_since = now, time.monotonic()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _open(self) -> None:
        from mcap.writer import CompressionType, Writer

        # Writer.flush (closes the open chunk) came with mcap 1.6; older versions write
        # unchunked, where every message goes straight to the file and a file flush suffices.
        self._chunked = hasattr(Writer, "flush")

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
        self._writer = Writer(
            self._file, chunk_size=chunk, compression=CompressionType.NONE, use_chunking=self._chunked
        )
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
        self._flush()  # header, channels and metadata on disk before the first step
        while len(self.files) > self.keep:
            old = self.files.pop(0)
            try:
                old.unlink()
            except OSError:
                pass

    def _flush(self) -> None:
        """Close the open chunk and push everything written so far to the disk."""
        if self._chunked:
            self._writer.flush()
        self._file.flush()
        self._flushed_at = time.monotonic()
        try:
            os.fsync(self._file.fileno())
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: a device or pipe, nothing to sync
                raise
        self.flushes += 1

    def _maybe_flush(self) -> None:
        if time.monotonic() - self._flushed_at >= self._flush_every:
            self._flush()

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
            self._wake.wait(self._wake_s)
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
                    if n % 512 == 0:  # a long backlog must not hold back the flush
                        self._maybe_flush()
                self._maybe_flush()
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


MCAP_MAGIC = b"\x89MCAP0\r\n"


def is_recording(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a recording: a ``.mcap`` name, or a file that starts like one."""
    if str(path).endswith(".mcap"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(len(MCAP_MAGIC)) == MCAP_MAGIC
    except OSError:
        return False


def _not_a_recording(path: Path, head: bytes) -> str:
    """What a file that is not an MCAP recording actually is, for the error message."""
    if not head:
        return "is empty (0 bytes): the recorder wrote nothing to it (stopped before its first flush?)"
    if path.suffix == ".onnx" or (head[:1] == b"\x08" and b"onnx" in head[:4096]):
        return "is an ONNX model file, not a flight recording (.mcap); pass models with --model"
    sample = head[:4096]
    try:
        sample.decode("utf-8")
        text = b"\0" not in sample
    except UnicodeDecodeError:
        text = False
    if text:
        return "is a text file, not a flight recording (.mcap)"
    return f"is not a flight recording (.mcap): it starts with bytes {head[:8].hex(' ')}, not the MCAP magic"


def _complete_prefix(data: bytes) -> tuple[int, bool]:
    """End offset of the last whole top-level record, and whether the file was closed.

    A file the recorder did not close (killed, power cut) ends in a partial record, or in
    zeros where the filesystem extended it; both end the scan.
    """
    from mcap.opcode import Opcode

    known = {int(o) for o in Opcode}
    pos, n = len(MCAP_MAGIC), len(data)
    while pos + 9 <= n:
        op, length = data[pos], int.from_bytes(data[pos + 1 : pos + 9], "little")
        end = pos + 9 + length
        if (op not in known and op < 0x80) or end > n:
            break
        pos = end
        if op == Opcode.FOOTER:
            return pos, data[pos : pos + len(MCAP_MAGIC)] == MCAP_MAGIC
    return pos, False


def read_recording(path: str | os.PathLike) -> dict[str, Any]:
    """All steps and events of an MCAP recording, in log order, plus its metadata.

    Reads a file the recorder never closed (a crash) up to its last complete record;
    ``truncated`` says so and ``bytes_read`` / ``bytes`` how much of the file that was.
    Raises :class:`RecordingError` (one line, naming the file) for anything else.
    """
    from mcap.exceptions import EndOfFile, McapError
    from mcap.records import Channel, Message, Metadata
    from mcap.stream_reader import CRCValidationError, StreamReader

    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RecordingError(f"{path}: no such recording") from None
    except IsADirectoryError:
        raise RecordingError(f"{path}: is a directory, not a recording (.mcap)") from None
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if not data.startswith(MCAP_MAGIC):
        if MCAP_MAGIC.startswith(data) and data:  # killed while writing the magic itself
            return {
                "steps": [],
                "events": [],
                "metadata": {},
                "truncated": True,
                "bytes": len(data),
                "bytes_read": 0,
            }
        raise RecordingError(f"{path}: {_not_a_recording(path, data[:4096])}")
    end, closed = _complete_prefix(data)
    topics: dict[int, str] = {}
    steps, events, meta = [], [], {}
    truncated = not closed
    try:
        # CRCs on: a chunk damaged by a power cut ends the read instead of feeding bad data.
        for rec in StreamReader(io.BytesIO(data[:end] if truncated else data), validate_crcs=True).records:
            if isinstance(rec, Message):
                topic = topics.get(rec.channel_id)
                if topic == STEP_TOPIC:
                    d = json.loads(rec.data)
                    d["_log_ns"] = rec.log_time
                    steps.append(d)
                elif topic == EVENT_TOPIC:
                    d = json.loads(rec.data)
                    d["_log_ns"] = rec.log_time
                    events.append(d)
            elif isinstance(rec, Channel):
                topics[rec.id] = rec.topic
            elif isinstance(rec, Metadata) and rec.name == "edgeliquid":
                meta = dict(rec.metadata)
    except (EndOfFile, CRCValidationError, McapError, struct.error, ValueError) as exc:
        if not truncated and not isinstance(exc, (CRCValidationError, ValueError)):
            raise RecordingError(f"{path}: damaged MCAP file: {exc}") from None
        truncated = True
    steps.sort(key=lambda d: d["_log_ns"])  # stable: log order, as a seeking reader gives
    events.sort(key=lambda d: d["_log_ns"])
    return {
        "steps": steps,
        "events": events,
        "metadata": meta,
        "truncated": truncated,
        "bytes": len(data),
        "bytes_read": end if truncated else len(data),
    }


def truncation_note(path: str | os.PathLike, rec: dict[str, Any]) -> str | None:
    """One line for a recording that was not closed (what was recovered), else None."""
    if not rec.get("truncated"):
        return None
    got, size = rec["bytes_read"], rec["bytes"]
    where = f"its first {got} of {size} bytes" if got < size else f"all its {size} bytes"
    return (
        f"{path} was not closed by the recorder (crash or power cut?): truncated, recovered "
        f"{len(rec['steps'])} steps and {len(rec['events'])} events from {where}"
    )
