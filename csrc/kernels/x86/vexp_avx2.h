// Vector exp for AVX2 + FMA; include only from files compiled with -mavx2 -mfma.
#pragma once
#include <immintrin.h>

#include "kernels/vexp_poly.h"

namespace phi2cpu {
namespace x86 {

// See kernels/vexp_poly.h for the method and its constants.
inline __m256 vexp(__m256 x) {
    const __m256 lo = _mm256_set1_ps(vexp_poly::kMin);
    const __m256 in_range = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(vexp_poly::kMax));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(vexp_poly::kLog2e)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(vexp_poly::kLn2Hi), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(vexp_poly::kLn2Lo), r);
    __m256 q = _mm256_set1_ps(vexp_poly::kQ4);
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(vexp_poly::kQ3));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(vexp_poly::kQ2));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(vexp_poly::kQ1));
    q = _mm256_fmadd_ps(q, r, _mm256_set1_ps(vexp_poly::kQ0));
    const __m256 p = _mm256_add_ps(_mm256_fmadd_ps(q, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), in_range);
}

}  // namespace x86
}  // namespace phi2cpu
