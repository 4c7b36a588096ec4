#include "kernels/repack.h"

#include <cstring>

namespace phi2cpu {
namespace {

// Byte offset, within a Q8_0 row's quants, of quant j of block b (see repack.h).
inline size_t q8_0_quant_offset(int64_t b, int64_t nb, int j) {
    if (b >= nb / 8 * 8) return size_t(b) * QK8_0 + size_t(j);
    return size_t(b & ~int64_t(1)) * QK8_0 + size_t(j / 16) * 32 + size_t(b & 1) * 16 + size_t(j % 16);
}

}  // namespace

void repack_q4_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst) {
    const int64_t nb = n / QK4_0;
    const size_t rb = size_t(nb) * sizeof(block_q4_0);
    for (int64_t r = 0; r < n_rows; r++) {
        const auto* in = reinterpret_cast<const block_q4_0*>(static_cast<const uint8_t*>(src) + size_t(r) * rb);
        uint8_t* out = static_cast<uint8_t*>(dst) + size_t(r) * rb;
        uint8_t* quants = out + size_t(nb) * 2;
        for (int64_t b = 0; b < nb; b++) {
            std::memcpy(out + size_t(scales_first_slot(b, nb)) * 2, &in[b].d, 2);
            std::memcpy(quants + size_t(b) * (QK4_0 / 2), in[b].qs, QK4_0 / 2);
        }
    }
}

void repack_q8_0_scales_first(int64_t n, int64_t n_rows, const void* src, void* dst) {
    const int64_t nb = n / QK8_0;
    const size_t rb = size_t(nb) * sizeof(block_q8_0);
    for (int64_t r = 0; r < n_rows; r++) {
        const auto* in = reinterpret_cast<const block_q8_0*>(static_cast<const uint8_t*>(src) + size_t(r) * rb);
        uint8_t* out = static_cast<uint8_t*>(dst) + size_t(r) * rb;
        uint8_t* quants = out + size_t(nb) * 2;
        for (int64_t b = 0; b < nb; b++) {
            std::memcpy(out + size_t(scales_first_slot(b, nb)) * 2, &in[b].d, 2);
            for (int j = 0; j < QK8_0; j += 16) std::memcpy(quants + q8_0_quant_offset(b, nb, j), in[b].qs + j, 16);
        }
    }
}

block_q4_0 scales_first_block_q4_0(const uint8_t* row, int64_t nb, int64_t b) {
    block_q4_0 blk;
    std::memcpy(&blk.d, row + size_t(scales_first_slot(b, nb)) * 2, 2);
    std::memcpy(blk.qs, row + size_t(nb) * 2 + size_t(b) * (QK4_0 / 2), QK4_0 / 2);
    return blk;
}

block_q8_0 scales_first_block_q8_0(const uint8_t* row, int64_t nb, int64_t b) {
    block_q8_0 blk;
    std::memcpy(&blk.d, row + size_t(scales_first_slot(b, nb)) * 2, 2);
    for (int j = 0; j < QK8_0; j += 16) std::memcpy(blk.qs + j, row + size_t(nb) * 2 + q8_0_quant_offset(b, nb, j), 16);
    return blk;
}

}  // namespace phi2cpu
