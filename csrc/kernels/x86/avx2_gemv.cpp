// AVX2 multi-row GEMV for decoding over repacked weights (kernels/repack.h): a 4-row group is one
// sequential stream, its four rows share every activation load, 8 weight scales convert with one
// vcvtph2ps, and a block pair's quants come with one (Q4_0) or two (Q8_0) 32-byte loads. The last
// n_rows % 4 rows are single "scales first" rows. Compiled with -mavx2 -mfma -mf16c.
#include <vector>

#include "kernels/repack.h"
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/simd_x86.h"

namespace phi2cpu {

using namespace x86;

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
struct ActSide {
    std::vector<float> d, c;
    std::vector<Quants32> lo, hi;
};

const ActSide& act_side(const block_q8_0* x, int64_t nb) {
    thread_local ActSide s;
    const int64_t nb8 = nb / kChunk * kChunk;
    s.d.resize(size_t(nb));
    s.c.resize(size_t(nb));
    s.lo.resize(size_t(nb8 / 2));
    s.hi.resize(size_t(nb8 / 2));
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

// sum w x over 32 quants as 8 int32 lanes: |w| times x carrying w's sign (x in [-127, 127], so a
// 16-bit pair is at most 2 * 128 * 127).
inline __m256i dot_q8(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)),
                             _mm256_set1_epi16(1));
}

// Software prefetch distance: about 1 KiB ahead, i.e. 2 group chunks of Q4_0 (1152 bytes) or 1 of
// Q8_0 (1088 bytes). Farther measured slower on one thread: a Q8_0 GEMV from memory read 12-13 GB/s
// at 4 chunks ahead and 13-17 GB/s at 1.
constexpr size_t kAheadBytes = 1024;

// One 4-row group (kernels/repack.h): per chunk the 4 rows' scales, then per pair the 4 rows' quants
// (QB bytes each: 32 for Q4_0, 64 for Q8_0), then each row's last nb % 8 blocks. `pair` adds row
// i's dot of pair p of the chunk at q to acc[i] with the pair's scales sc.
template <size_t BlockBytes, typename PairFn, typename TailFn>
void group_rows(int64_t nb, const uint8_t* g, const ActSide& s, float* y, PairFn pair, TailFn tail) {
    constexpr size_t kChunkBytes = 4 * kChunk * BlockBytes, kPair = 2 * (BlockBytes - 2);
    constexpr size_t kAhead = (kAheadBytes + kChunkBytes - 1) / kChunkBytes * kChunkBytes;
    const int64_t nc = nb / kChunk, nt = nb - nc * kChunk;
    __m256 acc[kRows];
    #pragma GCC unroll 4
    for (int i = 0; i < kRows; i++) acc[i] = _mm256_setzero_ps();
    for (int64_t c = 0; c < nc; c++, g += kChunkBytes) {
        for (size_t l = 0; l < kChunkBytes; l += 64) prefetch(g + kAhead + l);
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

// Q4_0 pair (b, b+1): one load holds both blocks' nibbles, the low ones meet act.lo and the high
// ones act.hi; the 16-bit pair sums stay below 2 * 2 * 15 * 127 < 2^15. Lanes 0..3 of the pair's
// dot belong to b, 4..7 to b+1, as do the halves of the scale vector after the in-lane broadcast.
void group_q4_0(int64_t nb, const uint8_t* g, const block_q8_0* x, const ActSide& s, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    group_rows<sizeof(block_q4_0)>(
        nb, g, s, y,
        [&](const uint8_t* q, __m256i xl, __m256i xh, __m256 sc, __m256 acc) {
            const __m256i qq = load32(q);
            const __m256i lo = _mm256_and_si256(qq, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qq, 4), m4);
            const __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xl), _mm256_maddubs_epi16(hi, xh));
            return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones)), sc, acc);
        },
        [&](int64_t b, uint16_t d, const uint8_t* q, __m256 acc) {
            const float dw = half_to_float(d);
            const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(unpack_q4_0(q), load32(x[b].qs)), ones);
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * s.d[size_t(b)]), acc);
            return _mm256_sub_ps(acc, _mm256_setr_ps(dw * s.c[size_t(b)], 0, 0, 0, 0, 0, 0, 0));
        });
}

// As group_q4_0 for Q8_0: a pair's first-halves load meets act.lo, its second-halves load act.hi.
void group_q8_0(int64_t nb, const uint8_t* g, const block_q8_0* x, const ActSide& s, float* y) {
    group_rows<sizeof(block_q8_0)>(
        nb, g, s, y,
        [&](const uint8_t* q, __m256i xl, __m256i xh, __m256 sc, __m256 acc) {
            const __m256i dot32 = _mm256_add_epi32(dot_q8(load32(q), xl), dot_q8(load32(q + 32), xh));
            return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32), sc, acc);
        },
        [&](int64_t b, uint16_t d, const uint8_t* q, __m256 acc) {
            return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q8(load32(q), load32(x[b].qs))),
                                   _mm256_set1_ps(half_to_float(d) * s.d[size_t(b)]), acc);
        });
}

using group_fn = void (*)(int64_t, const uint8_t*, const block_q8_0*, const ActSide&, float*);
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
    const ActSide& s = act_side(xb, nb);
    int64_t r = 0;
    for (; r + kRows <= n_rows; r += kRows) four(nb, base + size_t(r) * row_bytes, xb, s, y + r);
    for (; r < n_rows; r++) y[r] = single_row<Block, read>(dot, base, nb, n_rows, r, xb);
}

}  // namespace

void gemv_q4_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    gemv_rows<block_q4_0, repacked_block_q4_0>(group_q4_0, vec_dot_q4_0_q8_0_avx2, n, n_rows, w, row_bytes, x, y);
}

void gemv_q8_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    gemv_rows<block_q8_0, repacked_block_q8_0>(group_q8_0, vec_dot_q8_0_q8_0_avx2, n, n_rows, w, row_bytes, x, y);
}

}  // namespace phi2cpu
