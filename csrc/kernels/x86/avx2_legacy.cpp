// AVX2 dots of the 32-value formats beside Q4_0 (Q5_0, Q4_1, Q5_1, IQ4_NL) with Q8_0 activations,
// and their prefill GEMMs. Compiled with -mavx2 -mfma -mf16c.
#include <algorithm>

#include "kernels/x86/ops_x86.h"
#include "kernels/x86/simd_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

// The 32 quants q of a block as unsigned bytes (0..15 or 0..31), in element order.
inline __m256i unpack_q5_0(const block_q5_0& b) { return _mm256_or_si256(unpack_q4_0(b.qs), unpack_q5_high(b.qh)); }
inline __m256i unpack_quants(const block_q4_1& b) { return unpack_q4_0(b.qs); }
inline __m256i unpack_quants(const block_q5_1& b) { return _mm256_or_si256(unpack_q4_0(b.qs), unpack_q5_high(b.qh)); }

// d dx sum q x + m dx sum x over blocks with an offset (value = d q + m); q is unsigned, so
// maddubs takes it as it is, and the same instruction with 1s sums x.
template <typename Block>
float vec_dot_offset_q8_0(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const __m256i ones16 = _mm256_set1_epi16(1), ones8 = _mm256_set1_epi8(1);
    __m256 acc_d = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 32; i++) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
        const __m256i qx = _mm256_madd_epi16(_mm256_maddubs_epi16(unpack_quants(a[i]), xq), ones16);
        const __m256i xs = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, xq), ones16);
        const float dx = half_to_float(b[i].d);
        acc_d = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * dx), _mm256_cvtepi32_ps(qx), acc_d);
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].m) * dx), _mm256_cvtepi32_ps(xs), acc_m);
    }
    return hsum(_mm256_add_ps(acc_d, acc_m));
}

// sum q x - 16 sum x over one block as 8 int32 lanes: maddubs takes q unsigned and x signed
// (pairs stay below 2 * 31 * 128 in 16 bits).
inline __m256i dot_q5_0_q8(__m256i q, const int8_t* xs) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xs));
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i qx = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), ones);
    const __m256i x16 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(16), x), ones);
    return _mm256_sub_epi32(qx, x16);
}

}  // namespace

float vec_dot_iq4_nl_q8_0_avx2(int64_t n, const void* w, const void* x) {
    const block_iq4_nl* a = static_cast<const block_iq4_nl*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues));
    const __m256i table = _mm256_set_m128i(t, t);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK4_NL; i++) {
        // the nibbles index the value table; then a signed dot as for Q8_0 (|value| <= 127)
        const __m256i v = _mm256_shuffle_epi8(table, unpack_q4_0(a[i].qs));
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
        const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(xq, v));
        const __m256i s = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        acc =
            _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)), _mm256_cvtepi32_ps(s), acc);
    }
    return hsum(acc);
}

float vec_dot_q5_0_q8_0_avx2(int64_t n, const void* w, const void* x) {
    const block_q5_0* a = static_cast<const block_q5_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const int64_t nb = n / QK5_0;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)),
                               _mm256_cvtepi32_ps(dot_q5_0_q8(unpack_q5_0(a[i]), b[i].qs)), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i + 1].d) * half_to_float(b[i + 1].d)),
                               _mm256_cvtepi32_ps(dot_q5_0_q8(unpack_q5_0(a[i + 1]), b[i + 1].qs)), acc1);
    }
    if (i < nb)
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)),
                               _mm256_cvtepi32_ps(dot_q5_0_q8(unpack_q5_0(a[i]), b[i].qs)), acc0);
    return hsum(_mm256_add_ps(acc0, acc1));
}

float vec_dot_q4_1_q8_0_avx2(int64_t n, const void* w, const void* x) {
    return vec_dot_offset_q8_0<block_q4_1>(n, w, x);
}

float vec_dot_q5_1_q8_0_avx2(int64_t n, const void* w, const void* x) {
    return vec_dot_offset_q8_0<block_q5_1>(n, w, x);
}

namespace {

// The GEMMs give each (row, token) output the bits of the dot above: the same 8-lane accumulators,
// updated block by block by the same instructions, and the same final sum. What a tile of R rows x T
// tokens saves is the repeated work: each row's block is unpacked once for its T tokens, each token's
// block-side sums once for its R rows. A policy P gives, per block, the row side W (P::unpack), the
// token side X (P::xside) and the accumulator update (P::step, kAcc accumulators per output). The
// dots' scale d * dx is the product of the two broadcasts, the same float.
struct Iq4nlPolicy {
    using Block = block_iq4_nl;
    static constexpr int kAcc = 1;
    struct W {
        __m256i v, abs_v;
        __m256 d;  // broadcast
    };
    struct X {
        __m256i q;
        __m256 d;  // broadcast
    };
    static W unpack(const Block& a, __m256i table) {
        const __m256i v = _mm256_shuffle_epi8(table, unpack_q4_0(a.qs));
        return {v, _mm256_sign_epi8(v, v), _mm256_set1_ps(half_to_float(a.d))};
    }
    static X xside(const block_q8_0& b) {
        return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)), _mm256_set1_ps(half_to_float(b.d))};
    }
    static void step(const W& w, const X& x, int64_t, __m256 (&acc)[kAcc]) {
        const __m256i p16 = _mm256_maddubs_epi16(w.abs_v, _mm256_sign_epi8(x.q, w.v));
        const __m256i s = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
        acc[0] = _mm256_fmadd_ps(_mm256_mul_ps(w.d, x.d), _mm256_cvtepi32_ps(s), acc[0]);
    }
};

