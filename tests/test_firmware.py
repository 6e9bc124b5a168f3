"""Generated C against the numpy reference: host gcc, Cortex-M4 under qemu, the codec both ways."""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgeliquid import protocol as P
from edgeliquid.modelfile import save
from firmware_export import CodegenError, export_firmware
from firmware_export import harness as H
from firmware_export.cgen import check_name
from helpers import random_model

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "edgeliquid" / "data" / "cartpole_ncp.onnx"
needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None,
                               reason="arm-none-eabi-gcc not installed (apt-get install gcc-arm-none-eabi "
                                      "libnewlib-arm-none-eabi)")
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None,
                                reason="qemu-system-arm not installed (apt-get install qemu-system-arm)")


def _vectors(rng, n_in, n_state, steps):
    xs = rng.normal(0, 1, (steps, n_in)).astype(np.float32)
    el = rng.uniform(0.05, 3.0, steps).astype(np.float32)   # irregular sampling
    s0 = rng.uniform(-0.5, 0.5, n_state).astype(np.float32)  # non-zero initial state
    return xs, el, s0, steps // 2                            # and a reset midway


def _model_file(tmp, kind):
    if kind == "demo":
        return DEMO
    rng = np.random.default_rng({"sparse": 1, "dense": 2, "mixed": 3}[kind])
    m = random_model(rng, units=12, n_in=5, motors=3, density=0.25 if kind != "dense" else 1.0,
                     mixed=kind == "mixed")
    p = tmp / f"{kind}.onnx"
    save(m, p)
    return p


def _run_host(tmp, path, name, steps, **kw):
    from edgeliquid.modelfile import read

    model = read(path)
    out = tmp / name
    export_firmware(path, out, name, **kw)
    rng = np.random.default_rng(7)
    xs, el, s0, reset_at = _vectors(rng, model.config.n_inputs, model.config.n_state, steps)
    H.write_vectors(out, xs, el, s0, reset_at)
    H.write_driver(out, name)
    exe = H.build_host(out, name)
    got_y, got_s = H.parse_hex(subprocess.run([str(exe)], capture_output=True, text=True,
                                              check=True).stdout, steps, model.config.n_outputs,
                               model.config.n_state)
    want_y, want_s = H.reference_outputs(model, xs, el, s0, reset_at)
    scale = max(1.0, float(np.abs(want_y).max()))
    return np.abs(got_y - want_y).max(axis=1) / scale, np.abs(got_s - want_s).max() / scale, out


@needs_gcc
@pytest.mark.parametrize("kind", ["demo", "sparse", "dense", "mixed"])
def test_float_c_matches_reference_10k_steps(tmp_path, kind):
    err, err_state, _ = _run_host(tmp_path, _model_file(tmp_path, kind), f"m_{kind}", 10_000)
    assert err.max() <= 1e-5, err.max()
    assert err_state <= 1e-5
    # no drift: the error in the last 1000 steps is no worse than in the first 1000
    assert err[-1000:].max() <= max(2 * err[:1000].max(), 1e-6)


@needs_gcc
def test_fast_sigmoid_variant_within_bound(tmp_path):
    err, _, out = _run_host(tmp_path, _model_file(tmp_path, "sparse"), "fast", 2000, fast_sigmoid=True)
    assert err.max() <= 2e-5, err.max()
    # the sigmoid itself, against double precision, over its useful range
    (out / "sig.c").write_text('#include <stdio.h>\n#include <stdint.h>\n#include "fast.c"\n'
                               'int main(void){int i; for(i=-4000;i<=4000;++i){float x=(float)i/200.0f;'
                               'printf("%.9e\\n",(double)fast_sigmoid(x));} return 0;}\n')
    subprocess.run(["gcc", "-std=c99", "-O2", "-o", str(out / "sig"), str(out / "sig.c"), "-lm"],
                   check=True, cwd=out)
    got = np.array(subprocess.run([str(out / "sig")], capture_output=True, text=True).stdout.split(), float)
    x = np.arange(-4000, 4001) / 200.0
    assert np.abs(got - 1 / (1 + np.exp(-x))).max() <= 1e-6


@needs_gcc
@pytest.mark.parametrize("kind", ["demo", "sparse", "dense"])
def test_fixed_point_within_documented_bound(tmp_path, kind):
    err, err_state, out = _run_host(tmp_path, _model_file(tmp_path, kind), f"q_{kind}", 5000,
                                    fixed_point=True)
    man = json.loads((out / "manifest.json").read_text())
    assert man["fixed_point"]["frac_bits"] >= 15
    # docs/firmware.md: <= 1e-3 of the output scale per step (measured ~1e-4)
    assert err.max() <= 1e-3, err.max()
    assert err[-500:].max() <= 1e-3


