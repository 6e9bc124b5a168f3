"""The generated C fast exp2 (firmware_export/fastexp_c.py) against double exp2 over a dense sample of
float32 arguments, and the fast-sigmoid float32 C with the explicit solvers against the reference."""

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import random_model

from edgeliquid.model.cell import LTCModel
from edgeliquid.model.file import read, save
from edgeliquid.model.guarantees import stability
from firmware_export import export_firmware
from firmware_export import harness as H
from firmware_export.fastexp_c import EXP2_N_LIMIT, EXP2_T_LIMIT, exp2_c

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

# Every float32 argument in a dense grid over the normal-result range [-126, 127.4] (1e6 points, the
# table's 1024 knots and their neighbours included) and the edges. Prints: the worst error in ulp of
# exp2 and exp2_n, the count where they differ, and the saturated values.
PROBE = r"""
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
EXP2_C

static double ulps(float got, double want)
{
    int e;
    frexp(want, &e); /* want = m 2^e, m in [0.5, 1): one float32 ulp is 2^(e - 24) */
    return fabs((double)got - want) / ldexp(1.0, e - 24);
}

static void probe(float t, double *worst, double *worst_n, long *differ)
{
    double want = exp2((double)t), u;
    float got = t_exp2(t);
    u = ulps(got, want);
    if (u > *worst) {
        *worst = u;
    }
    if (fabsf(t) <= N_LIMIT) {
        float gn = t_exp2_n(t);
        u = ulps(gn, want);
        if (u > *worst_n) {
            *worst_n = u;
        }
        *differ += memcmp(&gn, &got, sizeof got) != 0;
    }
}

int main(void)
{
    double worst = 0.0, worst_n = 0.0;
    long differ = 0, i, k;
    const long n = 1000000;
    for (i = 0; i <= n; ++i) {
        probe((float)(-126.0 + 253.4 * (double)i / (double)n), &worst, &worst_n, &differ);
    }
    for (k = -126 * 1024; k <= 127 * 1024; ++k) { /* the knots j/1024 and both float neighbours */
        float t = (float)k / 1024.0f;
        probe(t, &worst, &worst_n, &differ);
        probe(nextafterf(t, -INFINITY), &worst, &worst_n, &differ);
        probe(nextafterf(t, INFINITY), &worst, &worst_n, &differ);
    }
    probe(-126.0f, &worst, &worst_n, &differ);
    probe(127.4f, &worst, &worst_n, &differ);
    probe(0.0f, &worst, &worst_n, &differ);
    printf("%.6f %.6f %ld\n", worst, worst_n, differ);
    printf("%a %a %a %a\n", (double)t_exp2(-150.0f), (double)t_exp2(-T_LIMIT), (double)t_exp2(129.0f),
           (double)t_exp2(T_LIMIT));
    printf("%a %a\n", (double)(1.0f / (1.0f + t_exp2(T_LIMIT))), (double)(1.0f / (1.0f + t_exp2(-T_LIMIT))));
    return 0;
}
"""


@pytest.fixture(scope="module")
def probe_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("exp2")
    src = PROBE.replace("EXP2_C", exp2_c("t"))
    src = f"#define N_LIMIT {EXP2_N_LIMIT!r}f\n#define T_LIMIT {EXP2_T_LIMIT!r}f\n" + src
    (d / "probe.c").write_text(src)
    # -std=c99 contracts nothing and -O2 has no -ffast-math: the shifter's (t + s) - s stays
    subprocess.run(
        ["gcc", "-std=c99", "-O2", "-Wall", "-Werror", "-o", str(d / "probe"), str(d / "probe.c"), "-lm"],
        check=True,
        capture_output=True,
    )
    out = subprocess.run([str(d / "probe")], capture_output=True, text=True, check=True, timeout=120)
    return out.stdout.split("\n")


@needs_gcc
def test_c_exp2_within_2_ulp_dense(probe_out):
    worst, worst_n, differ = probe_out[0].split()
    assert float(worst) <= 2.0, worst  # docs/firmware.md: <= 2 ulp (measured ~1.3)
    assert float(worst_n) <= 2.0, worst_n
    assert float(worst) > 0.0  # the probe really compared something
    assert int(differ) == 0  # exp2_n is exp2 without the range check: the same bits


@needs_gcc
def test_c_exp2_saturates(probe_out):
    zero_a, zero_b, inf_a, inf_b = probe_out[1].split()
    assert float.fromhex(zero_a) == 0.0 and float.fromhex(zero_b) == 0.0
    assert inf_a == inf_b == "inf"
    lo, hi = probe_out[2].split()
    assert float.fromhex(lo) == 0.0 and float.fromhex(hi) == 1.0  # 1 / (1 + 2^t) exactly 0 or 1


# ------------------------------------------- the fast variant with the explicit solvers (host gcc)

SOLVERS = {"explicit_euler": (31, 0.3, False, 6), "rk4": (32, 0.5, True, 2)}


@pytest.fixture(scope="module")
def solver_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fast_solvers")
    out = {}
    for solver, (seed, density, mixed, unfolds) in SOLVERS.items():
        m = random_model(
            np.random.default_rng(seed), units=10, n_in=4, motors=2, density=density, mixed=mixed
        )
        m = LTCModel(
            m.config.replace(solver=solver, ode_unfolds=unfolds), m.params, m.roles, m.info, m.source
        )
        out[solver] = d / f"{solver}.onnx"
        save(m, out[solver])
    return out


@needs_gcc
@pytest.mark.parametrize("solver", list(SOLVERS))
def test_fast_sigmoid_explicit_solvers_match_reference(tmp_path, solver_files, solver):
    path: Path = solver_files[solver]
    model = read(path)
    out = tmp_path / solver
    export_firmware(path, out, "pol", fast_sigmoid=True)
    assert "pol_exp2" in (out / "pol.c").read_text() and "expf(" not in (out / "pol.c").read_text()
    steps = 2000
    bound = stability(model)[solver]["max_elapsed"]
    rng = np.random.default_rng(5)
    xs = rng.normal(0, 1, (steps, 4)).astype(np.float32)
    el = (rng.uniform(0.2, 1.0, steps) * bound).astype(np.float32)  # irregular, inside the bound
    s0 = rng.uniform(-0.5, 0.5, model.config.n_state).astype(np.float32)
    H.write_vectors(out, xs, el, s0, steps // 2)
    H.write_driver(out, "pol")
    exe = H.build_host(out, "pol")
    stdout = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got_y, got_s = H.parse_hex(stdout, steps, model.config.n_outputs, model.config.n_state)
    want_y, want_s = H.reference_outputs(model, xs, el, s0, steps // 2)
    scale = max(1.0, float(np.abs(want_y).max()))
    assert np.abs(got_y - want_y).max() / scale <= 1e-5
    assert np.abs(got_s - want_s).max() / scale <= 1e-5
