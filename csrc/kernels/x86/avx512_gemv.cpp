// AVX-512 VNNI multi-row GEMV for decoding over repacked weights (driver: kernels/x86/gemv_x86.h):
// the AVX2 kernel's data flow with vpdpbusd on 256-bit vectors, which multiplies unsigned by signed
// bytes and sums four products straight into 32 bits (no 16-bit step, no widening madd). Compiled
// with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (plus AVX2/FMA/F16C).
#include "kernels/x86/gemv_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_epi32(acc, u8, s8); }

// acc + sum w x over 32 quants as 8 int32 lanes: |w| times x carrying w's sign (x in [-127, 127]).
inline __m256i dot_q8(__m256i acc, __m256i w, __m256i x) {
    return dpbusd(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

// Q4_0 pair (b, b+1): low nibbles meet act.lo, high ones act.hi (see the AVX2 kernel); the
// unsigned nibbles owe 8 * sum x back, which the driver subtracts per chunk.
void group_q4_0(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvAct& s, float* y) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    group_rows<sizeof(block_q4_0)>(
        nb, g, s, y,
        [&](const uint8_t* q, __m256i xl, __m256i xh, __m256 sc, __m256 acc) {
            const __m256i qq = load32(q);
            const __m256i lo = _mm256_and_si256(qq, m4), hi = _mm256_and_si256(_mm256_srli_epi16(qq, 4), m4);
            return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dpbusd(dpbusd(zero, lo, xl), hi, xh)), sc, acc);
        },
        [&](int64_t b, uint16_t d, const uint8_t* q, __m256 acc) {
            const float dw = half_to_float(d);
            const __m256i p = dpbusd(zero, unpack_q4_0(q), load32(x[b].qs));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(dw * s.d[size_t(b)]), acc);
            return _mm256_sub_ps(acc, _mm256_setr_ps(dw * s.c[size_t(b)], 0, 0, 0, 0, 0, 0, 0));
        });
}

// Q8_0: a pair's first-halves load meets act.lo, its second-halves load act.hi.
void group_q8_0(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvAct& s, float* y) {
    const __m256i zero = _mm256_setzero_si256();
    group_rows<sizeof(block_q8_0)>(
        nb, g, s, y,
        [&](const uint8_t* q, __m256i xl, __m256i xh, __m256 sc, __m256 acc) {
            const __m256i dot32 = dot_q8(dot_q8(zero, load32(q), xl), load32(q + 32), xh);
            return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot32), sc, acc);
        },
        [&](int64_t b, uint16_t d, const uint8_t* q, __m256 acc) {
            return _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q8(zero, load32(q), load32(x[b].qs))),
                                   _mm256_set1_ps(half_to_float(d) * s.d[size_t(b)]), acc);
        });
}

}  // namespace

void gemv_q4_0_q8_0_avx512vnni(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x,
                               float* y) {
    gemv_rows<block_q4_0, repacked_block_q4_0>(group_q4_0, vec_dot_q4_0_q8_0_avx512vnni, n, n_rows, w, row_bytes, x,
                                               y);
}

void gemv_q8_0_q8_0_avx512vnni(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x,
                               float* y) {
    gemv_rows<block_q8_0, repacked_block_q8_0>(group_q8_0, vec_dot_q8_0_q8_0_avx512vnni, n, n_rows, w, row_bytes, x,
                                               y);
}

}  // namespace phi2cpu
