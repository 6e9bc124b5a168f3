"""The step channel's binary encoding: round trip, size, a real protobuf decoder, crash reads."""

from __future__ import annotations

import re

import numpy as np
import pytest
from fleet_helpers import write_recording

from edgeliquid import RecordingError
from edgeliquid.node.recorder import FlightRecorder, read_recording, read_step_arrays
from edgeliquid.node.stepcodec import StepLayout, descriptor_set


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("enc")
    return (
        write_recording(d / "p.mcap", steps=400, seed=3, encoding="protobuf"),
        write_recording(d / "j.mcap", steps=400, seed=3, encoding="json"),
    )


def test_protobuf_and_json_recordings_read_the_same(pair):
    p, j = (read_recording(f) for f in pair)
    assert len(p["steps"]) == len(j["steps"]) == 400
    strip = [{k: v for k, v in s.items() if k != "u"} for s in p["steps"]]
    assert strip == [{k: v for k, v in s.items() if k != "u"} for s in j["steps"]]
    # commands are stored as float32 (what goes to the device)
    assert np.allclose([s["u"] for s in p["steps"]], [s["u"] for s in j["steps"]], rtol=1e-6)
    assert p["metadata"] == j["metadata"]


@pytest.mark.parametrize("which", [0, 1])
def test_fast_array_reader_matches_the_generic_reader(pair, which):
    a = read_step_arrays(pair[which])
    r = read_recording(pair[which])["steps"]
    assert a["encoding"] == ("protobuf", "json")[which]
    for k in ("x", "y", "u", "elapsed", "seq", "t_us", "mode", "reset"):
        assert np.array_equal(a[k], np.array([s[k] for s in r])), k
    assert np.array_equal(a["log_ns"], [s["_log_ns"] for s in r])


def test_bytes_per_step_of_the_demo_channels(tmp_path):
    sizes = []
    for n in (1000, 3000):
        f = write_recording(tmp_path / f"{n}.mcap", steps=n, seed=1, reset_at=())
        sizes.append(f.stat().st_size)
    per_step = (sizes[1] - sizes[0]) / 2000
    assert per_step <= 120, per_step


def test_messages_decode_with_protobuf_from_the_schema_in_the_file(pair):
    """What Foxglove does: build the message class from the file's FileDescriptorSet and parse."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    from mcap.reader import make_reader

    with open(pair[0], "rb") as f:
        msgs = list(make_reader(f).iter_messages(topics=["/edgeliquid/step"]))
    schema = msgs[0][0]
    assert schema.encoding == "protobuf" and schema.name == "edgeliquid.Step"
    pool = descriptor_pool.DescriptorPool()
    for fd in descriptor_pb2.FileDescriptorSet.FromString(schema.data).file:
        pool.Add(fd)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(schema.name))
    ours = read_recording(pair[0])["steps"]
    for (_, _, m), d in zip(msgs[:50], ours[:50]):
        pb = cls.FromString(m.data)
        assert (pb.seq, pb.t_us, pb.elapsed, pb.mode, pb.reset) == (
            d["seq"],
            d["t_us"],
            d["elapsed"],
            d["mode"],
            d["reset"],
        )
        assert list(pb.x) == d["x"] and list(pb.y) == d["y"]
        assert pb.t_ready_ns + pb.stage_ns[3] == d["t_written_ns"]


def test_layout_is_fixed_and_checked():
    lay = StepLayout(4, 1, 1)
    a = lay.encode(1, 2, 0.5, 2, 1, [1, 2, 3, 4], [5], [6], (10, 11, 12, 13, 14))
    b = lay.encode(70000, 2**32 - 1, 1e300, 0, 0, [0] * 4, [0], [0], (2**62, 2**62, 2**62, 2**62, 2**62))
    assert len(a) == len(b) == lay.size
    raw = np.frombuffer(a + b, np.uint8).reshape(2, -1).copy()
    assert lay.decode_block(raw)["seq"].tolist() == [1, 70000]
    raw[1, 0] ^= 1  # a tag byte off: not our layout
    assert lay.decode_block(raw) is None
    assert descriptor_set(True) != descriptor_set(False)


def test_unclosed_protobuf_recording_reads_like_the_generic_reader(tmp_path):
    src = write_recording(tmp_path / "full.mcap", steps=2000, seed=2, chunks=True)
    data = src.read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    a, r = read_step_arrays(cut), read_recording(cut)
    assert a["truncated"] and r["truncated"] and a["bytes_read"] == r["bytes_read"]
    assert 0 < len(r["steps"]) < 2000
    assert np.array_equal(a["x"], np.array([s["x"] for s in r["steps"]]))


@pytest.mark.parametrize("damage", ["cut-0.31", "cut-0.77", "flip-0.5", "flip-0.9"])
def test_damaged_chunked_recording_reads_like_the_generic_reader(tmp_path, damage):
    """The fast reader walks uncompressed chunks in place: a cut inside a chunk, or a flipped
    byte inside one (its CRC), reads as the generic reader reads it (steps, truncation)."""
    data = bytearray(write_recording(tmp_path / "full.mcap", steps=1500, seed=3, chunks=True).read_bytes())
    kind, frac = damage.split("-")
    at = int(len(data) * float(frac))
    if kind == "cut":
        data = data[:at]
    else:
        data[at] ^= 0x10
    bad = tmp_path / "bad.mcap"
    bad.write_bytes(bytes(data))
    try:
        r = read_recording(bad)
    except RecordingError as exc:
        with pytest.raises(RecordingError, match=re.escape(str(exc).splitlines()[0][:40])):
            read_step_arrays(bad)
        return
    a = read_step_arrays(bad)
    assert a["truncated"] == r["truncated"] and a["bytes_read"] == r["bytes_read"]
    assert np.array_equal(a["x"], np.array([s["x"] for s in r["steps"]]).reshape(len(r["steps"]), -1))


def test_float64_policy_recording_keeps_float64(tmp_path):
    rec = FlightRecorder(tmp_path / "w.mcap", 2, 1, 1, {"dtype": "float64"}).start()
    rec.record_step(1, 0, 0.1, 0, 0, [0.1, 1 / 3], [2 / 3], [1.0], (1, 2, 3, 4, 5))
    rec.close()
    s = read_recording(tmp_path / "w.mcap")["steps"][0]
    assert s["x"] == [0.1, 1 / 3] and s["y"] == [2 / 3]
