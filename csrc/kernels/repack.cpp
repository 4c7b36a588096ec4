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

block_q4_0 repacked_block_q4_0(const uint8_t* w, int64_t nb, int64_t n_rows, int64_t r, int64_t b) {
    return block_at<block_q4_0>(w, nb, n_rows, r, b);
}

block_q8_0 repacked_block_q8_0(const uint8_t* w, int64_t nb, int64_t n_rows, int64_t r, int64_t b) {
    return block_at<block_q8_0>(w, nb, n_rows, r, b);
}

}  // namespace phi2cpu
