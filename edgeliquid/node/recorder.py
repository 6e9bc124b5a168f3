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
    /edgeliquid/step   one message per policy step: ``encoding="protobuf"`` (the default) a
                       fixed-layout protobuf of ~90 bytes (:mod:`.stepcodec`, schema in the file,
                       Foxglove decodes it), or ``"json"`` (STEP_SCHEMA, ~435 bytes)
    /edgeliquid/event  arming, fail-safe, reconnect, reload, reset, errors
File metadata "edgeliquid": model path and sha256, the node config (JSON).
JSON floats are written with Python's repr and protobuf stores the policy's own dtype, so both
round-trip exactly and replay is bit-exact. The reader takes either encoding.
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RecordingError
from .stepcodec import SCHEMA_NAMES, STAGES, StepLayout, decode_one, descriptor_set

STEP_TOPIC, EVENT_TOPIC = "/edgeliquid/step", "/edgeliquid/event"
ENCODINGS = ("protobuf", "json")
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
    """Ring buffer + writer thread. Construct, call :meth:`start`, then record; :meth:`close`.

    :class:`.recorder_process.ProcessRecorder` has the same API with the writer in a child
    process (off the loop's GIL); it runs this class's writer code there.
    """

    _yield_gil = True  # the writer shares the loop's GIL: hand it back every few records

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
        encoding: str = "protobuf",
    ):
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.encoding = encoding
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

    @property
    def task_id(self) -> int | None:
        """The writer thread's OS task id, to keep it off the loop's CPU."""
        return None if self._thread is None else self._thread.native_id

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
        from mcap.writer import CompressionType, IndexType, Writer

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
        # protobuf: no per-message index records (16 bytes a step); readers find messages by
        # chunk (the chunk index stays), as Foxglove does.
        binary = self.encoding == "protobuf"
        index = IndexType.ALL & ~IndexType.MESSAGE if binary else IndexType.ALL
        self._writer = Writer(
            self._file,
            chunk_size=chunk,
            compression=CompressionType.NONE,
            use_chunking=self._chunked,
            index_types=index,
        )
        self._bytes = 0
        self._writer.start(profile="", library="edgeliquid")
        if binary:
            wide = self.metadata.get("dtype") == "float64"
            self._layout = StepLayout(self.n_in, self.n_out, self.n_cmd, wide)
            sid = self._writer.register_schema(SCHEMA_NAMES[wide], "protobuf", descriptor_set(wide))
        else:
            sid = self._writer.register_schema(
                "edgeliquid.Step", "jsonschema", json.dumps(STEP_SCHEMA).encode()
            )
        eid = self._writer.register_schema(
            "edgeliquid.Event", "jsonschema", json.dumps(EVENT_SCHEMA).encode()
        )
        sizes = {"n_in": str(self.n_in), "n_out": str(self.n_out), "n_cmd": str(self.n_cmd)}
        self._step_ch = self._writer.register_channel(
            STEP_TOPIC, "protobuf" if binary else "json", sid, sizes
        )
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
                    if n % 4 == 0 and self._yield_gil:
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
        if self.encoding == "protobuf":
            data = self._layout.encode(
                int(i[0]),
                int(i[1]),
                float(f[-1]),
                int(i[2]),
                int(i[3]),
                f[:n_in],
                f[n_in : n_in + n_out],
                f[n_in + n_out : -1],
                t,
            )
            self._writer.add_message(self._step_ch, t[0], data, t[4], seq)
            self._bytes += len(data)
            self.written += 1
            return
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
    from mcap.records import Channel, Message, Metadata, Schema
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
    schemas: dict[int, str] = {}
    binary: dict[int, StepLayout] = {}  # protobuf step channels
    steps, events, meta = [], [], {}
    truncated = not closed
    try:
        # CRCs on: a chunk damaged by a power cut ends the read instead of feeding bad data.
        for rec in StreamReader(io.BytesIO(data[:end] if truncated else data), validate_crcs=True).records:
            if isinstance(rec, Message):
                topic = topics.get(rec.channel_id)
                if topic == STEP_TOPIC:
                    lay = binary.get(rec.channel_id)
                    d = json.loads(rec.data) if lay is None else {"_raw": (lay, rec.data)}
                    d["_log_ns"] = rec.log_time
                    steps.append(d)
                elif topic == EVENT_TOPIC:
                    d = json.loads(rec.data)
                    d["_log_ns"] = rec.log_time
                    events.append(d)
            elif isinstance(rec, Schema):
                schemas[rec.id] = rec.name
            elif isinstance(rec, Channel):
                topics[rec.id] = rec.topic
                if rec.topic == STEP_TOPIC and rec.message_encoding == "protobuf":
                    binary[rec.id] = _layout_of(rec.metadata, schemas.get(rec.schema_id), path)
            elif isinstance(rec, Metadata) and rec.name == "edgeliquid":
                meta = dict(rec.metadata)
    except (EndOfFile, CRCValidationError, McapError, struct.error, ValueError) as exc:
        if not truncated and not isinstance(exc, (CRCValidationError, ValueError)):
            raise RecordingError(f"{path}: damaged MCAP file: {exc}") from None
        truncated = True
    if binary:
        _decode_binary_steps(steps)
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


