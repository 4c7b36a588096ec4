// Vector exp for AVX-512F; include only from files compiled with -mavx512f. The same reduction,
// polynomial and clamps as vexp_avx2.h (relative error <= 1.2e-7), on 16 lanes.
#pragma once
#include <immintrin.h>

namespace phi2cpu {
namespace x86 {

inline __m512 vexp(__m512 x) {
    const __m512 lo = _mm512_set1_ps(-87.3f);
    const __mmask16 in_range = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    x = _mm512_min_ps(_mm512_max_ps(x, lo), _mm512_set1_ps(88.3f));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-1.90465429e-9f), r);
    __m512 q = _mm512_set1_ps(1.38146162e-3f);
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(8.36871378e-3f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.16683890e-2f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.66665211e-1f));
    q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.99999940e-1f));
    const __m512 p = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mul_ps(in_range, p, _mm512_castsi512_ps(e));
}

}  // namespace x86
}  // namespace phi2cpu
