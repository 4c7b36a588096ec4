// Helpers shared by the AVX2 and AVX-512 K-quant kernels (both files are compiled with AVX2+).
#pragma once
#include "kernels/x86/simd_x86.h"
#include "quant/blocks.h"

namespace phi2cpu {
namespace x86 {
// Internal linkage: each file including this is compiled for its own ISA and keeps its own copy,
// so the linker can never hand an AVX2 caller a copy compiled with AVX-512.
namespace {

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// The eight 6-bit scales and mins of a Q4_K/Q5_K block (packing in quant/blocks.h).
inline void unpack_scales_k4(const uint8_t* q, uint8_t* sc, uint8_t* m) {
    for (int j = 0; j < 8; j++) {
        int s, mn;
        k4_scale_min(j, q, &s, &mn);
        sc[j] = uint8_t(s);
        m[j] = uint8_t(mn);
    }
}

// The high bits of a Q5_K block's values (bit j of byte l: element l of sub-block j); zero for Q4_K.
inline __m256i k4_high_bits(const block_q4_K&) { return _mm256_setzero_si256(); }
inline __m256i k4_high_bits(const block_q5_K& a) { return load256(a.qh); }

// Chunk c (0..3) of a Q4_K/Q5_K block as unsigned bytes: sub-block 2c in lo, 2c+1 in hi. `qh` starts
// as k4_high_bits(a) and is consumed two bits per chunk (Q4_K's zeros add nothing).
inline void k4_chunk(const uint8_t* qs, int c, __m256i& qh, __m256i& lo, __m256i& hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), one = _mm256_set1_epi8(1);
    const __m256i q = load256(qs + 32 * c);
    lo = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_slli_epi16(_mm256_and_si256(qh, one), 4));
    hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 1), one), 4));
    qh = _mm256_srli_epi16(qh, 2);
}

inline int32_t hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

// One Q4_K/Q5_K block of a dot in the order every path follows (vec_dot_q4_K_q8_K_ref): its exact
// integer sums isum and msum (the mins' term) into the running sum.
template <typename Block>
inline float k4_block_step(const Block& a, const block_q8_K& b, int32_t isum, int32_t msum, float acc) {
    acc = fma_ss(float(isum), half_to_float(a.d) * b.d, acc);
    return fma_ss(float(-msum), half_to_float(a.dmin) * b.d, acc);
}

// sum_j m[j] * (bsums[2j] + bsums[2j+1]): a Q4_K/Q5_K block's min term against its Q8_K activations.
inline int32_t min_dot_bsums(const uint8_t* m, const int16_t* bsums) {
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(m)));
    const __m256i pairs = _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16));
    const __m256i bs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums));
    return hsum_i32(_mm256_madd_epi16(bs, pairs));
}

// sum_j scales[j] * bsums[j] over the 16 sub-blocks of a Q6_K block, as 8 int32 partial sums
// (times 32 it is the offset of the unsigned 0..63 values against their signed meaning).
inline __m256i q6_scale_dot_bsums(const int8_t* scales, const int16_t* bsums) {
    const __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(scales)));
    return _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums)), sc);
}

// The four 32-value groups of one Q6_K half as unsigned bytes 0..63 (layout in quant/blocks.h):
// v[g] holds elements 32g..32g+31 of the half.
inline void unpack_q6_half(const uint8_t* ql, const uint8_t* qh, __m256i* v) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), m2 = _mm256_set1_epi8(3);
    const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql));
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ql + 32));
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qh));
    // masking before each 16-bit shift keeps bits from crossing into the neighbouring byte
    const auto high = [&](int shift) {
        return _mm256_slli_epi16(_mm256_and_si256(_mm256_srl_epi16(h, _mm_cvtsi32_si128(shift)), m2), 4);
    };
    v[0] = _mm256_or_si256(_mm256_and_si256(a, m4), high(0));
    v[1] = _mm256_or_si256(_mm256_and_si256(b, m4), high(2));
    v[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(a, 4), m4), high(4));
    v[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(b, 4), m4), high(6));
}

// Two int16 (AVX2 madd) or int32 (VNNI) scale vectors for a 32-value group spanning two 16-value
// Q6_K sub-blocks: low 128 bits take the first sub-block's scale, high 128 bits the second's.
inline __m256i scale_pair_epi16(int s0, int s1) {
    return _mm256_set_m128i(_mm_set1_epi16(int16_t(s1)), _mm_set1_epi16(int16_t(s0)));
}
inline __m256i scale_pair_epi32(int s0, int s1) {
    return _mm256_set_m128i(_mm_set1_epi32(s1), _mm_set1_epi32(s0));
}

// Sub-block j (0..7) of an IQ4_XS block as its 32 signed values (IQ4_NL table lookups), in order.
inline __m256i iq4xs_values(const block_iq4_xs& a, int j, __m256i table) {
    return _mm256_shuffle_epi8(table, unpack_q4_0(a.qs + 16 * j));
}

inline __m256i iq4nl_table256() {
    const __m128i t = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kIQ4NLValues));
    return _mm256_set_m128i(t, t);
}

}  // namespace
}  // namespace x86
}  // namespace phi2cpu
