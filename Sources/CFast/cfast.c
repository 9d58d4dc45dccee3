#include "cfast.h"
#include <string.h>

static uint32_t table[256];
static int table_ready;

static void build_table(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
    table_ready = 1;
}

static uint32_t crc_soft(uint32_t c, const uint8_t *p, size_t n) {
    if (!table_ready) build_table();
    while (n--) c = table[(c ^ *p++) & 0xff] ^ (c >> 8);
    return c;
}

/* Multiplies a and b, polynomials over GF(2) in the CRC's bit-reflected order, modulo
 * the CRC-32C polynomial (as zlib's multmodp). */
static uint32_t multmodp(uint32_t a, uint32_t b) {
    uint32_t m = (uint32_t)1 << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0) break;
        }
        m >>= 1;
        b = (b & 1) ? (b >> 1) ^ 0x82F63B78u : b >> 1;
    }
    return p;
}

/* Bytes per lane of the three-lane loop: the crc32 instruction takes 3 cycles but can start
 * every cycle, so three independent lanes run about three times as fast as one. */
#define LANE 8192
/* x^(8·LANE) and x^(16·LANE) modulo the polynomial: what a lane's register is multiplied by
 * when one or two lanes of bytes follow it (zlib's x2nmodp(LANE, 3) for CRC-32C). */
#define SHIFT1 0x28461564u
#define SHIFT2 0xBF455269u

__attribute__((target("sse4.2")))
static uint32_t crc_hw(uint32_t c, const uint8_t *p, size_t n) {
    uint64_t c64 = c;
    while (n >= 3 * LANE) {
        uint64_t a = c64, b = 0, d = 0;
        for (size_t i = 0; i < LANE; i += 8) {
            uint64_t wa, wb, wd;
            memcpy(&wa, p + i, 8);
            memcpy(&wb, p + LANE + i, 8);
            memcpy(&wd, p + 2 * LANE + i, 8);
            a = __builtin_ia32_crc32di(a, wa);
            b = __builtin_ia32_crc32di(b, wb);
            d = __builtin_ia32_crc32di(d, wd);
        }
        /* A register is linear in its start value: the lanes combine by shifting. */
        c64 = multmodp(SHIFT2, (uint32_t)a) ^ multmodp(SHIFT1, (uint32_t)b) ^ (uint32_t)d;
        p += 3 * LANE;
        n -= 3 * LANE;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        c64 = __builtin_ia32_crc32di(c64, w);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c64;
    while (n--) c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}

uint32_t cfast_crc32c(uint32_t crc, const void *data, size_t len) {
    static int hw = -1;
    if (hw < 0) hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
    uint32_t c = ~crc;
    c = hw ? crc_hw(c, data, len) : crc_soft(c, data, len);
    return ~c;
}
