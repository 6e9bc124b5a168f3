"""Board support for qemu's ``mps2-an386`` (ARM MPS2 with the AN386 FPGA image: Cortex-M4F).

Memory map and devices as qemu models them (hw/arm/mps2.c, hw/char/cmsdk-apb-uart.c,
hw/timer/cmsdk-apb-timer.c): 4 MiB code memory at 0x0, 4 MiB SRAM at 0x20000000, 25 MHz
peripheral clock; CMSDK APB UART0 at 0x40004000 (RX IRQ 0), CMSDK APB timers at 0x40000000
(TIMER0, IRQ 8) and 0x40001000 (TIMER1, IRQ 9).

* UART0: polled (DATA 0x00, STATE 0x04: bit 0 TX full, bit 1 RX full; CTRL 0x08: TX/RX enable,
  bit 3 RX interrupt enable; INTSTATUS/INTCLEAR 0x0C; BAUDDIV 0x10). qemu's UART holds one
  received byte and takes the next from the host side only once that one was read, so bytes
  wait in the pty, never overrun.
* Time: TIMER0 runs free from 0xFFFFFFFF down at 25 MHz; ``board_now`` extends it to 64 bits
  (it is read at least every millisecond, far inside the 171 s wrap).
* Idle: the loop runs with interrupts masked (PRIMASK) and sleeps in WFI, which still wakes on
  a pending, enabled interrupt: a received byte (UART0 RX) or TIMER1's 1 kHz tick. No handler
  ever runs, so no instruction of an interrupt handler lands inside a measured control cycle.
  Under ``qemu -icount shift=N,sleep=on`` an idle core lets virtual time follow the host clock,
  so the sensor timeout is in (close to) real milliseconds.
"""

from __future__ import annotations

BOARD = "mps2-an386"
TICK_HZ = 25_000_000  # the board's peripheral clock: TIMER0 ticks
CPU_FLAGS = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
STACK_BYTES = 1536

BOARD_H = """#ifndef EDGELIQUID_BOARD_H
#define EDGELIQUID_BOARD_H
#include <stdint.h>

#define BOARD_TICK_HZ 25000000u /* board_now() ticks per second */

void board_init(void);
uint64_t board_now(void);       /* monotonic, BOARD_TICK_HZ */
int board_getc(void);           /* a received byte, or -1 */
void board_write(const uint8_t *data, uint32_t n);
void board_idle(void);          /* sleep until a byte arrives or the next 1 ms tick */
#endif
"""