def test_fixed_point_refuses_mixed_memory(tmp_path):
    with pytest.raises(CodegenError, match="mixed_memory"):
        export_firmware(_model_file(tmp_path, "mixed"), tmp_path / "x", "x", fixed_point=True)


@pytest.mark.parametrize("bad", ["int", "3abc", "a-b", "__x", ""])
def test_names_checked(bad):
    with pytest.raises(CodegenError):
        check_name(bad)


def test_banner_interface_and_no_mutable_globals(tmp_path):
    export_firmware(DEMO, tmp_path, "cp")
    h, c = (tmp_path / "cp.h").read_text(), (tmp_path / "cp.c").read_text()
    assert "generated by edgeliquid from model sha256" in h and "do not edit" in c
    for decl in ("#define CP_N_INPUTS 4", "#define CP_N_OUTPUTS 1", "#define CP_STATE_SIZE 12",
                 "void cp_reset(float *state);",
                 "void cp_step(const float *x, float *state, float elapsed, float *y);"):
        assert decl in h
    for line in c.splitlines():
        if line.startswith("static ") and "[" in line and "=" in line:
            assert line.startswith("static const ")
    assert "malloc" not in c


@needs_gcc
def test_two_models_link_into_one_firmware(tmp_path):
    export_firmware(DEMO, tmp_path, "a")
    export_firmware(_model_file(tmp_path, "sparse"), tmp_path, "b")
    (tmp_path / "main.c").write_text('#include "a.h"\n#include "b.h"\nint main(void){float s[A_STATE_SIZE];'
                                     'float t[B_STATE_SIZE]; float x[5]={0}; float y[3];'
                                     'a_reset(s); b_reset(t); a_step(x,s,1.0f,y); b_step(x,t,1.0f,y);'
                                     'return 0;}\n')
    subprocess.run(["gcc", *H.HOST_FLAGS, "-o", "two", "main.c", "a.c", "b.c", "-lm"], check=True,
                   cwd=tmp_path)


# ----------------------------------------------------------------- Cortex-M targets

@needs_arm
@needs_qemu
def test_m4_under_qemu_matches_reference(tmp_path):
    from edgeliquid.modelfile import read

    model = read(DEMO)
    out = tmp_path / "m4"
    export_firmware(DEMO, out, "cp")
    steps = 2000
    xs, el, s0, reset_at = _vectors(np.random.default_rng(3), 4, model.config.n_state, steps)
    H.write_vectors(out, xs, el, s0, reset_at)
    H.write_driver(out, "cp")
    elf = H.build_m4(out, "cp")
    got_y, got_s = H.parse_hex(H.run_qemu(elf), steps, 1, model.config.n_state)
    want_y, want_s = H.reference_outputs(model, xs, el, s0, reset_at)
    scale = max(1.0, float(np.abs(want_y).max()))
    assert np.abs(got_y - want_y).max() / scale <= 1e-5
    assert np.abs(got_s - want_s).max() / scale <= 1e-5


@needs_arm
def test_cross_compiles_for_m4f_and_m0(tmp_path):
    export_firmware(DEMO, tmp_path / "f", "cp")
    export_firmware(DEMO, tmp_path / "q", "cp", fixed_point=True)
    m4 = H.object_size(["arm-none-eabi-gcc"], tmp_path / "f", tmp_path / "f" / "cp.c", H.M4_FLAGS)
    m0 = H.object_size(["arm-none-eabi-gcc"], tmp_path / "q", tmp_path / "q" / "cp.c", H.M0_FLAGS)
    assert m4["ram"] == 0 and m0["ram"] == 0       # no global mutable state
    assert 0 < m4["flash"] <= 8192 and 0 < m0["flash"] <= 4096


# --------------------------------------------------------------------- codec both ways

