// The multi-row GEMV driver shared by the AVX2 and AVX-512 decode kernels, over repacked weights
// (kernels/repack.h): a 4-row group is one sequential stream, its four rows share every activation
// load, 8 weight scales convert with one vcvtph2ps, and a block pair's quants come with one (Q4_0)
// or two (Q8_0) 32-byte loads. The last n_rows % 4 rows are single "scales first" rows. A kernel
// file supplies the pair and tail arithmetic. Internal linkage throughout: each including file is
// compiled for its own ISA and keeps its own copy.
#pragma once
#include <vector>

#include "kernels/repack.h"
#include "kernels/x86/cpu_x86.h"
#include "kernels/x86/simd_x86.h"

namespace phi2cpu {
namespace x86 {
namespace {

constexpr int kRows = 4;
constexpr int64_t kChunk = 8;  // blocks per scale vector

inline __m256i load32(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline __m256 load_scales8(const uint8_t* d) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(d)));
}
inline void prefetch(const uint8_t* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

// The activation row as the kernels want it, built once per call. Per block, in scale-slot order:
// its f32 scale d and c = 8 * d * (sum of its quants), what Q4_0's unsigned nibbles q = value/d + 8
// owe back (sum (q - 8) x = sum q x - 8 sum x). Per pair (b, b+1) of a whole chunk: lo = quants
// 0..15 of b and of b+1, hi = quants 16..31 of both, matching the weights' pair halves.
struct alignas(32) Quants32 {
    int8_t q[32];
};
struct GemvAct {
    std::vector<float> d, c;
    std::vector<Quants32> lo, hi;
    size_t prefetch = 0;  // gemv_prefetch_bytes() (cpu_x86.h), read once per call
};

const GemvAct& gemv_act(const block_q8_0* x, int64_t nb) {
    thread_local GemvAct s;
    const int64_t nb8 = nb / kChunk * kChunk;
    s.d.resize(size_t(nb));
    s.c.resize(size_t(nb));
    s.lo.resize(size_t(nb8 / 2));
    s.hi.resize(size_t(nb8 / 2));
    s.prefetch = gemv_prefetch_bytes();
    for (int64_t b = 0; b < nb; b++) {
        const float d = half_to_float(x[b].d);
        const size_t slot = size_t(scales_first_slot(b, nb));
        s.d[slot] = d;
        s.c[slot] = 8.0f * d * float(sum_q8(x[b].qs));
    }
    for (int64_t b = 0; b < nb8; b += 2) {
        const __m256i x0 = load32(x[b].qs), x1 = load32(x[b + 1].qs);
        _mm256_store_si256(reinterpret_cast<__m256i*>(s.lo[size_t(b / 2)].q), _mm256_permute2x128_si256(x0, x1, 0x20));
        _mm256_store_si256(reinterpret_cast<__m256i*>(s.hi[size_t(b / 2)].q), _mm256_permute2x128_si256(x0, x1, 0x31));
    }
    return s;
}

// One 4-row group (kernels/repack.h): per chunk the 4 rows' scales, then per pair the 4 rows' quants
// (QB bytes each: 32 for Q4_0, 64 for Q8_0), then each row's last nb % 8 blocks. `pair` adds row
// i's dot of pair p of the chunk at q to acc[i] with the pair's scales sc. The weight stream is
// prefetched s.prefetch bytes ahead, rounded up to whole chunks; 0: not at all.
template <size_t BlockBytes, typename PairFn, typename TailFn>
void group_rows(int64_t nb, const uint8_t* g, const GemvAct& s, float* y, PairFn pair, TailFn tail) {
    constexpr size_t kChunkBytes = 4 * kChunk * BlockBytes, kPair = 2 * (BlockBytes - 2);
    const size_t ahead = (s.prefetch + kChunkBytes - 1) / kChunkBytes * kChunkBytes;
    const int64_t nc = nb / kChunk, nt = nb - nc * kChunk;
    __m256 acc[kRows];
    #pragma GCC unroll 4
    for (int i = 0; i < kRows; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < nc; c++, g += kChunkBytes) {
        if (ahead)
            for (size_t l = 0; l < kChunkBytes; l += 64) prefetch(g + ahead + l);
        const int64_t b = c * kChunk;
        const __m256 dx = _mm256_loadu_ps(s.d.data() + b), cx = _mm256_loadu_ps(s.c.data() + b);
        __m256 sc[kRows];
        #pragma GCC unroll 4
        for (int i = 0; i < kRows; i++) {
            const __m256 dw = load_scales8(g + 16 * i);
            sc[i] = _mm256_mul_ps(dw, dx);
            if (BlockBytes == sizeof(block_q4_0)) acc[i] = _mm256_fnmadd_ps(dw, cx, acc[i]);
        }
#pragma GCC unroll 4
        for (int p = 0; p < int(kChunk / 2); p++) {
            const __m256i xl = load32(s.lo[size_t(b / 2 + p)].q), xh = load32(s.hi[size_t(b / 2 + p)].q);
            const __m256i sel = _mm256_set1_epi32(p);
            #pragma GCC unroll 4
            for (int i = 0; i < kRows; i++)
                acc[i] = pair(g + 64 + (size_t(p) * kRows + size_t(i)) * kPair, xl, xh,
                              _mm256_permutevar_ps(sc[i], sel), acc[i]);
        }
    }
    for (int i = 0; i < kRows; i++) {
        const uint8_t* t = g + size_t(i) * size_t(nt) * BlockBytes;  // nt scales, then nt blocks' quants
        for (int64_t j = 0; j < nt; j++)
            acc[i] = tail(nc * kChunk + j, reinterpret_cast<const uint16_t*>(t)[j],
                          t + size_t(nt) * 2 + size_t(j) * (BlockBytes - 2), acc[i]);
        y[i] = hsum(acc[i]);
    }
}

using group_fn = void (*)(int64_t, const uint8_t*, const block_q8_0*, const GemvAct&, float*);
// A row outside the 4-row groups (the last n_rows % 4): its blocks back in GGUF form, through the
// one-row dot. Phi-2's row counts are multiples of 4, so this runs only for odd shapes.
template <typename Block, Block (*read)(const uint8_t*, int64_t, int64_t, int64_t, int64_t)>
float single_row(float (*dot)(int64_t, const void*, const void*), const uint8_t* w, int64_t nb, int64_t n_rows,
                 int64_t r, const block_q8_0* x) {
    thread_local std::vector<Block> blocks;
    blocks.resize(size_t(nb));
    for (int64_t b = 0; b < nb; b++) blocks[size_t(b)] = read(w, nb, n_rows, r, b);
    return dot(nb * QK8_0, blocks.data(), x);
}

template <typename Block, Block (*read)(const uint8_t*, int64_t, int64_t, int64_t, int64_t)>
void gemv_rows(group_fn four, float (*dot)(int64_t, const void*, const void*), int64_t n, int64_t n_rows,
               const void* w, size_t row_bytes, const void* x, float* y) {
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    const uint8_t* base = static_cast<const uint8_t*>(w);
    const int64_t nb = n / QK8_0;
    const GemvAct& s = gemv_act(xb, nb);
    int64_t r = 0;
    for (; r + kRows <= n_rows; r += kRows) four(nb, base + size_t(r) * row_bytes, xb, s, y + r);
    for (; r < n_rows; r++) y[r] = single_row<Block, read>(dot, base, nb, n_rows, r, xb);
}

}  // namespace
}  // namespace x86
}  // namespace phi2cpu
