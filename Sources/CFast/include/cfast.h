// Small hot-path helpers in C for the migration stream.
#ifndef CFAST_H
#define CFAST_H
#include <stddef.h>
#include <stdint.h>

/// Continues a CRC-32C (Castagnoli) over `len` bytes; start with crc = 0. Uses the SSE4.2
/// `crc32` instruction when the CPU has it, a table otherwise.
uint32_t cfast_crc32c(uint32_t crc, const void *data, size_t len);
#endif