// Q5_0: even blocks into the first accumulator, odd ones into the second (the dot's pair loop; its
// last, unpaired block is even too).
struct Q5_0Policy {
    using Block = block_q5_0;
    static constexpr int kAcc = 2;
    struct W {
        __m256i q;
        __m256 d;  // broadcast
    };
    struct X {
        const int8_t* qs;
        __m256i x16;  // 16 sum x, as dot_q5_0_q8 subtracts it
        __m256 d;     // broadcast
    };
    static W unpack(const Block& a, __m256i) { return {unpack_q5_0(a), _mm256_set1_ps(half_to_float(a.d))}; }
    static X xside(const block_q8_0& b) {
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
        const __m256i x16 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(16), x), _mm256_set1_epi16(1));
        return {b.qs, x16, _mm256_set1_ps(half_to_float(b.d))};
    }
    static void step(const W& w, const X& x, int64_t i, __m256 (&acc)[kAcc]) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.qs));
        const __m256i qx = _mm256_madd_epi16(_mm256_maddubs_epi16(w.q, xq), _mm256_set1_epi16(1));
        __m256& a = acc[i & 1];
        a = _mm256_fmadd_ps(_mm256_mul_ps(w.d, x.d), _mm256_cvtepi32_ps(_mm256_sub_epi32(qx, x.x16)), a);
    }
};

// Q4_1 / Q5_1 (vec_dot_offset_q8_0): the scaled products and the offsets' sums in two accumulators.
template <typename B>
struct OffsetPolicy {
    using Block = B;
    static constexpr int kAcc = 2;
    struct W {
        __m256i q;
        __m256 d, m;  // broadcast
    };
    struct X {
        __m256i q;
        __m256 xs;  // sum x as floats
        __m256 d;   // broadcast
    };
    static W unpack(const Block& a, __m256i) {
        return {unpack_quants(a), _mm256_set1_ps(half_to_float(a.d)), _mm256_set1_ps(half_to_float(a.m))};
    }
    static X xside(const block_q8_0& b) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs));
        const __m256i xs = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), xq), _mm256_set1_epi16(1));
        return {xq, _mm256_cvtepi32_ps(xs), _mm256_set1_ps(half_to_float(b.d))};
    }
    static void step(const W& w, const X& x, int64_t, __m256 (&acc)[kAcc]) {
        const __m256i qx = _mm256_madd_epi16(_mm256_maddubs_epi16(w.q, x.q), _mm256_set1_epi16(1));
        acc[0] = _mm256_fmadd_ps(_mm256_mul_ps(w.d, x.d), _mm256_cvtepi32_ps(qx), acc[0]);
        acc[1] = _mm256_fmadd_ps(_mm256_mul_ps(w.m, x.d), x.xs, acc[1]);
    }
};

template <typename P>
inline float finish(const __m256 (&acc)[P::kAcc]) {
    if constexpr (P::kAcc == 1)
        return hsum(acc[0]);
    else
        return hsum(_mm256_add_ps(acc[0], acc[1]));
}

// R rows from w (row_bytes apart) x T tokens from x (x_row bytes apart) into y[t * ldy + r].
template <typename P, int R, int T>
void tile_legacy(int64_t nb, const uint8_t* w, size_t row_bytes, const block_q8_0* x, int64_t x_row, float* y,
                 int64_t ldy) {
    const __m128i t16 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues));
    const __m256i table = _mm256_set_m128i(t16, t16);
    __m256 acc[R][T][P::kAcc];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            for (int a = 0; a < P::kAcc; a++) acc[r][t][a] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        typename P::X xs[T];
        for (int t = 0; t < T; t++) xs[t] = P::xside(x[t * x_row + i]);
        for (int r = 0; r < R; r++) {
            const typename P::W wr = P::unpack(reinterpret_cast<const typename P::Block*>(w + r * row_bytes)[i], table);
            for (int t = 0; t < T; t++) P::step(wr, xs[t], i, acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * ldy + r] = finish<P>(acc[r][t]);
}

// Panels of 16 rows (at K = 10240 a Q5_1 panel is 120 KiB, in L2) that every token passes in tiles
// of kRows rows x 4 tokens: 8 accumulators.
template <typename P>
void gemm_legacy(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
                 int64_t ldy) {
    constexpr int kRows = 2 / P::kAcc, kTok = 4;
    using tile_fn = void (*)(int64_t, const uint8_t*, size_t, const block_q8_0*, int64_t, float*, int64_t);
    static constexpr tile_fn tiles[2][kTok + 1] = {
        {nullptr, tile_legacy<P, 1, 1>, tile_legacy<P, 1, 2>, tile_legacy<P, 1, 3>, tile_legacy<P, 1, 4>},
        {nullptr, tile_legacy<P, 2, 1>, tile_legacy<P, 2, 2>, tile_legacy<P, 2, 3>, tile_legacy<P, 2, 4>}};
    const int64_t nb = K / 32;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    for (int64_t p0 = 0; p0 < n_rows; p0 += 16) {
        const int64_t p1 = std::min<int64_t>(n_rows, p0 + 16);
        for (int64_t t0 = 0; t0 < n_tok; t0 += kTok) {
            const int nt = int(std::min<int64_t>(kTok, n_tok - t0));
            for (int64_t r = p0; r < p1; r += kRows) {
                const int nr = int(std::min<int64_t>(kRows, p1 - r));
                tiles[nr - 1][nt](nb, wb + size_t(r) * row_bytes, row_bytes, xb + t0 * nb, nb, y + t0 * ldy + r, ldy);
            }
        }
    }
}

}  // namespace

void gemm_q5_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_legacy<Q5_0Policy>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q4_1_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_legacy<OffsetPolicy<block_q4_1>>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q5_1_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_legacy<OffsetPolicy<block_q5_1>>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_iq4_nl_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                           float* y, int64_t ldy) {
    gemm_legacy<Iq4nlPolicy>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
