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
// The last nb % 8 blocks keep block order and plain quants.
//
// Rows then go in groups of 4 (rows 4g..4g+3), so that the 4-row GEMV reads one sequential stream
// instead of eight (measured: +40-50% GEMV bandwidth). A group's 4 * row_bytes hold, per chunk c,
// the 4 rows' 16 bytes of chunk scales, then for each block pair p = 0..3 the 4 rows' pair quants
// (32 bytes for Q4_0, 64 for Q8_0); after the chunks, each row's last nb % 8 blocks in turn (their
// scales, then their quants). The last n_rows % 4 rows stay single "scales first" rows. So any range
// of whole groups, or running to the last row, of a repacked tensor is a repacked tensor.
#pragma once
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

// The version of the layouts below; a repack cache (model/repack_cache.h) written for another
// version is not used. Raise it with every change to what a repack writes.
constexpr int kRepackLayoutVersion = 5;

// dst rows (n_rows rows of n elements, row_bytes apart in both) from src rows; src and dst must not overlap.
using repack_fn = void (*)(int64_t n, int64_t n_rows, const void* src, void* dst);

void repack_q4_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst);
void repack_q8_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst);

// "Rows in lanes" (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS): rows go in groups of 8 (rows 8g..8g+7), and a group's 8 * row_bytes hold,
// per 256-value block b, 1152 bytes (the 8 rows' 144 bytes rearranged) at b * 1152:
//   [0, 16)     the 8 rows' fp16 d, [16, 32) their fp16 dmin;
//   [32, 128)   their 12 scale bytes, byte k of row i at 32 + 8k + i (so one 64-bit word holds
//               byte k of all 8 rows);
//   [128, 1152) their quants: for chunk c (values 64c..64c+63: sub-blocks 2c, 2c+1) and group g
//               (0..7), 32 bytes at 128 + (8c + g) * 32 whose bytes 4i..4i+3 are row i's
//               qs[32c + 4g .. 32c + 4g + 3] (low nibbles: sub-block 2c, values 4g..4g+3; high
//               nibbles: sub-block 2c + 1, the same values).
// The last n_rows % 8 rows keep their GGUF blocks. So any range of whole groups, or running to the
// last row, of a repacked tensor is a repacked tensor.
void repack_q4_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst);
constexpr int kK4GroupRows = 8;
constexpr size_t kK4GroupBlockBytes = 8 * sizeof(block_q4_K);

// The same for Q5_K: per block, 1408 bytes (8 x 176): [0, 128) as in Q4_K;
//   [128, 384)  for group g (0..7), 32 bytes at 128 + 32g whose bytes 4i..4i+3 are row i's
//               qh[4g .. 4g + 3] (bit j: the fifth bit of values 4g..4g+3 of sub-block j);
//   [384, 1408) the qs as in Q4_K (at 384 + (8c + g) * 32).
void repack_q5_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst);
constexpr size_t kQ5GroupBlockBytes = 8 * sizeof(block_q5_K);

// The same for Q6_K: per block, 1680 bytes (8 x 210):
//   [0, 16)     the 8 rows' fp16 d;
//   [16, 144)   their 16 scales, scale j of row i at 16 + 8j + i;
//   [144, 1680) for half h (values 128h..128h+127) and group g (0..7), 96 bytes at
//               144 + (8h + g) * 96: three 32-byte vectors whose bytes 4i..4i+3 are row i's
//               ql[64h + 4g ..], ql[64h + 32 + 4g ..] and qh[32h + 4g ..] (4 bytes each), so
//               each vector holds what the GGUF bytes at those places hold for values
//               4g..4g+3 of the half's four 32-value chunks (quant/blocks.h).
void repack_q6_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst);
constexpr size_t kQ6GroupBlockBytes = 8 * sizeof(block_q6_K);

// The same for Q2_K: per block, 672 bytes (8 x 84):
//   [0, 16)     the 8 rows' fp16 d, [16, 32) their fp16 dmin;
//   [32, 160)   their 16 scale bytes, byte j of row i at 32 + 8j + i;
//   [160, 672)  for half h (values 128h..128h+127) and group g (0..7), 32 bytes at
//               160 + (8h + g) * 32 whose bytes 4i..4i+3 are row i's qs[32h + 4g .. 32h + 4g + 3]
//               (bit pair s: values 128h + 32s + 4g .. +3).
void repack_q2_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst);
constexpr size_t kQ2GroupBlockBytes = 8 * sizeof(block_q2_K);

// And for Q3_K: per block, 880 bytes (8 x 110):
//   [0, 16)     the 8 rows' fp16 d;
//   [16, 112)   their 12 scale bytes, byte k of row i at 16 + 8k + i;
//   [112, 368)  for group g (0..7), 32 bytes at 112 + 32g whose bytes 4i..4i+3 are row i's
//               hmask[4g .. 4g + 3];
//   [368, 880)  the qs as in Q2_K (at 368 + (8h + g) * 32).
void repack_q3_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst);
constexpr size_t kQ3GroupBlockBytes = 8 * sizeof(block_q3_K);

