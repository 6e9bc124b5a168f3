"""Protocol v1 device-side codec in C (COBS + CRC-16/CCITT-FALSE + packets), docs/protocol.md."""

from __future__ import annotations

from pathlib import Path

from .cgen import CODEC_STEM, banner

PROTO_H = """#ifndef EDGELIQUID_PROTO_H
#define EDGELIQUID_PROTO_H
#include <stddef.h>
#include <stdint.h>

#define ELQ_VERSION 1
#define ELQ_HELLO 1
#define ELQ_SENSOR 2
#define ELQ_ACTUATE 3
#define ELQ_STATUS 4
#define ELQ_MAX_COUNT 64
#define ELQ_HEADER 12
#define ELQ_MAX_PACKET (ELQ_HEADER + 4 * ELQ_MAX_COUNT + 2)
#define ELQ_MAX_FRAME (ELQ_MAX_PACKET + ELQ_MAX_PACKET / 254 + 2)

/* decode results: 0 ok, <0 one error kind each (the node counts the same kinds) */
#define ELQ_OK 0
#define ELQ_ERR_CRC (-1)
#define ELQ_ERR_COBS (-2)
#define ELQ_ERR_VERSION (-3)
#define ELQ_ERR_FLAGS (-4)
#define ELQ_ERR_LENGTH (-5)
#define ELQ_ERR_TYPE (-6)

typedef struct {
    uint8_t type;
    uint8_t flags;
    uint8_t count;
    uint16_t seq;
    uint32_t t_us;
    uint16_t ref_seq;
    float values[ELQ_MAX_COUNT];
} elq_packet;

typedef struct {
    uint8_t buf[ELQ_MAX_FRAME];
    size_t n;
    int overflow;
} elq_rx;

uint16_t elq_crc16(const uint8_t *data, size_t n);
size_t elq_cobs_encode(const uint8_t *in, size_t n, uint8_t *out);
int elq_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_n);
/* Whole frame for the wire (COBS + trailing 0x00) into out[ELQ_MAX_FRAME]; returns its length,
 * 0 if count > ELQ_MAX_COUNT. */
size_t elq_encode_frame(const elq_packet *p, uint8_t *out);
/* Decode one frame without its delimiter. */
int elq_decode_frame(const uint8_t *frame, size_t n, elq_packet *p);
/* Byte-at-a-time receiver: returns 1 when *p holds a new packet, 0 for nothing yet,
 * or an ELQ_ERR_* for a dropped frame; resynchronises at the next 0x00. */
void elq_rx_init(elq_rx *rx);
int elq_rx_push(elq_rx *rx, uint8_t byte, elq_packet *p);
#endif
"""

