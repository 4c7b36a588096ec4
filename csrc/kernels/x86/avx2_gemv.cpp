// AVX2 multi-row GEMV for decoding over repacked weights (driver: kernels/x86/gemv_x86.h), with
// maddubs dot products. Compiled with -mavx2 -mfma -mf16c.
#include "kernels/x86/gemv_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

// sum w x over 32 quants as 8 int32 lanes: |w| times x carrying w's sign (x in [-127, 127], so a
// 16-bit pair is at most 2 * 128 * 127).
inline __m256i dot_q8(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)),
                             _mm256_set1_epi16(1));
}

// Q4_0 pair (b, b+1): one load holds both blocks' nibbles, the low ones meet act.lo and the high
// ones act.hi; the 16-bit pair sums stay below 2 * 2 * 15 * 127 < 2^15. Lanes 0..3 of the pair's
// dot belong to b, 4..7 to b+1, as do the halves of the scale vector after the in-lane broadcast.
void group_q4_0(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvAct& s, float* y) {
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
void group_q8_0(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvAct& s, float* y) {
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

}  // namespace

void gemv_q4_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    gemv_rows<block_q4_0, repacked_block_q4_0>(group_q4_0, vec_dot_q4_0_q8_0_avx2, n, n_rows, w, row_bytes, x, y);
}

void gemv_q8_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    gemv_rows<block_q8_0, repacked_block_q8_0>(group_q8_0, vec_dot_q8_0_q8_0_avx2, n, n_rows, w, row_bytes, x, y);
}

}  // namespace phi2cpu
