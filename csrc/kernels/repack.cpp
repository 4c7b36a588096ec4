#include "kernels/repack.h"

#include <cstring>

namespace phi2cpu {

namespace {

template <typename Block>
void repack(int64_t n, int64_t n_rows, const void* src, void* dst) {
    constexpr size_t qb = sizeof(Block) - 2;
    const int64_t nb = n / QK8_0;  // 32 quants per block in both types
    const RepackedLayout L{nb, n_rows, qb};
    uint8_t* out = static_cast<uint8_t*>(dst);
    for (int64_t r = 0; r < n_rows; r++) {
        const Block* in = reinterpret_cast<const Block*>(static_cast<const uint8_t*>(src) + size_t(r) * L.row_bytes());
        for (int64_t b = 0; b < nb; b++) {
            std::memcpy(out + L.scale(r, b), &in[b].d, 2);
            for (int half = 0; half < int(qb / 16); half++)
                std::memcpy(out + L.quants(r, b, half), reinterpret_cast<const uint8_t*>(in[b].qs) + half * 16, 16);
        }
    }
}

template <typename Block>
Block block_at(const uint8_t* w, int64_t nb, int64_t n_rows, int64_t r, int64_t b) {
    constexpr size_t qb = sizeof(Block) - 2;
    const RepackedLayout L{nb, n_rows, qb};
    Block blk;
    std::memcpy(&blk.d, w + L.scale(r, b), 2);
    for (int half = 0; half < int(qb / 16); half++)
        std::memcpy(reinterpret_cast<uint8_t*>(blk.qs) + half * 16, w + L.quants(r, b, half), 16);
    return blk;
}

}  // namespace

void repack_q4_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack<block_q4_0>(n, n_rows, src, dst);
}

void repack_q8_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack<block_q8_0>(n, n_rows, src, dst);
}

namespace {

// The rows-in-lanes repacks (repack.h): put(a, o, i) writes row i's block a into the 8-row block at o;
// the last n_rows % 8 rows are copied as they are.
template <typename Block, typename Put>
void repack_rows8(int64_t n, int64_t n_rows, const void* src, void* dst, Put put) {
    const int64_t nb = n / QK_K;
    const size_t row_bytes = size_t(nb) * sizeof(Block);
    const uint8_t* s = static_cast<const uint8_t*>(src);
    uint8_t* d = static_cast<uint8_t*>(dst);
    const int64_t grouped = n_rows / kK4GroupRows * kK4GroupRows;
    for (int64_t r0 = 0; r0 < grouped; r0 += kK4GroupRows)
        for (int64_t b = 0; b < nb; b++)
            for (int i = 0; i < kK4GroupRows; i++)
                put(reinterpret_cast<const Block*>(s + size_t(r0 + i) * row_bytes)[b],
                    d + size_t(r0) * row_bytes + size_t(b) * kK4GroupRows * sizeof(Block), i);
    std::memcpy(d + size_t(grouped) * row_bytes, s + size_t(grouped) * row_bytes, size_t(n_rows - grouped) * row_bytes);
}

// Q2_K / Q3_K: bytes 4i..4i+3 of quant vector (h, g) are row i's qs[32h + 4g .. 32h + 4g + 3].
inline void put_k2_quants(const uint8_t* qs, uint8_t* o, int i) {
    for (int h = 0; h < 2; h++)
        for (int g = 0; g < 8; g++) std::memcpy(o + (8 * h + g) * 32 + 4 * i, qs + 32 * h + 4 * g, 4);
}

// Q4_K / Q5_K: row i's d, dmin and 12 scale bytes at [0, 128) of the 8-row block.
template <typename Block>
void put_k4_head(const Block& a, uint8_t* o, int i) {
    std::memcpy(o + 2 * i, &a.d, 2);
    std::memcpy(o + 16 + 2 * i, &a.dmin, 2);
    for (int k = 0; k < K_SCALE_SIZE; k++) o[32 + 8 * k + i] = a.scales[k];
}

// Q4_K / Q5_K: bytes 4i..4i+3 of quant vector (c, g) are row i's qs[32c + 4g .. 32c + 4g + 3].
inline void put_k4_quants(const uint8_t* qs, uint8_t* o, int i) {
    for (int c = 0; c < 4; c++)
        for (int g = 0; g < 8; g++) std::memcpy(o + (8 * c + g) * 32 + 4 * i, qs + 32 * c + 4 * g, 4);
}

}  // namespace

