"""Build and run generated C against the reference: host gcc, and Cortex-M4 under qemu.

Test vectors are embedded as a generated header; the driver prints every output
(and the final state) as the hex of its float32 bits, so no decimal rounding
stands between the C and the comparison.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .cgen import c_array

HOST_FLAGS = ["-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-Wdouble-promotion", "-Wconversion"]
M4_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard", "-Os"]
M0_FLAGS = ["-mcpu=cortex-m0", "-mthumb", "-mfloat-abi=soft", "-Os"]

DRIVER = """#include "{name}.h"
#include "vectors.h"
#include <stdio.h>
#include <stdint.h>
#include <string.h>

static void put(float f)
{{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    printf("%08lx\\n", (unsigned long)u);
}}

int main(void)
{{
    float state[{UP}_STATE_SIZE];
    float y[{UP}_N_OUTPUTS];
    int t, k;
    memcpy(state, init_state, sizeof state);
    for (t = 0; t < T_STEPS; ++t) {{
        if (t == RESET_AT) {{
            {name}_reset(state);
        }}
        {name}_step(&xs[t * {UP}_N_INPUTS], state, el[t], y);
        for (k = 0; k < {UP}_N_OUTPUTS; ++k) {{
            put(y[k]);
        }}
    }}
    for (k = 0; k < {UP}_STATE_SIZE; ++k) {{
        put(state[k]);
    }}
    return 0;
}}
"""

# Cortex-M4 (qemu mps2-an386): vector table, FPU on, newlib's semihosting crt0 does the rest.
STARTUP = """#include <stdint.h>
#include <stdlib.h>
#include <string.h>
extern uint32_t __stack_top, __etext, __data_start__, __data_end__, __bss_start__, __bss_end__;
extern void initialise_monitor_handles(void);
extern int main(void);
void reset_handler(void);
void reset_handler(void)
{
    volatile uint32_t *cpacr = (volatile uint32_t *)0xE000ED88u;
    *cpacr |= (0xFu << 20);  /* CP10/CP11 full access: enable the FPU */
    __asm volatile ("dsb");
    __asm volatile ("isb");
    memcpy(&__data_start__, &__etext, (size_t)((char *)&__data_end__ - (char *)&__data_start__));
    memset(&__bss_start__, 0, (size_t)((char *)&__bss_end__ - (char *)&__bss_start__));
    initialise_monitor_handles();  /* semihosting stdio */
    exit(main());                  /* semihosting SYS_EXIT ends qemu */
}
void _init(void);
void _fini(void);
void _init(void) { }  /* no C++ constructors here; crti/crtn are not linked (-nostartfiles) */
void _fini(void) { }
static void fault(void) { for (;;) { } }
__attribute__((section(".isr_vector"), used))
const void *const vectors[16] = {
    &__stack_top, (const void *)reset_handler, (const void *)fault, (const void *)fault,
    (const void *)fault, (const void *)fault, (const void *)fault, 0, 0, 0, 0,
    (const void *)fault, (const void *)fault, 0, (const void *)fault, (const void *)fault,
};
"""

LINKER = """MEMORY
{
  FLASH (rx)  : ORIGIN = 0x00000000, LENGTH = 4M
  RAM   (rwx) : ORIGIN = 0x20000000, LENGTH = 4M
}
ENTRY(reset_handler)
SECTIONS
{
  .text : { KEEP(*(.isr_vector)) *(.text*) *(.rodata*) KEEP(*(.init)) KEEP(*(.fini))
            . = ALIGN(4); } > FLASH
  .ARM.exidx : { *(.ARM.exidx*) } > FLASH
  __etext = .;
  .data : { __data_start__ = .; *(.data*) . = ALIGN(4); __data_end__ = .; } > RAM AT > FLASH
  .bss : { __bss_start__ = .; __bss_start = .; *(.bss*) *(COMMON) . = ALIGN(4);
           __bss_end__ = .; _end = .; end = .; __end__ = .; } > RAM
  __stack_top = ORIGIN(RAM) + LENGTH(RAM);
  __HeapLimit = __stack_top - 0x10000;
}
"""


def write_vectors(out: Path, xs: np.ndarray, el: np.ndarray, init_state: np.ndarray, reset_at: int) -> None:
    t = xs.shape[0]
    text = (
        f"#define T_STEPS {t}\n#define RESET_AT {reset_at}\n"
        + c_array("float", "xs", xs.astype(np.float32), per_line=8)
        + c_array("float", "el", el.astype(np.float32), per_line=8)
        + c_array("float", "init_state", init_state.astype(np.float32), per_line=8)
    )
    (out / "vectors.h").write_text(text)


def write_driver(out: Path, name: str) -> None:
    (out / "driver.c").write_text(DRIVER.format(name=name, UP=name.upper()))


NORMALIZE_DRIVER = """#include "{name}.h"
#include "raws.h"
#include <stdio.h>
#include <stdint.h>
#include <string.h>

