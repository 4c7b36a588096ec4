// Load-time weight layouts for kernels that read something other than the GGUF blocks.
//
// "Scales first" (Q4_0, Q8_0): each row of nb blocks {fp16 d; quants} keeps its size and place but
// becomes nb fp16 scales followed by the quants. Blocks are taken in chunks of 8 (b0 = 8c):
//   scales of a chunk in the order  b0, b0+2, b0+4, b0+6, b0+1, b0+3, b0+5, b0+7
//   so that after one vcvtph2ps an in-lane shuffle broadcasts the scales of a block pair (b, b+1)
//   to the two 128-bit halves;
//   Q4_0 quants: the 16 nibble bytes of each block, in block order (a pair is one 32-byte load);
//   Q8_0 quants: per pair, quants 0..15 of b, 0..15 of b+1, then 16..31 of b, 16..31 of b+1, so
//   a 32-byte load holds the same halves of two blocks as a Q4_0 pair's low (or high) nibbles.
// The last nb % 8 blocks keep block order and plain quants. Rows stay independent, so any row range
// of a repacked tensor is a repacked tensor.
#pragma once
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

// dst rows (n_rows rows of n elements, row_bytes apart in both) from src rows; src and dst must not overlap.
using repack_fn = void (*)(int64_t n, int64_t n_rows, const void* src, void* dst);

void repack_q4_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst);
void repack_q8_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst);

// Block b of a repacked row of nb blocks, as GGUF stores it (the inverse of the repack).
block_q4_0 scales_first_block_q4_0(const uint8_t* row, int64_t nb, int64_t b);
block_q8_0 scales_first_block_q8_0(const uint8_t* row, int64_t nb, int64_t b);

// Where block b's scale sits among a row's nb scales.
inline int64_t scales_first_slot(int64_t b, int64_t nb) {
    if (b >= nb / 8 * 8) return b;
    return (b & ~int64_t(7)) + (b & 1) * 4 + ((b & 7) >> 1);
}

}  // namespace phi2cpu