void repack_q4_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack_rows8<block_q4_K>(n, n_rows, src, dst, [](const block_q4_K& a, uint8_t* o, int i) {
        put_k4_head(a, o, i);
        put_k4_quants(a.qs, o + 128, i);
    });
}

void repack_q5_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack_rows8<block_q5_K>(n, n_rows, src, dst, [](const block_q5_K& a, uint8_t* o, int i) {
        put_k4_head(a, o, i);
        for (int g = 0; g < 8; g++) std::memcpy(o + 128 + 32 * g + 4 * i, a.qh + 4 * g, 4);
        put_k4_quants(a.qs, o + 384, i);
    });
}

void repack_q6_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack_rows8<block_q6_K>(n, n_rows, src, dst, [](const block_q6_K& a, uint8_t* o, int i) {
        std::memcpy(o + 2 * i, &a.d, 2);
        for (int j = 0; j < QK_K / 16; j++) std::memcpy(o + 16 + 8 * j + i, &a.scales[j], 1);
        for (int h = 0; h < 2; h++)
            for (int g = 0; g < 8; g++) {
                uint8_t* v = o + 144 + (8 * h + g) * 96 + 4 * i;
                std::memcpy(v, a.ql + 64 * h + 4 * g, 4);
                std::memcpy(v + 32, a.ql + 64 * h + 32 + 4 * g, 4);
                std::memcpy(v + 64, a.qh + 32 * h + 4 * g, 4);
            }
    });
}

void repack_q2_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack_rows8<block_q2_K>(n, n_rows, src, dst, [](const block_q2_K& a, uint8_t* o, int i) {
        std::memcpy(o + 2 * i, &a.d, 2);
        std::memcpy(o + 16 + 2 * i, &a.dmin, 2);
        for (int j = 0; j < QK_K / 16; j++) o[32 + 8 * j + i] = a.scales[j];
        put_k2_quants(a.qs, o + 160, i);
    });
}

void repack_q3_K_rows8(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack_rows8<block_q3_K>(n, n_rows, src, dst, [](const block_q3_K& a, uint8_t* o, int i) {
        std::memcpy(o + 2 * i, &a.d, 2);
        for (int k = 0; k < K_SCALE_SIZE; k++) o[16 + 8 * k + i] = a.scales[k];
        for (int g = 0; g < 8; g++) std::memcpy(o + 112 + 32 * g + 4 * i, a.hmask + 4 * g, 4);
        put_k2_quants(a.qs, o + 368, i);
    });
}

void repack_iq4_xs_rows8(int64_t n, int64_t n_rows, const void* src, void* dst) {
    repack_rows8<block_iq4_xs>(n, n_rows, src, dst, [](const block_iq4_xs& a, uint8_t* o, int i) {
        std::memcpy(o + 2 * i, &a.d, 2);
        std::memcpy(o + 16 + 2 * i, &a.scales_h, 2);
        std::memcpy(o + 32 + 4 * i, a.scales_l, 4);
        for (int j = 0; j < 8; j++)
            for (int g = 0; g < 4; g++) std::memcpy(o + 64 + (4 * j + g) * 32 + 4 * i, a.qs + 16 * j + 4 * g, 4);
    });
}

block_q4_0 repacked_block_q4_0(const uint8_t* w, int64_t nb, int64_t n_rows, int64_t r, int64_t b) {
    return block_at<block_q4_0>(w, nb, n_rows, r, b);
}

block_q8_0 repacked_block_q8_0(const uint8_t* w, int64_t nb, int64_t n_rows, int64_t r, int64_t b) {
    return block_at<block_q8_0>(w, nb, n_rows, r, b);
}

}  // namespace phi2cpu
