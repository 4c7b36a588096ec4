// Small AVX2 helpers shared by the x86 kernel files (each compiled with at least AVX2+FMA+F16C).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/blocks.h"

namespace phi2cpu {
namespace x86 {
// Internal linkage: each file including this is compiled for its own ISA and keeps its own copy,
// so the linker can never hand an AVX2 caller a copy compiled with AVX-512.
namespace {

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }

// The 32 nibbles of a Q4_0 block as bytes 0..15: low nibbles -> lanes 0..15, high -> 16..31.
inline __m256i unpack_q4_0(const uint8_t* qs) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m256i both = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

// The fifth bits of a Q5_0 block (bit j of the little-endian qh is element j's) as bytes 16 or 0.
inline __m256i unpack_q5_high(const uint8_t* qh) {
    uint32_t bits;
    std::memcpy(&bits, qh, 4);
    // every 128-bit lane holds the 4 bytes: byte j of the result takes byte j/8, then tests bit j%8
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)),
                                              _mm256_setr_epi64x(0, 0x0101010101010101, 0x0202020202020202,
                                                                 0x0303030303030303));
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201));
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit), _mm256_set1_epi8(16));
}

// Sum of a Q8_0 block's 32 quants (maddubs with 1s takes them as signed bytes).
inline int32_t sum_q8(const int8_t* qs) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qs));
    const __m256i s32 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s32), _mm256_extracti128_si256(s32, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    return _mm_cvtsi128_si32(s4);
}

// The first min(n, 16) lanes, as an AVX-512 mask (n >= 0; only the mask type, no AVX-512 code).
inline __mmask16 first_lanes16(int64_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// roundf semantics (halves away from zero), as the scalar quantizer: t = trunc(v) and v - t are
// exact, so adding sign(v) where |v - t| >= 0.5 rounds exactly like roundf.
inline __m256 round_half_away(__m256 v) {
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 one = _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0f));
    return _mm256_add_ps(t, _mm256_and_ps(_mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ), one));
}

}  // namespace
}  // namespace x86
}  // namespace phi2cpu