// And for IQ4_XS: per block, 1088 bytes (8 x 136):
//   [0, 16)     the 8 rows' fp16 d, [16, 32) their 16-bit scales_h, [32, 64) their 4 scales_l bytes
//               (row i's at 32 + 4i);
//   [64, 1088)  for sub-block j and group g (0..3), 32 bytes at 64 + (4j + g) * 32 whose bytes
//               4i..4i+3 are row i's qs[16j + 4g .. 16j + 4g + 3] (low nibbles: values 4g..4g+3 of
//               sub-block j, high nibbles: values 16 + 4g..16 + 4g + 3).
void repack_iq4_xs_rows8(int64_t n, int64_t n_rows, const void* src, void* dst);
constexpr size_t kXsGroupBlockBytes = 8 * sizeof(block_iq4_xs);

// Byte offsets inside a repacked tensor of nb blocks per row: where block b of row r has its
// fp16 scale, and its quants (Q8_0: `half` 0 or 1 picks quants 0..15 or 16..31, 16 bytes each;
// Q4_0: the block's 16 bytes, half 0).
struct RepackedLayout {
    int64_t nb, n_rows;
    size_t quant_bytes;  // per block: 16 (Q4_0) or 32 (Q8_0)

    size_t row_bytes() const { return size_t(nb) * (2 + quant_bytes); }
    size_t chunk_bytes() const { return 4 * 8 * (2 + quant_bytes); }
    size_t pair_bytes() const { return 2 * quant_bytes; }
    bool grouped(int64_t r) const { return r < n_rows / 4 * 4; }
    size_t scale(int64_t r, int64_t b) const;
    size_t quants(int64_t r, int64_t b, int half) const;

    // Start of the 8-block chunk holding block b in row r's 4-row group (grouped rows).
    size_t chunk(int64_t r, int64_t b) const;
    // Where row r keeps blocks [first, nb) in plain "scales first" form (their scales, then their
    // quants): all of a single row (first = 0), or a grouped row's last nb % 8 blocks.
    struct Plain {
        size_t base;
        int64_t first;
    };
    Plain plain(int64_t r) const;
};

// Block b of row r of a repacked tensor, as GGUF stores it (the inverse of the repack).
block_q4_0 repacked_block_q4_0(const uint8_t* w, int64_t nb, int64_t n_rows, int64_t r, int64_t b);
block_q8_0 repacked_block_q8_0(const uint8_t* w, int64_t nb, int64_t n_rows, int64_t r, int64_t b);

// Where block b's scale sits among a row's nb scales.
inline int64_t scales_first_slot(int64_t b, int64_t nb) {
    if (b >= nb / 8 * 8) return b;
    return (b & ~int64_t(7)) + (b & 1) * 4 + ((b & 7) >> 1);
}

// Inline: the GEMM panel packer and the repack call these per row and block.
inline size_t RepackedLayout::chunk(int64_t r, int64_t b) const {
    return size_t(r / 4) * 4 * row_bytes() + size_t(b / 8) * chunk_bytes();
}

inline RepackedLayout::Plain RepackedLayout::plain(int64_t r) const {
    if (!grouped(r)) return {size_t(r) * row_bytes(), 0};
    const int64_t nb8 = nb / 8 * 8;
    return {chunk(r, nb) + size_t(r % 4) * size_t(nb - nb8) * (2 + quant_bytes), nb8};
}

inline size_t RepackedLayout::scale(int64_t r, int64_t b) const {
    const size_t slot = size_t(scales_first_slot(b, nb));
    if (grouped(r) && b < nb / 8 * 8) return chunk(r, b) + size_t(r % 4) * 16 + slot % 8 * 2;
    const Plain p = plain(r);
    return p.base + (slot - size_t(p.first)) * 2;
}

inline size_t RepackedLayout::quants(int64_t r, int64_t b, int half) const {
    // within a pair: Q4_0 blocks b, b+1 follow each other; Q8_0 halves are 32 bytes apart
    const size_t in_pair = size_t(b & 1) * 16 + size_t(half) * 32;
    if (b < nb / 8 * 8) {
        if (grouped(r))
            return chunk(r, b) + 4 * 16 + (size_t((b & 7) >> 1) * 4 + size_t(r % 4)) * pair_bytes() + in_pair;
        return plain(r).base + size_t(nb) * 2 + size_t(b & ~int64_t(1)) * quant_bytes + in_pair;
    }
    const Plain p = plain(r);  // the last nb % 8 blocks: plain block order
    return p.base + size_t(nb - p.first) * 2 + size_t(b - p.first) * quant_bytes + size_t(half) * 16;
}

}  // namespace phi2cpu