def _layout_of(channel_meta: dict[str, str], schema: str | None, path: Path) -> StepLayout:
    try:
        n = [int(channel_meta[k]) for k in ("n_in", "n_out", "n_cmd")]
    except (KeyError, ValueError):
        raise RecordingError(
            f"{path}: protobuf step channel without its sizes (n_in, n_out, n_cmd)"
        ) from None
    if schema not in SCHEMA_NAMES.values():
        raise RecordingError(
            f"{path}: unknown step schema {schema!r}; expected one of {sorted(SCHEMA_NAMES.values())}"
        )
    return StepLayout(*n, wide=schema == SCHEMA_NAMES[True])


def _decode_binary_steps(steps: list[dict[str, Any]]) -> None:
    """Replace each ``{"_raw": (layout, bytes)}`` step by the JSON channel's dict, in place.

    Messages in the fixed layout are decoded together (numpy); any other protobuf message
    (another writer) by the generic wire decoder.
    """
    raw = [(k, d["_raw"]) for k, d in enumerate(steps) if "_raw" in d]
    if not raw:
        return
    lay = raw[0][1][0]
    fixed = [k for k, (lay_k, data) in raw if lay_k is lay and len(data) == lay.size]
    f = None
    if fixed:
        buf = np.frombuffer(b"".join(steps[k]["_raw"][1] for k in fixed), np.uint8).reshape(len(fixed), -1)
        f = lay.decode_block(buf)
    if f is not None:
        cols = {k: f[k].astype(np.float64 if k in "xyu" or k == "elapsed" else np.int64).tolist() for k in f}
        for j, k in enumerate(fixed):
            steps[k] = _as_dict({c: v[j] for c, v in cols.items()}, steps[k]["_log_ns"])
    for k, d in enumerate(steps):
        if "_raw" in d:
            lay_k, data = d["_raw"]
            v = decode_one(data, lay_k.wide)
            stage = list(v.get("stage_ns", []))
            v["stage_ns"] = stage + [0] * (len(STAGES) - len(stage))
            steps[k] = _as_dict(v, d["_log_ns"])


def _as_dict(v: dict[str, Any], log_ns: int) -> dict[str, Any]:
    t0 = int(v.get("t_ready_ns", 0))
    d = {
        "seq": int(v.get("seq", 0)),
        "t_us": int(v.get("t_us", 0)),
        "mode": int(v.get("mode", 0)),
        "reset": int(v.get("reset", 0)),
        "elapsed": float(v.get("elapsed", 0.0)),
        "x": [float(a) for a in v.get("x", [])],
        "y": [float(a) for a in v.get("y", [])],
        "u": [float(a) for a in v.get("u", [])],
        "t_ready_ns": t0,
    }
    for name, off in zip(STAGES, v["stage_ns"]):
        d[name] = t0 + int(off)
    d["_log_ns"] = log_ns
    return d


