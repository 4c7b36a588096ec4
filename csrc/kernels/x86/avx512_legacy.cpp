// AVX-512 VNNI dots of the 32-value legacy formats beside Q4_0 (Q5_0, Q4_1, Q5_1) with Q8_0 activations.
// Compiled with the AVX-512 F/BW/VL/VNNI flags; called only when the CPU and OS support them.
#include "kernels/x86/ops_x86.h"

#include "kernels/x86/simd_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

inline __m256i unpack_quants(const block_q4_1& b) { return unpack_q4_0(b.qs); }
inline __m256i unpack_quants(const block_q5_1& b) { return _mm256_or_si256(unpack_q4_0(b.qs), unpack_q5_high(b.qh)); }

// d dx sum q x + m dx sum x (value = d q + m): vpdpbusd takes the unsigned q as it is, and 1s for sum x.
template <typename Block>
float vec_dot_offset_q8_0(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const __m256i ones = _mm256_set1_epi8(1);
    __m256 acc_d = _mm256_setzero_ps(), acc_m = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / 32; i++) {
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
        const __m256i qx = _mm256_dpbusd_epi32(_mm256_setzero_si256(), unpack_quants(a[i]), xq);
        const __m256i xs = _mm256_dpbusd_epi32(_mm256_setzero_si256(), ones, xq);
        const float dx = half_to_float(b[i].d);
        acc_d = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * dx), _mm256_cvtepi32_ps(qx), acc_d);
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].m) * dx), _mm256_cvtepi32_ps(xs), acc_m);
    }
    return hsum(_mm256_add_ps(acc_d, acc_m));
}

}  // namespace

float vec_dot_iq4_nl_q8_0_avx512vnni(int64_t n, const void* w, const void* x) {
    const block_iq4_nl* a = static_cast<const block_iq4_nl*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues));
    const __m256i table = _mm256_set_m128i(t, t);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK4_NL; i++) {
        const __m256i v = _mm256_shuffle_epi8(table, unpack_q4_0(a[i].qs));
        const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
        // vpdpbusd takes unsigned x signed: |v| times x carrying v's sign
        const __m256i s = _mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_sign_epi8(v, v), _mm256_sign_epi8(xq, v));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)), _mm256_cvtepi32_ps(s), acc);
    }
    return hsum(acc);
}

float vec_dot_q4_1_q8_0_avx512vnni(int64_t n, const void* w, const void* x) {
    return vec_dot_offset_q8_0<block_q4_1>(n, w, x);
}

float vec_dot_q5_1_q8_0_avx512vnni(int64_t n, const void* w, const void* x) {
    return vec_dot_offset_q8_0<block_q5_1>(n, w, x);
}

float vec_dot_q5_0_q8_0_avx512vnni(int64_t n, const void* w, const void* x) {
    const block_q5_0* a = static_cast<const block_q5_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const __m256i sixteen = _mm256_set1_epi8(16);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / QK5_0; i++) {
        // sum (q-16) x = sum q x - sum 16 x, with q unsigned
        const __m256i q = _mm256_or_si256(unpack_q4_0(a[i].qs), unpack_q5_high(a[i].qh));
        const __m256i qx = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[i].qs));
        const __m256i s = _mm256_sub_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q, qx),
                                           _mm256_dpbusd_epi32(_mm256_setzero_si256(), sixteen, qx));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(a[i].d) * half_to_float(b[i].d)), _mm256_cvtepi32_ps(s),
                              acc);
    }
    return hsum(acc);
}

}  // namespace phi2cpu
