// Vector exp for AVX-512F; include only from files compiled with -mavx512f. The method and
// constants of kernels/vexp_poly.h on 16 lanes.
#pragma once
#include <immintrin.h>

#include "kernels/vexp_poly.h"

namespace phi2cpu {
namespace x86 {

inline __m512 vexp(__m512 x) {
    const __m512 lo = _mm512_set1_ps(vexp_poly::kMin);
    const __mmask16 in_range = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(vexp_poly::kMax));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(vexp_poly::kLog2e)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(vexp_poly::kLn2Hi), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(vexp_poly::kLn2Lo), r);
    __m512 q = _mm512_set1_ps(vexp_poly::kQ4);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(vexp_poly::kQ3));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(vexp_poly::kQ2));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(vexp_poly::kQ1));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(vexp_poly::kQ0));
    const __m512 p = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(in_range, p, _mm512_castsi512_ps(e));
}

}  // namespace x86
}  // namespace phi2cpu
