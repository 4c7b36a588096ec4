// AVX2 dots of the 32-value legacy formats beside Q4_0 (Q5_0, Q4_1, Q5_1) with Q8_0 activations.
// Compiled with -mavx2 -mfma -mf16c.
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
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)), _mm256_cvtepi32_ps(s), acc);
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

}  // namespace phi2cpu