int main(void)
{{
    float x[{UP}_N_INPUTS];
    int32_t xq[{UP}_N_INPUTS];
    uint32_t u;
    int t, i;
    (void)xq;
    for (t = 0; t < N_ROWS; ++t) {{
        {name}_normalize(&raws[t * {UP}_N_INPUTS], x);
        for (i = 0; i < {UP}_N_INPUTS; ++i) {{
            memcpy(&u, &x[i], sizeof u);
            printf("f %08lx\\n", (unsigned long)u);
        }}
#ifdef {UP}_Q_FRAC_BITS
        {name}_normalize_q(&raws[t * {UP}_N_INPUTS], xq);
        for (i = 0; i < {UP}_N_INPUTS; ++i) {{
            printf("q %ld\\n", (long)xq[i]);
        }}
#endif
    }}
    return 0;
}}
"""


def write_normalize_driver(out: Path, name: str, raws: np.ndarray) -> None:
    """``norm_driver.c``: NAME_normalize (and NAME_normalize_q when fixed point) on each row of raws."""
    text = f"#define N_ROWS {raws.shape[0]}\n" + c_array("float", "raws", raws.astype(np.float32), per_line=8)
    (out / "raws.h").write_text(text)
    (out / "norm_driver.c").write_text(NORMALIZE_DRIVER.format(name=name, UP=name.upper()))


def parse_normalize(stdout: str, rows: int, n_in: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(x as float32 [rows, n_in], xq as int64 [rows, n_in] or None) from the driver's output."""
    fs = [int(w[2:], 16) for w in stdout.splitlines() if w.startswith("f ")]
    qs = [int(w[2:]) for w in stdout.splitlines() if w.startswith("q ")]
    if len(fs) != rows * n_in:
        raise RuntimeError(f"expected {rows * n_in} normalised values, got {len(fs)}")
    x = np.array(fs, np.uint32).view(np.float32).reshape(rows, n_in)
    return x, (np.array(qs, np.int64).reshape(rows, n_in) if qs else None)


def tool(name: str) -> str | None:
    return shutil.which(name)


