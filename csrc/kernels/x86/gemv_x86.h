// The small-batch GEMV driver shared by the AVX2 and AVX-512 decode kernels, over repacked weights
// (kernels/repack.h): a 4-row group is one sequential stream read once for up to kGemvMaxTokens
// tokens, 8 weight scales convert with one vcvtph2ps, and a block pair's quants come with one (Q4_0)
// or two (Q8_0) 32-byte loads. A kernel file supplies the integer pair and block dots. Internal
// linkage throughout: each including file is compiled for its own ISA and keeps its own copy.
//
// Batch invariance (dispatch.h): per block pair, the 4 rows' integer dots are summed exactly (two
// rounds of hadd across the rows) into [row 0..3 of block b | row 0..3 of block b+1], Q4_0's offset
// included, so the rows sit in the lanes; each lane then runs acc = fma(float(isum_b), dw_b * dx_b,
// acc) block after block: the order and the operations of the GEMM tiles (qgemm_x86.h) and of
// vec_dot_q4_0_q8_0_ref. No lane ever holds part of a sum.
#pragma once
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/ref/ops_ref.h"
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
inline int32_t hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}

// One activation row as the kernels want it. Per block, in scale-slot order: its f32 scale d and
// bias = -8 * (sum of its quants), what Q4_0's unsigned nibbles q = value + 8 owe back. Per pair
// (b, b+1) of a whole chunk: lo = quants 0..15 of b and of b+1, hi = quants 16..31 of both,
// matching the weights' pair halves, and the scales and biases of b (4 lanes) and b+1 (4 lanes).
struct alignas(32) Quants32 {
    int8_t q[32];
};
struct alignas(32) Pair8 {
    float d[8];
    int32_t bias[8];
};
struct GemvAct {
    std::vector<float> d;
    std::vector<int32_t> bias;
    std::vector<Quants32> lo, hi;
    std::vector<Pair8> pair;
};
struct GemvBatch {
    GemvAct tok[kGemvMaxTokens];
    size_t prefetch = 0;  // gemv_prefetch_bytes() (cpu_x86.h), read once per call
};

const GemvBatch& gemv_batch(const block_q8_0* x, int64_t nb, int64_t n_tok) {
    thread_local GemvBatch s;
    const int64_t nb8 = nb / kChunk * kChunk;
    s.prefetch = gemv_prefetch_bytes();
    for (int64_t t = 0; t < n_tok; t++) {
        GemvAct& a = s.tok[t];
        const block_q8_0* xt = x + t * nb;
        a.d.resize(size_t(nb));
        a.bias.resize(size_t(nb));
        a.lo.resize(size_t(nb8 / 2));
        a.hi.resize(size_t(nb8 / 2));
        a.pair.resize(size_t(nb8 / 2));
        for (int64_t b = 0; b < nb; b++) {
            a.d[size_t(b)] = half_to_float(xt[b].d);
            a.bias[size_t(b)] = -8 * sum_q8(xt[b].qs);
        }
        for (int64_t b = 0; b < nb8; b += 2) {
            const __m256i x0 = load32(xt[b].qs), x1 = load32(xt[b + 1].qs);
            _mm256_store_si256(reinterpret_cast<__m256i*>(a.lo[size_t(b / 2)].q),
                               _mm256_permute2x128_si256(x0, x1, 0x20));
            _mm256_store_si256(reinterpret_cast<__m256i*>(a.hi[size_t(b / 2)].q),
                               _mm256_permute2x128_si256(x0, x1, 0x31));
            Pair8& p = a.pair[size_t(b / 2)];
            for (int l = 0; l < 8; l++) {
                p.d[l] = a.d[size_t(b + l / 4)];
                p.bias[l] = a.bias[size_t(b + l / 4)];
            }
        }
    }
    return s;
}

// In each 128-bit half, rows v[0..3] of 4 become columns: out[j] = slot j of the 4 rows | slot j + 4.
inline void transpose_4x4_halves(__m256 (&v)[4]) {
    const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
    const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
    v[0] = _mm256_shuffle_ps(t0, t2, 0x44);
    v[1] = _mm256_shuffle_ps(t0, t2, 0xee);
    v[2] = _mm256_shuffle_ps(t1, t3, 0x44);
    v[3] = _mm256_shuffle_ps(t1, t3, 0xee);
}

