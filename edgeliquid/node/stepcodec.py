"""The step channel's compact binary encoding: protobuf with a fixed layout, read without a parser.

Every message of a file has the same bytes in the same places: each field is always written,
in field order, with fixed-width types (fixed32, double, sfixed64, packed float/double, and
varints whose values stay below 128), so every message of a file has one length. Any protobuf
reader (Foxglove, with the ``FileDescriptorSet`` of :func:`descriptor_set` as the MCAP
schema) decodes it as usual; :func:`decode_block` decodes thousands at once with numpy, after
checking that every tag and length byte is where the layout puts it.

``edgeliquid.Step`` stores x, y, u as float32 (a float32 policy's inputs and outputs exactly;
commands go to the device as float32 anyway), ``edgeliquid.StepF64`` as float64 (a float64
policy). The four stage times after ``t_ready_ns`` are ns offsets from it (fixed32, capped at
~4.29 s), which is what makes a step ~90 bytes instead of JSON's ~435.
"""

from __future__ import annotations

import struct

import numpy as np

SCHEMA_NAMES = {False: "edgeliquid.Step", True: "edgeliquid.StepF64"}
STAGES = ("t_decoded_ns", "t_inferred_ns", "t_encoded_ns", "t_written_ns")
_MAX_OFFSET = 0xFFFFFFFF

# (field number, name, protobuf type, wire type, numpy scalar or None for the float arrays)
_FIELDS = (
    (1, "seq", "fixed32", 5, "<u4"),
    (2, "t_us", "fixed32", 5, "<u4"),
    (3, "elapsed", "double", 1, "<f8"),
    (4, "mode", "uint32", 0, "u1"),
    (5, "reset", "uint32", 0, "u1"),
    (6, "x", "float", 2, None),
    (7, "y", "float", 2, None),
    (8, "u", "float", 2, None),
    (9, "t_ready_ns", "sfixed64", 1, "<i8"),
    (10, "stage_ns", "fixed32", 2, "<u4"),
)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def descriptor_set(wide: bool = False) -> bytes:
    """The serialized ``FileDescriptorSet`` of the step message (the MCAP schema's data)."""
    from google.protobuf import descriptor_pb2 as d

    fds = d.FileDescriptorSet()
    f = fds.file.add(name="edgeliquid_step.proto", package="edgeliquid", syntax="proto3")
    m = f.message_type.add(name=SCHEMA_NAMES[wide].split(".")[1])
    for num, name, ptype, _, _ in _FIELDS:
        if ptype == "float" and wide:
            ptype = "double"
        repeated = name in ("x", "y", "u", "stage_ns")
        fd = m.field.add(name=name, number=num, type=getattr(d.FieldDescriptorProto, f"TYPE_{ptype.upper()}"))
        fd.label = (
            d.FieldDescriptorProto.LABEL_REPEATED if repeated else d.FieldDescriptorProto.LABEL_OPTIONAL
        )
    return fds.SerializeToString()


_BUILT: dict[tuple[int, int, int, bool], tuple] = {}


def _build(n_in: int, n_out: int, n_cmd: int, wide: bool) -> tuple:
    """(record dtype, template, constant field names, constant byte offsets, their values)."""
    fl = "<f8" if wide else "<f4"
    counts = {"x": n_in, "y": n_out, "u": n_cmd, "stage_ns": len(STAGES)}
    names, formats, offsets, consts = [], [], [], {}
    pos = 0

    def add(name, fmt, size, value=None):
        nonlocal pos
        names.append(name)
        formats.append(fmt)
        offsets.append(pos)
        if value is not None:
            consts[name] = (pos, value)
        pos += size

    for num, name, _, wt, scalar in _FIELDS:
        tag = _varint((num << 3) | wt)
        add(f"_k{num}", f"V{len(tag)}", len(tag), tag)
        if wt == 2:
            item = np.dtype(scalar or fl)
            length = _varint(counts[name] * item.itemsize)
            add(f"_k{num}n", f"V{len(length)}", len(length), length)
            add(name, (item, (counts[name],)), counts[name] * item.itemsize)
        else:
            add(name, scalar, np.dtype(scalar).itemsize)
    dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": pos})
    template = np.zeros((), dtype)
    at, vals = [], []
    for k, (off, v) in consts.items():
        template[k] = np.void(v)
        at += range(off, off + len(v))
        vals += list(v)
    return dtype, template, list(consts), np.array(at, np.intp), np.array(vals, np.uint8)