PROTO_C = """#include "edgeliquid_proto.h"
#include <string.h>

/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF), one table lookup per byte (512 B of flash) */
static const uint16_t elq_crc_table[256] = {
$crc_table
};

uint16_t elq_crc16(const uint8_t *data, size_t n)
{
    uint16_t crc = 0xFFFFu;
    size_t i;
    for (i = 0; i < n; ++i) {
        crc = (uint16_t)((uint16_t)(crc << 8) ^ elq_crc_table[(uint8_t)(crc >> 8) ^ data[i]]);
    }
    return crc;
}

size_t elq_cobs_encode(const uint8_t *in, size_t n, uint8_t *out)
{
    size_t read = 0, write = 1, code_at = 0;
    uint8_t code = 1;
    while (read < n) {
        if (in[read] == 0) {
            out[code_at] = code;
            code = 1;
            code_at = write++;
            read++;
        } else {
            out[write++] = in[read++];
            code++;
            if (code == 0xFF) {
                out[code_at] = code;
                code = 1;
                code_at = write++;
            }
        }
    }
    out[code_at] = code;
    return write;
}

int elq_cobs_decode(const uint8_t *in, size_t n, uint8_t *out, size_t *out_n)
{
    size_t read = 0, write = 0;
    while (read < n) {
        uint8_t code = in[read];
        size_t i;
        if (code == 0 || read + code > n) {
            return ELQ_ERR_COBS;
        }
        read++;
        for (i = 1; i < code; ++i) {
            if (in[read] == 0) {
                return ELQ_ERR_COBS;
            }
            out[write++] = in[read++];
        }
        if (code != 0xFF && read != n) {
            out[write++] = 0;
        }
    }
    *out_n = write;
    return ELQ_OK;
}

static void put16(uint8_t *b, uint16_t v) { b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v; b[1] = (uint8_t)(v >> 8); b[2] = (uint8_t)(v >> 16); b[3] = (uint8_t)(v >> 24);
}
static uint16_t get16(const uint8_t *b) { return (uint16_t)(b[0] | (b[1] << 8)); }
static uint32_t get32(const uint8_t *b)
{
    return (uint32_t)b[0] | ((uint32_t)b[1] << 8) | ((uint32_t)b[2] << 16) | ((uint32_t)b[3] << 24);
}

size_t elq_encode_frame(const elq_packet *p, uint8_t *out)
{
    uint8_t pkt[ELQ_MAX_PACKET];
    size_t n, len;
    int i;
    if (p->count > ELQ_MAX_COUNT) {
        return 0;
    }
    pkt[0] = ELQ_VERSION;
    pkt[1] = p->type;
    pkt[2] = p->flags;
    pkt[3] = p->count;
    put16(pkt + 4, p->seq);
    put32(pkt + 6, p->t_us);
    put16(pkt + 10, p->ref_seq);
    for (i = 0; i < p->count; ++i) {
        uint32_t u;
        memcpy(&u, &p->values[i], sizeof u);
        put32(pkt + ELQ_HEADER + 4 * i, u);
    }
    n = ELQ_HEADER + 4 * (size_t)p->count;
    put16(pkt + n, elq_crc16(pkt, n));
    len = elq_cobs_encode(pkt, n + 2, out);
    out[len] = 0;
    return len + 1;
}

int elq_decode_frame(const uint8_t *frame, size_t n, elq_packet *p)
{
    uint8_t pkt[ELQ_MAX_FRAME];
    size_t len = 0;
    int i, rc;
    if (n > ELQ_MAX_FRAME) {
        return ELQ_ERR_LENGTH;
    }
    rc = elq_cobs_decode(frame, n, pkt, &len);
    if (rc != ELQ_OK) {
        return rc;
    }
    if (len < ELQ_HEADER + 2) {
        return ELQ_ERR_LENGTH;
    }
    if (elq_crc16(pkt, len - 2) != get16(pkt + len - 2)) {
        return ELQ_ERR_CRC;
    }
    if (pkt[0] != ELQ_VERSION) {
        return ELQ_ERR_VERSION;
    }
    if (pkt[2] & 0x0Fu) {
        return ELQ_ERR_FLAGS;
    }
    if (pkt[1] < ELQ_HELLO || pkt[1] > ELQ_STATUS) {
        return ELQ_ERR_TYPE;
    }
    if (pkt[3] > ELQ_MAX_COUNT || len != ELQ_HEADER + 4 * (size_t)pkt[3] + 2) {
        return ELQ_ERR_LENGTH;
    }
    p->type = pkt[1];
    p->flags = pkt[2];
    p->count = pkt[3];
    p->seq = get16(pkt + 4);
    p->t_us = get32(pkt + 6);
    p->ref_seq = get16(pkt + 10);
    for (i = 0; i < p->count; ++i) {
        uint32_t u = get32(pkt + ELQ_HEADER + 4 * i);
        memcpy(&p->values[i], &u, sizeof u);
    }
    return ELQ_OK;
}

void elq_rx_init(elq_rx *rx)
{
    rx->n = 0;
    rx->overflow = 0;
}

int elq_rx_push(elq_rx *rx, uint8_t byte, elq_packet *p)
{
    if (byte != 0) {
        if (rx->n < ELQ_MAX_FRAME) {
            rx->buf[rx->n++] = byte;
        } else {
            rx->overflow = 1;
        }
        return 0;
    }
    if (rx->overflow) {
        rx->n = 0;
        rx->overflow = 0;
        return ELQ_ERR_LENGTH;
    }
    if (rx->n == 0) {
        return 0; /* empty frame: ignored */
    }
    {
        int rc = elq_decode_frame(rx->buf, rx->n, p);
        rx->n = 0;
        return rc == ELQ_OK ? 1 : rc;
    }
}
"""


def crc_table() -> list[int]:
    """CRC-16/CCITT-FALSE of each byte value shifted to the top (the codec's lookup table)."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
        table.append(crc)
    return table


def _table_c() -> str:
    t = [f"0x{v:04X}u" for v in crc_table()]
    return ",\n".join("    " + ", ".join(t[i : i + 8]) for i in range(0, 256, 8))


def codec_files(sha: str) -> dict[str, str]:
    """edgeliquid_proto.h/.c by file name (model-independent; the banner names the model anyway)."""
    b = banner(sha, "edgeliquid protocol v1 device codec")
    return {f"{CODEC_STEM}.h": b + PROTO_H, f"{CODEC_STEM}.c": b + PROTO_C.replace("$crc_table", _table_c())}


def write_codec(out: Path, sha: str) -> None:
    """Write edgeliquid_proto.h/.c into ``out`` (no link followed, see outdir.py)."""
    from .outdir import prepare, write_all

    files = codec_files(sha)
    write_all(prepare(out, list(files)), files)