def read_step_arrays(path: str | os.PathLike) -> dict[str, Any]:
    """The step channel as arrays (x, y, u [T, n] float64; elapsed, mode, reset, seq, t_us,
    log_ns [T]), plus ``metadata``, ``truncated``, ``bytes``, ``bytes_read``, ``encoding``.

    Protobuf recordings are read without a per-message parser (fixed layout, strided numpy
    views of the file); JSON ones (and anything else) through :func:`read_recording`. Same
    steps, same order, same truncation rules and errors as :func:`read_recording`.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        data = b""
    if data.startswith(MCAP_MAGIC):
        try:
            fast = _scan_fixed(data)
        except (ValueError, IndexError, struct.error, RecordingError):
            fast = None
        if fast is not None:
            return fast
    rec = read_recording(path)  # raises the one-line errors
    steps = rec["steps"]
    n = [len(steps[0][k]) if steps else 0 for k in "xyu"]
    out: dict[str, Any] = {
        k: np.array([s[k] for s in steps], np.float64).reshape(len(steps), m) for k, m in zip("xyu", n)
    }
    out["elapsed"] = np.array([s["elapsed"] for s in steps], np.float64)
    for k in ("seq", "t_us", "mode", "reset"):
        out[k] = np.array([s.get(k, 0) for s in steps], np.int64)
    out["log_ns"] = np.array([s["_log_ns"] for s in steps], np.int64)
    enc = "protobuf" if data[:4096].find(b"protobuf") >= 0 else "json"
    out.update(
        metadata=rec["metadata"],
        truncated=rec["truncated"],
        bytes=rec["bytes"],
        bytes_read=rec["bytes_read"],
        encoding=enc,
    )
    return out


def _string(buf, p: int) -> tuple[str, int]:
    n = int.from_bytes(buf[p : p + 4], "little")
    return bytes(buf[p + 4 : p + 4 + n]).decode(), p + 4 + n


def _string_map(buf, p: int) -> tuple[dict[str, str], int]:
    end = p + 4 + int.from_bytes(buf[p : p + 4], "little")
    p += 4
    out = {}
    while p < end:
        k, p = _string(buf, p)
        out[k], p = _string(buf, p)
    return out, end


class _Damaged(Exception):
    pass


class _Scan:
    """State of one fast scan: schemas, the step channel, the step blocks found so far."""

    def __init__(self):
        self.schemas: dict[int, str] = {}
        self.meta: dict[str, str] = {}
        self.step_id: int | None = None
        self.layout: StepLayout | None = None
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []  # (payloads [k, L], log_ns [k])

    def region(self, buf: bytes, pos: int, end: int) -> None:
        """Walk the records in buf[pos:end]; runs of step messages in one vectorised pass each."""
        arr = np.frombuffer(buf, np.uint8)
        while pos + 9 <= end:
            op = buf[pos]
            length = int.from_bytes(buf[pos + 1 : pos + 9], "little")
            rec_end = pos + 9 + length
            if rec_end > end:
                raise ValueError("record runs past its region")
            body = pos + 9
            if op == 0x05:  # message
                cid = int.from_bytes(buf[body : body + 2], "little")
                if cid == self.step_id:
                    if length != 22 + self.layout.size:
                        raise ValueError("a step message not in the fixed layout")
                    pos = self._run(arr, pos, end)
                    continue
            elif op == 0x06:  # chunk
                self._chunk(buf, body)
            elif op == 0x03:  # schema
                sid = int.from_bytes(buf[body : body + 2], "little")
                self.schemas[sid], _ = _string(buf, body + 2)
            elif op == 0x04:  # channel
                self._channel(buf, body)
            elif op == 0x0C:  # metadata
                name, p = _string(buf, body)
                if name == "edgeliquid":
                    self.meta, _ = _string_map(buf, p)
            pos = rec_end

    def _chunk(self, buf: bytes, body: int) -> None:
        p = body + 8 + 8 + 8
        crc = int.from_bytes(buf[p : p + 4], "little")
        comp, p = _string(buf, p + 4)
        n = int.from_bytes(buf[p : p + 8], "little")
        if not comp:  # walked in place: no copy of the chunk
            if p + 8 + n > len(buf):
                raise ValueError("chunk runs past the file")
            if crc and zlib.crc32(memoryview(buf)[p + 8 : p + 8 + n]) != crc:
                raise _Damaged
            self.region(buf, p + 8, p + 8 + n)
            return
        records = buf[p + 8 : p + 8 + n]
        if comp == "zstd":
            import zstandard

            size = int.from_bytes(buf[body + 16 : body + 24], "little")
            records = zstandard.ZstdDecompressor().decompress(records, max_output_size=size)
        elif comp == "lz4":
            import lz4.frame

            records = lz4.frame.decompress(records)
        elif comp:
            raise ValueError(f"chunk compression {comp!r}")
        if crc and zlib.crc32(records) != crc:
            raise _Damaged
        self.region(bytes(records), 0, len(records))

    def _channel(self, buf: bytes, body: int) -> None:
        cid = int.from_bytes(buf[body : body + 2], "little")
        sid = int.from_bytes(buf[body + 2 : body + 4], "little")
        topic, p = _string(buf, body + 4)
        enc, p = _string(buf, p)
        cmeta, _ = _string_map(buf, p)
        if topic != STEP_TOPIC:
            return
        if enc != "protobuf":
            raise ValueError("JSON step channel: the generic reader")
        lay = _layout_of(cmeta, self.schemas.get(sid), Path("?"))
        if self.layout is not None and (lay.size, lay.wide, cid) != (
            self.layout.size,
            self.layout.wide,
            self.step_id,
        ):
            raise ValueError("two step channels")
        self.step_id, self.layout = cid, lay

    def _run(self, arr: np.ndarray, pos: int, end: int) -> int:
        """Take the longest run of step messages from ``pos``; return where it ends.

        A run is uniformly strided (``r`` bytes a message), so headers and payloads are
        strided views of the file: no per-message Python, no index arrays.
        """
        r, size = 9 + 22 + self.layout.size, self.layout.size
        head = np.frombuffer(
            b"\x05" + (r - 9).to_bytes(8, "little") + self.step_id.to_bytes(2, "little"), np.uint8
        )
        while True:
            k = min((end - pos) // r, 1 << 16)
            # strided views made directly (as_strided costs ~10 us a call: per chunk, it showed)
            hdr = np.ndarray((k, 11), np.uint8, arr, pos, (r, 1)) if k else arr[:0].reshape(0, 11)
            ok = (hdr == head).all(axis=1)
            take = k if ok.all() else int(np.argmin(ok))
            if take:
                pay = np.ndarray((take, size), np.uint8, arr, pos + 31, (r, 1))
                log = np.ndarray((take, 8), np.uint8, arr, pos + 15, (r, 1))
                self.blocks.append((pay.copy(), log.copy().view("<i8").reshape(-1)))
            pos += take * r
            if take < k or k == 0 or end - pos < r:
                return pos


def _scan_fixed(data: bytes) -> dict[str, Any] | None:
    """read_step_arrays' fast path; None where the generic reader must do it."""
    end, closed = _complete_prefix(data)
    sc = _Scan()
    truncated = not closed
    try:
        sc.region(data, len(MCAP_MAGIC), end)
    except _Damaged:
        if closed:
            return None  # the generic reader says what is wrong
        truncated = True
    if sc.layout is None:
        return None
    lay = sc.layout
    raw = np.concatenate([b[0] for b in sc.blocks]) if sc.blocks else np.zeros((0, lay.size), np.uint8)
    log = np.concatenate([b[1] for b in sc.blocks]) if sc.blocks else np.zeros(0, np.int64)
    f = lay.decode_block(raw)
    if f is None:
        return None
    # log order, as read_recording (stable); the writer's order already is, almost always
    order = slice(None) if np.all(log[1:] >= log[:-1]) else np.argsort(log, kind="stable")
    out = {k: np.asarray(f[k])[order].astype(np.float64) for k in ("x", "y", "u", "elapsed")}
    for k in ("seq", "t_us", "mode", "reset"):
        out[k] = np.asarray(f[k])[order].astype(np.int64)
    out["log_ns"] = log[order]
    out.update(
        metadata=sc.meta,
        truncated=truncated,
        bytes=len(data),
        bytes_read=end if truncated else len(data),
        encoding="protobuf",
    )
    return out