CODEC_MAIN = r"""
#include "edgeliquid_proto.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv)
{
    elq_rx rx; elq_packet p; int c, rc, i;
    if (argc > 1 && strcmp(argv[1], "encode") == 0) {
        unsigned type, seq, ref, count; unsigned long t;
        while (scanf("%u %u %lu %u %u", &type, &seq, &t, &ref, &count) == 5) {
            uint8_t out[ELQ_MAX_FRAME]; size_t n;
            memset(&p, 0, sizeof p);
            p.type = (uint8_t)type; p.seq = (uint16_t)seq; p.t_us = (uint32_t)t;
            p.ref_seq = (uint16_t)ref; p.count = (uint8_t)count;
            for (i = 0; i < (int)count; ++i) { unsigned long u; if (scanf("%lx", &u) != 1) return 2;
                uint32_t w = (uint32_t)u; memcpy(&p.values[i], &w, 4); }
            n = elq_encode_frame(&p, out);
            for (i = 0; i < (int)n; ++i) printf("%02x", out[i]);
            printf("\n");
        }
        return 0;
    }
    elq_rx_init(&rx);
    while ((c = getchar()) != EOF) {
        rc = elq_rx_push(&rx, (uint8_t)c, &p);
        if (rc == 1) {
            printf("OK %u %u %lu %u %u", p.type, p.seq, (unsigned long)p.t_us, p.ref_seq, p.count);
            for (i = 0; i < p.count; ++i) { uint32_t u; memcpy(&u, &p.values[i], 4); printf(" %08lx", (unsigned long)u); }
            printf("\n");
        } else if (rc < 0) {
            printf("ERR %d\n", rc);
        }
    }
    return 0;
}
"""
KIND_OF = {-1: "crc", -2: "cobs", -3: "version", -4: "flags", -5: "length", -6: "type"}


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("codec")
    export_firmware(DEMO, d, "cp")
    (d / "codec_main.c").write_text(CODEC_MAIN)
    subprocess.run(["gcc", *H.HOST_FLAGS, "-Wno-conversion", "-o", "codec", "codec_main.c",
                    "edgeliquid_proto.c"], check=True, cwd=d)
    return d / "codec"


def _c_decode(codec, data: bytes):
    out = subprocess.run([str(codec)], input=data, capture_output=True, check=True).stdout.decode()
    return out.split("\n")[:-1]


def test_python_frames_decoded_by_c(codec):
    rng = np.random.default_rng(0)
    frames, want = b"\x00", []
    for i in range(50):
        vals = rng.normal(size=int(rng.integers(0, 65))).astype(np.float32)
        t = int(rng.integers(0, 2**32))
        frames += P.encode_frame(int(rng.integers(1, 5)), (65530 + i) & 0xFFFF, t, vals.tolist(), ref_seq=i)
        want.append(vals)
    lines = _c_decode(codec, frames)
    assert len(lines) == 50 and all(line.startswith("OK") for line in lines)
    for line, vals, i in zip(lines, want, range(50)):
        parts = line.split()
        assert int(parts[2]) == (65530 + i) & 0xFFFF and int(parts[4]) == i
        got = np.array([int(h, 16) for h in parts[6:]], np.uint32).view(np.float32)
        np.testing.assert_array_equal(got, vals)


def test_malformed_frames_same_verdict_in_c_and_python(codec):
    good = P.encode_frame(P.SENSOR, 1, 2, [1.0, 2.0])
    body = bytearray(P.cobs.decode(good[:-1]) if hasattr(P, "cobs") else b"")
    from cobs import cobs

    body = bytearray(cobs.decode(good[:-1]))

    def resign(b):
        b = bytes(b[:-2])
        return cobs.encode(b + P.crc16(b).to_bytes(2, "little")) + b"\x00"

    cases = [bytes([good[0]]) + bytes([good[1] ^ 0x10]) + good[2:],  # bit flip -> crc
             resign(bytearray([2]) + body[1:]),                      # version
             resign(body[:2] + bytearray([1]) + body[3:]),           # flags
             resign(body[:3] + bytearray([5]) + body[4:]),           # count mismatch
             resign(body[:1] + bytearray([9]) + body[2:]),           # type
             b"\x05\x01\x00",                                        # cobs / length
             good[: len(good) // 2] + b"\x00"]                       # truncated
    for frame in cases:
        c_line = _c_decode(codec, frame + good)
        py_kinds = []
        for fr in P.Packetizer().feed(frame):
            try:
                P.decode_frame(fr)
                py_kinds.append("ok")
            except P.DecodeError as e:
                py_kinds.append(e.kind)
        c_kinds = [KIND_OF[int(line.split()[1])] for line in c_line if line.startswith("ERR")]
        assert c_kinds == py_kinds, (frame, c_line, py_kinds)
        assert c_line[-1].startswith("OK 2 1 2")  # the next good frame survives


def test_c_frames_decoded_by_python(codec):
    vals = np.array([0.5, -1.25, 3e-38, 65504.0], np.float32)
    spec = f"3 65535 4294967295 17 4 " + " ".join(f"{u:08x}" for u in vals.view(np.uint32)) + "\n"
    spec += "4 0 0 0 0\n"
    out = subprocess.run([str(codec), "encode"], input=spec.encode(), capture_output=True,
                         check=True).stdout.decode().split()
    frames = [bytes.fromhex(h) for h in out]
    pkt = P.decode_frame(frames[0][:-1])
    assert (pkt.type, pkt.seq, pkt.t_us, pkt.ref_seq) == (3, 65535, 4294967295, 17)
    np.testing.assert_array_equal(np.array(pkt.values, np.float32), vals)
    assert frames[0] == P.encode_frame(3, 65535, 4294967295, vals.tolist(), ref_seq=17)
    assert P.decode_frame(frames[1][:-1]).type == 4