def build_host(
    out: Path, name: str, extra: list[str] | None = None, exe: str = "host_test", driver: str = "driver.c"
) -> Path:
    cc = os.environ.get("CC", "gcc")
    cmd = [
        cc,
        *HOST_FLAGS,
        *(extra or []),
        "-o",
        str(out / exe),
        str(out / driver),
        str(out / f"{name}.c"),
        "-lm",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out / exe


def build_m4(
    out: Path, name: str, driver: str = "driver.c", elf_name: str = "m4_test.elf", opt: str | None = None
) -> Path:
    """Link a driver and the generated model for the MPS2 AN386 (Cortex-M4F) under qemu; ``opt``
    (e.g. "-O2") replaces M4_FLAGS' -Os."""
    (out / "startup.c").write_text(STARTUP)
    (out / "mps2.ld").write_text(LINKER)
    elf = out / elf_name
    cmd = [
        "arm-none-eabi-gcc",
        *[f for f in M4_FLAGS if not (opt and f.startswith("-O"))],
        *([opt] if opt else []),
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wdouble-promotion",
        "--specs=rdimon.specs",
        "-nostartfiles",
        "-T",
        str(out / "mps2.ld"),
        "-o",
        str(elf),
        str(out / "startup.c"),
        str(out / driver),
        str(out / f"{name}.c"),
        "-lm",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return elf


def qemu_cmd(elf: Path, *extra: str) -> list[str]:
    """qemu-system-arm on an MPS2 AN386 board (Cortex-M4), semihosting on, no display."""
    return [
        "qemu-system-arm",
        "-M",
        "mps2-an386",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        *extra,
        "-kernel",
        str(elf),
    ]


def count_instructions(elf: Path, timeout: float = 600) -> int:
    """Instructions an MPS2 AN386 image executes from reset to exit: qemu single-steps with
    ``-d exec,nochain`` (one ``Trace`` line per instruction), the log read in chunks."""
    log = elf.with_suffix(".exec.log")
    try:
        subprocess.run(
            qemu_cmd(elf, "-singlestep", "-d", "exec,nochain", "-D", str(log)),
            capture_output=True,
            timeout=timeout,
            check=True,
        )
        with open(log, "rb") as f:
            return sum(chunk.count(b"Trace ") for chunk in iter(lambda: f.read(1 << 20), b""))
    finally:
        log.unlink(missing_ok=True)


def run_qemu(elf: Path, timeout: float = 300) -> str:
    cmd = qemu_cmd(elf)
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    return r.stdout


def object_size(obj_cmd: list[str], out: Path, src: Path, flags: list[str]) -> dict[str, int]:
    """Compile one generated .c for a target and read text/data/bss with arm-none-eabi-size."""
    obj = out / (src.stem + "_" + flags[0].split("=")[-1] + ".o")
    subprocess.run(
        [*obj_cmd, *flags, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", "-o", str(obj), str(src)],
        check=True,
        capture_output=True,
        text=True,
    )
    r = subprocess.run(["arm-none-eabi-size", "-A", str(obj)], check=True, capture_output=True, text=True)
    sizes = {"text": 0, "rodata": 0, "data": 0, "bss": 0}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1].isdigit():
            sec = parts[0]
            for key in sizes:
                if sec == f".{key}" or sec.startswith(f".{key}."):
                    sizes[key] += int(parts[1])
    sizes["flash"] = sizes["text"] + sizes["rodata"] + sizes["data"]
    sizes["ram"] = sizes["data"] + sizes["bss"]
    return sizes


def parse_hex(stdout: str, steps: int, n_out: int, n_state: int) -> tuple[np.ndarray, np.ndarray]:
    vals = [int(w, 16) for w in stdout.split() if len(w) == 8]
    need = steps * n_out + n_state
    if len(vals) < need:
        raise RuntimeError(f"expected {need} values from the test program, got {len(vals)}")
    f = np.array(vals[:need], np.uint32).view(np.float32).astype(np.float64)
    return f[: steps * n_out].reshape(steps, n_out), f[steps * n_out :]


def reference_outputs(model, xs, el, init_state, reset_at):
    """The numpy reference (float64) on the same vectors: ys [T, M], final state."""
    from edgeliquid.runtime.policy import from_model

    ref = from_model(model, "reference", np.float64)
    ref.state = init_state
    ys = []
    for t in range(xs.shape[0]):
        if t == reset_at:
            ref.reset()
        ys.append(ref.step(np.asarray(xs[t], np.float32), float(np.float32(el[t]))).copy())
    return np.array(ys), ref.state


# ------------------------------------------------ Cortex-M0 (qemu microbit): division census
#
# The fixed-point step on a Cortex-M0 (no divider, no FPU), bare metal without newlib: the
# division helpers the object calls are wrapped (ld --wrap) by counters, and with
# ``profile=True`` qemu logs every executed instruction (-singlestep -d exec), attributed to
# the step and to the division routines it calls. Instructions, not cycles: qemu does not
# model the M0's timing.

M0_DIV_HELPERS = ("__aeabi_ldivmod", "__aeabi_idiv", "__aeabi_uldivmod", "__aeabi_uidiv")

M0_MAIN = """#include <stdint.h>
#include "{name}.h"
#include "qvectors.h"
extern uint32_t __stack_top, __bss_start__, __bss_end__;
volatile uint32_t {counters};
int main(void);
void reset_handler(void);
static int semi(int op, const void *arg)
{{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile ("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}}
static void say(const char *s, uint32_t u)
{{
    char b[16];
    int i = 15;
    b[i] = 0;
    b[--i] = '\\n';
    do {{
        b[--i] = (char)('0' + u % 10u);
        u /= 10u;
    }} while (u && i > 0);
    semi(0x04, s);   /* SYS_WRITE0 */
    semi(0x04, &b[i]);
}}
void reset_handler(void)
{{
    uint32_t *p;
    for (p = &__bss_start__; p < &__bss_end__; ++p) {{
        *p = 0;
    }}
    main();
    semi(0x18, (const void *)0x20026u);  /* SYS_EXIT, ADP_Stopped_ApplicationExit */
    for (;;) {{ }}
}}
static void fault(void) {{ for (;;) {{ }} }}
__attribute__((section(".isr_vector"), used))
const void *const vectors[4] = {{&__stack_top, (const void *)reset_handler, (const void *)fault,
                                 (const void *)fault}};
int main(void)
{{
    int32_t sq[{UP}_STATE_SIZE] = {{0}}, yq[{UP}_N_OUTPUTS];
    int t;
    for (t = 0; t < T_STEPS; ++t) {{
        {name}_step_q(&xq[t * {UP}_N_INPUTS], sq, eq[t], yq);
    }}
{report}    return 0;
}}
"""

M0_WRAP_MACRO = """    .syntax unified
    .thumb
    .macro counted name, counter
    .global __wrap_\\name
    .type __wrap_\\name, %function
    .thumb_func
__wrap_\\name:
    push {r4, r5}
    ldr r4, =\\counter
    ldr r5, [r4]
    adds r5, #1
    str r5, [r4]
    ldr r4, =__real_\\name
    mov ip, r4
    pop {r4, r5}
    bx ip
    .ltorg
    .endm
"""

M0_LINKER = """MEMORY
{
  FLASH (rx)  : ORIGIN = 0x00000000, LENGTH = 256K
  RAM   (rwx) : ORIGIN = 0x20000000, LENGTH = 16K
}
ENTRY(reset_handler)
SECTIONS
{
  .text : { KEEP(*(.isr_vector)) *(.text*) *(.rodata*) . = ALIGN(4); } > FLASH
  .data : { *(.data*) } > RAM AT > FLASH
  .bss (NOLOAD) : { __bss_start__ = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end__ = .; } > RAM
  __stack_top = ORIGIN(RAM) + LENGTH(RAM);
}
"""


def build_m0(out: Path, name: str, xq: np.ndarray, elapsed_q: np.ndarray) -> Path:
    """Bare-metal Cortex-M0 image (qemu microbit) stepping ``NAME_step_q`` over Q vectors, the
    division helpers wrapped by counters; ``out/m0_census.elf``."""
    counters = [f"n{h}" for h in M0_DIV_HELPERS]
    # read the counters before say(), whose own u / 10 would count
    report = f"    const uint32_t seen[{len(counters)}] = {{{', '.join(counters)}}};\n" + "".join(
        f'    say("{h} ", seen[{i}]);\n' for i, h in enumerate(M0_DIV_HELPERS)
    )
    (out / "qvectors.h").write_text(
        f"#define T_STEPS {xq.shape[0]}\n"
        + c_array("int32_t", "xq", xq.astype(np.int64), per_line=8)
        + c_array("int32_t", "eq", elapsed_q.astype(np.int64), per_line=8)
    )
    (out / "m0_main.c").write_text(
        M0_MAIN.format(name=name, UP=name.upper(), counters=", ".join(counters), report=report)
    )
    wrap = M0_WRAP_MACRO + "".join(f"    counted {h}, n{h}\n" for h in M0_DIV_HELPERS)
    (out / "m0_wrap.s").write_text(wrap)
    (out / "m0.ld").write_text(M0_LINKER)
    elf = out / "m0_census.elf"
    cmd = [
        "arm-none-eabi-gcc",
        *M0_FLAGS,
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-nostartfiles",
        "-nostdlib",
        "-T",
        str(out / "m0.ld"),
        "-Wl,--wrap=" + ",--wrap=".join(M0_DIV_HELPERS),
        "-o",
        str(elf),
        str(out / "m0_main.c"),
        str(out / f"{name}.c"),
        str(out / "m0_wrap.s"),
        "-lgcc",
        "-lc",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return elf


def run_m0(elf: Path, name: str, profile: bool = False, timeout: float = 120) -> dict:
    """Run a :func:`build_m0` image under qemu (microbit, Cortex-M0).

    Returns ``{"calls": {helper: count}}`` and, with ``profile``, ``"instructions"`` (executed
    inside ``NAME_step_q``, everything it calls included) and ``"division_instructions"`` (inside
    the wrapped division helpers and what they call).
    """
    log = elf.with_suffix(".exec.log")
    extra = ["-singlestep", "-d", "exec,nochain", "-D", str(log)] if profile else []
    cmd = [
        "qemu-system-arm",
        "-M",
        "microbit",
        "-nographic",
        "-monitor",
        "none",
        "-serial",
        "none",
        "-semihosting-config",
        "enable=on,target=native",
        *extra,
        "-kernel",
        str(elf),
    ]
    r = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=timeout)
    text = r.stdout + r.stderr
    calls = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in M0_DIV_HELPERS:
            calls[parts[0]] = int(parts[1])
    if set(calls) != set(M0_DIV_HELPERS):
        raise RuntimeError(f"M0 run printed no division census: {text[-300:]!r}")
    result: dict = {"calls": calls}
    if profile:
        result.update(_attribute(log, name))
    return result


def _attribute(log: Path, name: str) -> dict:
    """Instructions executed in the step and in the division helpers, from qemu's exec log
    (one line per instruction with -singlestep; the line ends with the function's symbol)."""
    step, div = f"{name}_step_q", "__wrap___aeabi_"
    in_step = in_div = False
    total = division = 0
    with open(log) as f:
        for line in f:
            if not line.startswith("Trace"):
                continue
            sym = line.rsplit(None, 1)[-1]
            if sym == "main":
                in_step = in_div = False
                continue
            if sym == step:
                in_step, in_div = True, False
            elif sym.startswith(div):
                in_div = True
            elif in_div and not sym.startswith("__"):
                in_div = False  # back in the generated code (qsigmoid, qmul, ...)
            if in_step:
                total += 1
                division += in_div
    return {"instructions": total, "division_instructions": division}