// One 4-row group (kernels/repack.h) times T tokens into y[t*ldy + i]. Per chunk: the 4 rows'
// scales, then per pair the 4 rows' quants (QB bytes each: 32 for Q4_0, 64 for Q8_0); after the
// chunks, each row's last nb % 8 blocks. Kern: load(q) reads one row's pair quants, dot(pair, xl, xh)
// is their integer dot with a token (lanes 0..3 block b, 4..7 block b+1), block(q, xq) one plain
// block's (8 partial lanes). The weight stream is
// prefetched s.prefetch bytes ahead, rounded up to whole chunks; 0: not at all.
template <size_t BlockBytes, int T, typename Kern>
void group_rows(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvBatch& s, float* y, int64_t ldy,
                const Kern& kern) {
    constexpr bool kOffset = BlockBytes == sizeof(block_q4_0);
    constexpr size_t kChunkBytes = 4 * kChunk * BlockBytes, kPair = 2 * (BlockBytes - 2);
    const size_t ahead = (s.prefetch + kChunkBytes - 1) / kChunkBytes * kChunkBytes;
    const int64_t nc = nb / kChunk, nt = nb - nc * kChunk;
    __m128 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = _mm_setzero_ps();
    for (int64_t c = 0; c < nc; c++, g += kChunkBytes) {
        if (ahead)
            for (size_t l = 0; l < kChunkBytes; l += 64) prefetch(g + ahead + l);
        const int64_t b = c * kChunk;
        // the 4 rows' scales of the chunk, transposed: dw[p] = [rows of block b + 2p | rows of b + 2p + 1]
        __m256 dw[kRows];
#pragma GCC unroll 4
        for (int i = 0; i < kRows; i++) dw[i] = load_scales8(g + 16 * i);
        transpose_4x4_halves(dw);
#pragma GCC unroll 4
        for (int p = 0; p < 4; p++) {  // the pair's 4 rows are unpacked once and meet every token
            typename Kern::Pair w[kRows];
#pragma GCC unroll 4
            for (int i = 0; i < kRows; i++) w[i] = kern.load(g + 64 + (size_t(p) * kRows + size_t(i)) * kPair);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const GemvAct& a = s.tok[t];
                const __m256i xl = load32(a.lo[size_t(b / 2 + p)].q), xh = load32(a.hi[size_t(b / 2 + p)].q);
                __m256i v[kRows];
#pragma GCC unroll 4
                for (int i = 0; i < kRows; i++) v[i] = kern.dot(w[i], xl, xh);
                const Pair8& pp = a.pair[size_t(b / 2 + p)];
                __m256i isum = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
                if (kOffset) isum = _mm256_add_epi32(isum, _mm256_load_si256(reinterpret_cast<const __m256i*>(pp.bias)));
                const __m256 f = _mm256_cvtepi32_ps(isum), sc = _mm256_mul_ps(dw[p], _mm256_load_ps(pp.d));
                acc[t] = _mm_fmadd_ps(_mm256_castps256_ps128(f), _mm256_castps256_ps128(sc), acc[t]);  // block b + 2p
                acc[t] = _mm_fmadd_ps(_mm256_extractf128_ps(f, 1), _mm256_extractf128_ps(sc, 1), acc[t]);
            }
        }
    }
    // The last nb % 8 blocks: row i keeps their nt scales, then their plain quants, at g + i * nt * BlockBytes.
    for (int64_t j = 0; j < nt; j++) {
        const int64_t b = nc * kChunk + j;
        alignas(16) float dw[kRows];
        const uint8_t* q[kRows];
        for (int i = 0; i < kRows; i++) {
            const uint8_t* tail = g + size_t(i) * size_t(nt) * BlockBytes;
            dw[i] = half_to_float(reinterpret_cast<const uint16_t*>(tail)[j]);
            q[i] = tail + size_t(nt) * 2 + size_t(j) * (BlockBytes - 2);
        }
        for (int t = 0; t < T; t++) {
            const GemvAct& a = s.tok[t];
            const int32_t bias = kOffset ? a.bias[size_t(b)] : 0;
            alignas(16) int32_t is[kRows];
            for (int i = 0; i < kRows; i++) is[i] = hsum_epi32(kern.block(q[i], x[t * nb + b].qs)) + bias;
            const __m128 sc = _mm_mul_ps(_mm_load_ps(dw), _mm_set1_ps(a.d[size_t(b)]));
            acc[t] = _mm_fmadd_ps(_mm_cvtepi32_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(is))), sc, acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) _mm_storeu_ps(y + t * ldy, acc[t]);
}

using group_fn = void (*)(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvBatch& s, float* y,
                          int64_t ldy);

// A row outside the 4-row groups (the last n_rows % 4): its blocks back in GGUF form, through the
// reference dot, which is the same order in scalar code. Phi-2's row counts are multiples of 4.
template <typename Block, Block (*read)(const uint8_t*, int64_t, int64_t, int64_t, int64_t)>
void single_row(float (*dot)(int64_t, const void*, const void*), const uint8_t* w, int64_t nb, int64_t n_rows,
                int64_t r, int64_t n_tok, const block_q8_0* x, float* y, int64_t ldy) {
    thread_local std::vector<Block> blocks;
    blocks.resize(size_t(nb));
    for (int64_t b = 0; b < nb; b++) blocks[size_t(b)] = read(w, nb, n_rows, r, b);
    for (int64_t t = 0; t < n_tok; t++) y[t * ldy] = dot(nb * QK8_0, blocks.data(), x + t * nb);
}

// groups[T] handles T tokens (1 <= T <= kGemvMaxTokens).
template <typename Block, Block (*read)(const uint8_t*, int64_t, int64_t, int64_t, int64_t)>
void gemv_groups(const group_fn* groups, float (*dot)(int64_t, const void*, const void*), int64_t n,
                 int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
                 int64_t ldy) {
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    const uint8_t* base = static_cast<const uint8_t*>(w);
    const int64_t nb = n / QK8_0;
    const GemvBatch& s = gemv_batch(xb, nb, n_tok);
    int64_t r = 0;
    for (; r + kRows <= n_rows; r += kRows) groups[n_tok](nb, base + size_t(r) * row_bytes, xb, s, y + r, ldy);
    for (; r < n_rows; r++) single_row<Block, read>(dot, base, nb, n_rows, r, n_tok, xb, y + r, ldy);
}

// The group kernels of one type for 1..kGemvMaxTokens tokens.
template <template <int> class Group>
struct GroupTable {
    group_fn f[kGemvMaxTokens + 1] = {nullptr,  Group<1>::run, Group<2>::run, Group<3>::run, Group<4>::run,
                                      Group<5>::run, Group<6>::run, Group<7>::run, Group<8>::run};
};

}  // namespace
}  // namespace x86
}  // namespace phi2cpu