BOARD_C = """#include "board.h"
#include <string.h>

#define REG(addr) (*(volatile uint32_t *)(addr))
#define UART0 0x40004000u
#define UART_DATA REG(UART0 + 0x00u)
#define UART_STATE REG(UART0 + 0x04u)
#define UART_CTRL REG(UART0 + 0x08u)
#define UART_INTCLEAR REG(UART0 + 0x0Cu)
#define UART_BAUDDIV REG(UART0 + 0x10u)
#define TIMER0 0x40000000u
#define TIMER1 0x40001000u
#define T_CTRL(t) REG((t) + 0x00u)
#define T_VALUE(t) REG((t) + 0x04u)
#define T_RELOAD(t) REG((t) + 0x08u)
#define T_INTCLEAR(t) REG((t) + 0x0Cu)
#define NVIC_ISER0 REG(0xE000E100u)
#define NVIC_ICPR0 REG(0xE000E280u)
#define SCB_CPACR REG(0xE000ED88u)
#define IRQ_UART0_RX 0u
#define IRQ_TIMER1 9u

extern uint32_t __etext, __data_start__, __data_end__, __bss_start__, __bss_end__, __stack_top;
extern int main(void);
void reset_handler(void);

static uint32_t last_count;
static uint64_t high;

void board_init(void)
{
    UART_BAUDDIV = 25000000u / 115200u; /* qemu ignores the rate but wants a valid divisor */
    UART_CTRL = 0x1u | 0x2u | 0x8u;     /* TX, RX, RX interrupt (wakes WFI; never taken) */
    T_RELOAD(TIMER0) = 0xFFFFFFFFu;
    T_VALUE(TIMER0) = 0xFFFFFFFFu;
    T_CTRL(TIMER0) = 0x1u;              /* enabled, no interrupt: the time base */
    T_RELOAD(TIMER1) = BOARD_TICK_HZ / 1000u - 1u;
    T_VALUE(TIMER1) = BOARD_TICK_HZ / 1000u - 1u;
    T_CTRL(TIMER1) = 0x1u | 0x8u;       /* enabled, interrupt: the 1 kHz wake-up */
    NVIC_ISER0 = (1u << IRQ_UART0_RX) | (1u << IRQ_TIMER1);
}

uint64_t board_now(void)
{
    uint32_t c = ~T_VALUE(TIMER0); /* counts up */
    if (c < last_count) {
        high += (uint64_t)1 << 32;
    }
    last_count = c;
    return high | c;
}

int board_getc(void)
{
    if (UART_STATE & 0x2u) {
        return (int)(UART_DATA & 0xFFu);
    }
    return -1;
}

void board_write(const uint8_t *data, uint32_t n)
{
    uint32_t i;
    for (i = 0; i < n; ++i) {
        while (UART_STATE & 0x1u) {
        }
        UART_DATA = data[i];
    }
}

void board_idle(void)
{
    if (!(UART_STATE & 0x2u)) {
        __asm volatile("wfi" ::: "memory"); /* PRIMASK set: wakes on a pending IRQ, runs no handler */
    }
    UART_INTCLEAR = 0x2u;
    T_INTCLEAR(TIMER1) = 0x1u;
    NVIC_ICPR0 = (1u << IRQ_UART0_RX) | (1u << IRQ_TIMER1);
}

void reset_handler(void)
{
    __asm volatile("cpsid i" ::: "memory");
    SCB_CPACR |= (0xFu << 20); /* CP10/CP11: enable the FPU */
    __asm volatile("dsb");
    __asm volatile("isb");
    memcpy(&__data_start__, &__etext, (uint32_t)((char *)&__data_end__ - (char *)&__data_start__));
    memset(&__bss_start__, 0, (uint32_t)((char *)&__bss_end__ - (char *)&__bss_start__));
    main();
    for (;;) {
    }
}

static void fault(void)
{
    for (;;) {
    }
}

__attribute__((section(".isr_vector"), used)) const void *const vectors[16 + 16] = {
    &__stack_top, (const void *)reset_handler, (const void *)fault, (const void *)fault,
    (const void *)fault, (const void *)fault, (const void *)fault, 0, 0, 0, 0,
    (const void *)fault, (const void *)fault, 0, (const void *)fault, (const void *)fault,
    (const void *)fault, (const void *)fault, (const void *)fault, (const void *)fault,
    (const void *)fault, (const void *)fault, (const void *)fault, (const void *)fault,
    (const void *)fault, (const void *)fault, (const void *)fault, (const void *)fault,
    (const void *)fault, (const void *)fault, (const void *)fault, (const void *)fault,
};
"""

LINKER = f"""/* qemu mps2-an386: 4 MiB code memory at 0x0, 4 MiB SRAM at 0x20000000. The stack is a
 * reserved block in RAM, so .data + .bss + .stack is all the RAM the image uses. */
MEMORY
{{
  FLASH (rx)  : ORIGIN = 0x00000000, LENGTH = 4M
  RAM   (rwx) : ORIGIN = 0x20000000, LENGTH = 4M
}}
ENTRY(reset_handler)
SECTIONS
{{
  .text : {{ KEEP(*(.isr_vector)) *(.text*) *(.rodata*) . = ALIGN(4); }} > FLASH
  .ARM.exidx : {{ *(.ARM.exidx*) }} > FLASH
  __etext = .;
  .data : {{ __data_start__ = .; *(.data*) . = ALIGN(4); __data_end__ = .; }} > RAM AT > FLASH
  .bss (NOLOAD) : {{ __bss_start__ = .; *(.bss*) *(COMMON) . = ALIGN(4); __bss_end__ = .; }} > RAM
  .stack (NOLOAD) : {{ . = ALIGN(8); . = . + {STACK_BYTES}; __stack_top = .; }} > RAM
}}
"""


def qemu_args(elf: str, icount_shift: int) -> list[str]:
    """qemu-system-arm running ``elf`` on this board, UART0 on a new pty (path on stderr)."""
    return [
        "qemu-system-arm",
        "-M",
        BOARD,
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "pty",
        "-icount",
        f"shift={icount_shift},sleep=on",
        "-kernel",
        elf,
    ]
