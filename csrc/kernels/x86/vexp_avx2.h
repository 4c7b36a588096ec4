// Vector exp for AVX2 + FMA; include only from files compiled with -mavx2 -mfma.
#pragma once
#include <immintrin.h>

namespace phi2cpu {
namespace x86 {

// exp(x) = 2^n exp(r) with n = round(x / ln2), |r| <= ln2/2 (ln2 split in two so r stays exact);
// exp(r) = 1 + r + r^2 q(r), q a degree-4 minimax fit of (exp(r) - 1 - r) / r^2: relative error
// <= 1.2e-7. 2^n is built in the exponent bits, so x is clamped to where 2^n is a normal float:
// x > 88.3 gives exp(88.3) and x < -87.3 (or NaN) gives 0.
inline __m256 vexp(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f);
    const __m256 in_range = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147182f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-1.90465429e-9f), r);
    __m256 q = _mm256_set1_ps(1.38146162e-3f);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(8.36871378e-3f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(4.16683890e-2f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(1.66665211e-1f));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(4.99999940e-1f));
    const __m256 p = _mm256_add_ps(_mm256_fmadd_ps(q, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), in_range);
}

}  // namespace x86
}  // namespace phi2cpu