class StepLayout:
    """The fixed layout for ``n_in``/``n_out``/``n_cmd`` values: a numpy record of ``size`` bytes.

    Constant fields (tags and packed lengths) are named ``_k*``; :attr:`template` holds them.
    """

    def __init__(self, n_in: int, n_out: int, n_cmd: int, wide: bool = False):
        self.n_in, self.n_out, self.n_cmd, self.wide = n_in, n_out, n_cmd, wide
        key = (n_in, n_out, n_cmd, wide)
        if key not in _BUILT:  # a reader builds a layout per file: build each one once
            _BUILT[key] = _build(n_in, n_out, n_cmd, wide)
        self.dtype, self.template, self._consts, self._const_at, self._const_bytes = _BUILT[key]
        self.size = self.dtype.itemsize
        self._rec = self.template.copy()

    def encode(self, seq: int, t_us: int, elapsed: float, mode: int, reset: int, x, y, u, times) -> bytes:
        """One step's message; ``times`` are the five absolute ns stamps (ready ... written)."""
        r = self._rec
        r["seq"], r["t_us"], r["elapsed"] = seq & 0xFFFFFFFF, t_us & 0xFFFFFFFF, elapsed
        r["mode"], r["reset"] = min(int(mode), 127), 1 if reset else 0
        r["x"], r["y"], r["u"] = x, y, u
        t0 = int(times[0])
        r["t_ready_ns"] = t0
        r["stage_ns"] = [min(max(int(t) - t0, 0), _MAX_OFFSET) for t in times[1:]]
        return r.tobytes()

    def decode_block(self, raw: np.ndarray) -> dict[str, np.ndarray] | None:
        """[T, size] uint8 messages -> field arrays, or None if any constant byte is off."""
        raw = np.ascontiguousarray(raw)
        # every constant byte (tags, packed lengths) in one comparison
        if len(raw) and not np.array_equal(
            raw[:, self._const_at], np.broadcast_to(self._const_bytes, (len(raw), len(self._const_at)))
        ):
            return None
        rec = raw.view(self.dtype).reshape(-1)
        if np.any(rec["mode"] > 127) or np.any(rec["reset"] > 127):  # a varint's high bit: not ours
            return None
        out = {k: rec[k] for k in ("seq", "t_us", "elapsed", "mode", "reset", "x", "y", "u", "t_ready_ns")}
        out["stage_ns"] = rec["stage_ns"]
        return out


def decode_one(data: bytes, wide: bool = False) -> dict:
    """A generic proto3 wire decoder for one step message (any field order or width)."""
    vals: dict = {}
    pos, n = 0, len(data)
    names = {f[0]: f for f in _FIELDS}

    def varint(p):
        shift = v = 0
        while True:
            b = data[p]
            v |= (b & 0x7F) << shift
            p += 1
            if not b & 0x80:
                return v, p
            shift += 7

    while pos < n:
        key, pos = varint(pos)
        num, wt = key >> 3, key & 7
        f = names.get(num)
        if wt == 0:
            v, pos = varint(pos)
        elif wt == 1:
            v, pos = data[pos : pos + 8], pos + 8
        elif wt == 5:
            v, pos = data[pos : pos + 4], pos + 4
        elif wt == 2:
            ln, pos = varint(pos)
            v, pos = data[pos : pos + ln], pos + ln
        else:
            raise ValueError(f"step message: unsupported wire type {wt}")
        if f is None:
            continue
        _, name, ptype, _, _ = f
        if name in ("x", "y", "u"):
            if wt == 2:
                w = 8 if wide else 4
                vals.setdefault(name, []).extend(struct.unpack(f"<{len(v) // w}{'d' if w == 8 else 'f'}", v))
            else:  # unpacked repeated element
                vals.setdefault(name, []).append(struct.unpack("<d" if wt == 1 else "<f", v)[0])
        elif name == "stage_ns":
            if wt == 2:
                vals.setdefault(name, []).extend(struct.unpack(f"<{len(v) // 4}I", v))
            else:
                vals.setdefault(name, []).append(struct.unpack("<I", v)[0])
        elif name == "elapsed":
            vals[name] = struct.unpack("<d", v)[0]
        elif name == "t_ready_ns":
            vals[name] = struct.unpack("<q", v)[0]
        elif wt == 5:
            vals[name] = struct.unpack("<I", v)[0]
        else:
            vals[name] = v
    return vals
