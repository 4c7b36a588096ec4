// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c; called only when the CPU has them.
#include "kernels/x86/ops_x86.h"

#include <cmath>

#include "kernels/x86/simd_x86.h"

namespace phi2cpu {

using namespace x86;

float vec_dot_f32_f32_avx2(int64_t n, const void* w, const void* x) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    float sum = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

float vec_dot_f16_f32_avx2(int64_t n, const void* w, const void* x) {
    const uint16_t* a = static_cast<const uint16_t*>(w);
    const float* b = static_cast<const float*>(x);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 w0 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
        const __m256 w1 = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i + 8)));
        acc0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(b + i + 8), acc1);
    }
    float sum = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) sum += half_to_float(a[i]) * b[i];
    return sum;
}

namespace {

// Signed int8 x int8 dot of 32 lanes as 8 int32 sums: maddubs needs one unsigned operand, so
// move w's sign onto x (|w| * sign(w)x). |w| <= 128 and |x| <= 127 keep the 16-bit pairs in range.
inline __m256i dot_i8_32(__m256i w, __m256i x) {
    const __m256i p16 = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
}

inline __m256i load_q8(const int8_t* qs) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs)); }

}  // namespace

float vec_dot_q8_0_q8_0_avx2(int64_t n, const void* w, const void* x) {
    const block_q8_0* a = static_cast<const block_q8_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const int64_t nb = n / QK8_0;
    // two blocks per step into two accumulators: the FMA chain, not the arithmetic, bounds one
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)),
                               _mm256_cvtepi32_ps(dot_i8_32(load_q8(a[i].qs), load_q8(b[i].qs))), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i + 1].d) * half_to_float(b[i + 1].d)),
                               _mm256_cvtepi32_ps(dot_i8_32(load_q8(a[i + 1].qs), load_q8(b[i + 1].qs))), acc1);
    }
    if (i < nb)
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)),
                               _mm256_cvtepi32_ps(dot_i8_32(load_q8(a[i].qs), load_q8(b[i].qs))), acc0);
    return hsum(_mm256_add_ps(acc0, acc1));
}

float vec_dot_q4_0_q8_0_avx2(int64_t n, const void* w, const void* x) {
    const block_q4_0* a = static_cast<const block_q4_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const int64_t nb = n / QK4_0;
    const __m256i eight = _mm256_set1_epi8(8);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 2 <= nb; i += 2) {
        const __m256i q0 = _mm256_sub_epi8(unpack_q4_0(a[i].qs), eight);
        const __m256i q1 = _mm256_sub_epi8(unpack_q4_0(a[i + 1].qs), eight);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)),
                               _mm256_cvtepi32_ps(dot_i8_32(q0, load_q8(b[i].qs))), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i + 1].d) * half_to_float(b[i + 1].d)),
                               _mm256_cvtepi32_ps(dot_i8_32(q1, load_q8(b[i + 1].qs))), acc1);
    }
    if (i < nb) {
        const __m256i q0 = _mm256_sub_epi8(unpack_q4_0(a[i].qs), eight);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)),
                               _mm256_cvtepi32_ps(dot_i8_32(q0, load_q8(b[i].qs))), acc0);
    }
    return hsum(_mm256_add_ps(acc0, acc1));
}

void quantize_row_q8_0_avx2(const float* x, block_q8_0* y, int64_t n) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        __m256 v[4];
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < 4; j++) {
            v[j] = _mm256_loadu_ps(x + 8 * j);
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, v[j]));
        }
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float d = _mm_cvtss_f32(m) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = uint16_t(_cvtss_sh(d, _MM_FROUND_TO_NEAREST_INT));
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int j = 0; j < 4; j++)
            q[j] = _mm256_cvtps_epi32(round_half_away(_mm256_mul_ps(v[j], vid)));
        // int32 -> int8 with the lane interleaving of the packs undone by one permute
        const __m256i p01 = _mm256_packs_epi32(q[0], q[1]);
        const __m256i p23 = _mm256_packs_epi32(q[2], q[3]);
        const __m256i p = _mm256_packs_epi16(p01, p23);
        const __m256i ordered = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs), ordered);
    }
}

}  // namespace phi2cpu
