// Helpers shared by the AVX2 and AVX-512 Q2_K / Q3_K kernels (both files are compiled with AVX2+).
#pragma once
#include "kernels/x86/kquants_x86.h"

namespace phi2cpu {
namespace x86 {
// Internal linkage, as in kquants_x86.h: each ISA file keeps its own copy.
namespace {

// Bit pair k (0..3) of each of 32 bytes of qs: one 32-value group of a Q2_K / Q3_K half. Masking after
// the 16-bit shift drops the bits that crossed in from the neighbouring byte.
inline __m256i k2_field(__m256i q, int k) {
    return _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * k)), _mm256_set1_epi8(3));
}

// Group g (0..7) of a Q3_K block as unsigned bytes q + 4 (0..7): the bit pair plus 4 where bit g of
// hmask is set.
inline __m256i q3_group(__m256i q, __m256i hm, int k, int g) {
    const __m256i hbit = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(g)), _mm256_set1_epi8(1));
    return _mm256_or_si256(k2_field(q, k), _mm256_slli_epi16(hbit, 2));
}

// sum_j (scales[j] >> 4) * bsums[j], a Q2_K block's min term against its Q8_K activations, as 8
// int32 partial sums.
inline __m256i q2_min_dot_bsums(const uint8_t* scales, const int16_t* bsums) {
    const __m256i s16 = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums));
    return _mm256_madd_epi16(_mm256_srli_epi16(s16, 4), bs);
}

// The 16 signed scales of a Q3_K block (packing in quant/blocks.h).
inline void unpack_scales_q3(const uint8_t* packed, int16_t* sc) {
    for (int j = 0; j < 16; j++) sc[j] = int16_t(q3_scale(packed, j));
}

// sum_j sc[j] * bsums[j] as 8 int32 partial sums.
inline __m256i q3_scale_dot_bsums(const int16_t* sc, const int16_t* bsums) {
    return _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)),
                             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums)));
}

}  // namespace
}  // namespace x86
}  // namespace phi2cpu
