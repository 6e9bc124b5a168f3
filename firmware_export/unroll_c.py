"""Straight-line synapse passes (``unroll=True``): one block of C statements per synapse.

The CSR loops (``PREFIX_cnt``, ``PREFIX_src``, ``PREFIX_par``) cost per synapse a source-index
load, its address arithmetic and the loop's counter, pointer and branch; unrolled, the source is
a constant offset into ``v`` and each parameter a constant offset from one base pointer, in the
same order and with the same float or integer operations as the loop, so the unrolled C gives the
loop's bits (tests/test_firmware_unroll.py). The price is code: ~80 B of Cortex-M4 code per
synapse instead of ~17 B of parameters; docs/firmware.md, "Unrolled synapses".
"""

from __future__ import annotations

from string import Template

import numpy as np

from .layout import FirmwareModel, Synapses

#: Hides the parameter array's address from the optimiser: each parameter stays one load at a
#: constant offset from a base register, instead of being folded into a literal-pool constant
#: of its own (a second copy in flash, and pools in the middle of a long function).
OPAQUE = Template("""#ifdef __GNUC__
#define ${UP}_OPAQUE(p) __asm__("" : "+r"(p))
#else
#define ${UP}_OPAQUE(p) ((void)0)
#endif
""")


def csr_pass(syn: Synapses, units: int, head: str, body: str, tail: str) -> str:
    """C statements of one pass over ``syn`` (sorted by destination): per destination ``head``,
    then ``body`` per synapse, then ``tail``. Template fields: ``$j`` the destination, ``$s`` the
    synapse's source, ``$o`` the offset of its 4 parameters, ``$o1`` to ``$o3`` the offsets of
    the 2nd to 4th."""
    counts = np.bincount(syn.dst, minlength=units)
    h, b, t = Template(head), Template(body), Template(tail)
    out = []
    k = 0
    for j in range(units):
        out.append(h.substitute(j=j))
        for _ in range(int(counts[j])):
            o = 4 * k
            out.append(b.substitute(j=j, s=int(syn.src[k]), o=o, o1=o + 1, o2=o + 2, o3=o + 3))
            k += 1
        out.append(t.substitute(j=j))
    return "".join(out)


def indexed(expr: str, var: str = "j") -> str:
    """``expr`` with every ``[var]`` index made the template field ``[$var]`` (for :func:`csr_pass`)."""
    return expr.replace(f"[{var}]", f"[${var}]")


def float_unrolled(
    fm: FirmwareModel,
    name: str,
    *,
    fused: bool,
    sact: str,
    uact: str,
    ract: str,
    mac_n: str,
    mac_nv: str,
    inline: str,
) -> dict[str, str]:
    """The float variant's unrolled pieces: ``locals`` and ``sensory`` (the step's), ``defs`` (the
    OPAQUE macro and, fused, ``NAME_sweep_u``: the recurrent sweep with ``NAME_{uact}``) and, for
    the explicit solvers, ``deriv`` (``NAME_{ract}``). ``mac_n``/``mac_nv``: the loop's
    accumulations (``p[3]``, ``[j]`` indices), so each synapse does what the loop does."""
    up, units = name.upper(), fm.cfg.units
    mac = mac_n.replace("p[3]", "p[$o3]")

    def syn(act: str, vec: str, ind: str) -> str:
        return f"{ind}a = {name}_{act}(p + $o, {vec}[$s]);\n{ind}n = {mac};\n{ind}d += a;\n"

    def decl(syns, ind: str) -> str:
        return f"{ind}float n, d{', a' if syns.count else ''};\n"

    sensory = (
        "    /* sensory synapses do not depend on v: once per step (sorted by destination, unrolled) */\n"
        f"    p = s_par;\n    {up}_OPAQUE(p);\n    {{\n"
        + decl(fm.sens, "        ")
        + csr_pass(
            fm.sens,
            units,
            "        n = 0.0f;\n        d = 0.0f;\n",
            syn(sact, "xm", "        "),
            "        ns[$j] = n;\n        ds[$j] = d;\n",
        )
        + "    }\n"
    )
    out = {"locals": "    const float *p;\n    int i, j, k, t;\n", "sensory": sensory}
    defs = "\n" + OPAQUE.substitute(UP=up)
    if fused:
        head = f"    n = {indexed(mac_nv)};\n    d = ds[$j];\n"
        body = csr_pass(fm.rec, units, head, syn(uact, "v", "    "), "    vn[$j] = n / d;\n")
        defs += f"""
/* one fused sub-step, unrolled: {name}_sweep's operations in its order, each synapse's source and
 * parameter offset a constant (firmware_export/unroll_c.py) */
{inline} void {name}_sweep_u(const float *v, float *vn, const float *cmt, const float *ns,
                                   const float *ds)
{{
    const float *p = r_par;
{decl(fm.rec, "    ")}    {up}_OPAQUE(p);
{body}}}
"""
    else:
        tail = (
            "    f[$j] = (gleak_vleak[$j] + (n + ns[$j]) - (gleak[$j] + (d + ds[$j])) * v[$j])"
            " * inv_cm[$j];\n"
        )
        body = csr_pass(fm.rec, units, "    n = 0.0f;\n    d = 0.0f;\n", syn(ract, "v", "    "), tail)
        out["deriv"] = f"""
/* dv/dt of the LTC ODE at v (sensory sums ns, ds held over the step); f[U] written; unrolled */
static void {name}_deriv(const float *v, const float *ns, const float *ds, float *f)
{{
    const float *p = r_par;
{decl(fm.rec, "    ")}    {up}_OPAQUE(p);
{body}}}
"""
    out["defs"] = defs
    return out
