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

// The eight 6-bit scales and mins of a Q4_K/Q5_K block (packing in quant/blocks.h, k4_scale_min),
// byte j of `sc` / `m` for sub-block j, from the 12 bytes as three words.
struct K4Scales {
    uint64_t sc, m;
};
inline K4Scales unpack_scales_k4(const uint8_t* q) {
    uint32_t w[3];
    std::memcpy(w, q, 12);
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, top2 = 0x03030303;
    const uint32_t sc_hi = (w[2] & low4) | (((w[0] >> 6) & top2) << 4);
    const uint32_t m_hi = ((w[2] >> 4) & low4) | (((w[1] >> 6) & top2) << 4);
    return {(w[0] & low6) | (uint64_t(sc_hi) << 32), (w[1] & low6) | (uint64_t(m_hi) << 32)};
}

// The 8 scales and mins of sub-block j of 8 rows stored rows in lanes (repack_q4_K_rows8, repack.h):
// sc[j] / m[j] hold row i's in byte i, from the block's 96 scale bytes.
inline void unpack_scales_k4_rows8(const uint8_t* p, uint64_t (&sc)[8], uint64_t (&m)[8]) {
    uint64_t q[12];
    std::memcpy(q, p, sizeof q);
    const uint64_t low6 = 0x3f3f3f3f3f3f3f3full, low4 = 0x0f0f0f0f0f0f0f0full, top2 = 0x0303030303030303ull;
    for (int j = 0; j < 4; j++) {
        sc[j] = q[j] & low6;
        m[j] = q[j + 4] & low6;
        sc[j + 4] = (q[j + 8] & low4) | (((q[j] >> 6) & top2) << 4);
        m[j + 4] = ((q[j + 8] >> 4) & low4) | (((q[j + 4] >> 6) & top2) << 4);
    }
}

// Byte i of v in int32 lane i, as the int16 pair (v_i, v_i).
inline __m256i lanes_pair16(uint64_t v) {
    const __m256i x = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(v)));
    return _mm256_or_si256(x, _mm256_slli_epi32(x, 16));
}

// Byte i of lo and of hi in int32 lane i, as the int16 pair (lo_i, hi_i).
inline __m256i lanes_pair16(uint64_t lo, uint64_t hi) {
    return _mm256_or_si256(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(lo))),
                           _mm256_slli_epi32(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(int64_t(hi))), 16));
}

// Signed bytes i of lo and hi in int32 lane i as the int16 pair (lo_i * f, hi_i * f); the products
// must fit in 16 bits.
inline __m256i lanes_pair16_signed(uint64_t lo, uint64_t hi, int f = 1) {
    const __m256i a = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(int64_t(lo)));
    const __m256i b = _mm256_cvtepi8_epi32(_mm_cvtsi64_si128(int64_t(hi)));
    const __m256i pair = _mm256_blend_epi16(a, _mm256_slli_epi32(b, 16), 0xaa);
    return f == 1 ? pair : _mm256_mullo_epi16(pair, _mm256_set1_epi16(int16_t(f)));
}

// Bit j of each byte of v moved to bit p, the other bits cleared (16-bit shifts: bits that cross
// into the neighbouring byte are masked off).
inline __m256i byte_bit_to(__m256i v, int j, int p) {
    return _mm256_and_si256(j < p ? _mm256_slli_epi16(v, p - j) : _mm256_srli_epi16(v, j - p),
                            _mm256_set1_epi8(char(1 << p)));
}

// The eight bytes of v as int16, in both 128-bit halves.
inline __m256i bytes_epi16x2(uint64_t v) {
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(v))));
}

// v holding the same eight int16 in both 128-bit halves (bytes_epi16x2): element A in every int16
// of the low half, element B in every int16 of the high half.
template <int A, int B>
inline __m256i splat2_epi16(__m256i v) {
    return _mm256_shuffle_epi8(v, _mm256_set_m128i(_mm_set1_epi16(int16_t(0x0100 + 0x0202 * B)),
                                                   _mm_set1_epi16(int16_t(0x0100 + 0x0202 * A))));
}
template <int J>
inline __m256i splat_epi16(__m256i v) {
    return splat2_epi16<J, J>(v);
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

// sum_j m[j] * (bsums[2j] + bsums[2j+1]), a Q4_K/Q5_K block's min term against its Q8_K
// activations, as 8 int32 partial sums.
inline __m256i min_dot_bsums(uint64_t m, const int16_t* bsums) {
    const __m128i m16 = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(int64_t(m)));
    const __m256i pairs = _mm256_set_m128i(_mm_unpackhi_epi16(m16, m16), _mm_unpacklo_epi16(m16, m16));
    return _mm256_madd_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(bsums)), pairs);
}

// A K-quant dot's running sum in the order every path follows (vec_dot_q4_K_q8_K_ref): per block,
// acc = fma(float(isum), d * x.d, acc) and, with mins, acc = fma(float(-msum), dmin * x.d, acc),
// each integer sum given as 8 int32 partial sums. It stays in a vector register: the lanes are
// reduced and converted there (float(-m) is -float(m), so the mins' step is one fnmadd), with no
// trip through a general register on the way to the next block.
struct BlockAcc {
    __m128 v = _mm_setzero_ps();

    static __m128 sum_ps(__m256i s) {
        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(1, 0, 3, 2)));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
        return _mm_cvtepi32_ps(r);
    }
    void add(__m256i isum, float scale) { v = _mm_fmadd_ss(sum_ps(isum), _mm_set_ss(scale), v); }
    void sub(__m256i msum, float scale) { v = _mm_fnmadd_ss(sum_ps(msum), _mm_set_ss(scale), v); }
    float value() const { return _mm_cvtss_f32(v); }
};

// One Q4_K/Q5_K block of a dot: its integer sums isum and msum (the mins' term) into the running sum.
template <typename Block>
inline void k4_block_step(const Block& a, const block_q8_K& b, __m256i isum, __m256i msum, BlockAcc& acc) {
    acc.add(isum, half_to_float(a.d) * b.d);
    acc.sub(msum, half_to_float(a.dmin) * b.d);
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

// The four scale pairs of one Q6_K half (8 scales) for its 32-value groups, as scale_pair_epi16 makes
// them: group g's low 128 bits take scale 2g, its high 128 bits scale 2g + 1.
inline void q6_half_scales(const int8_t* sc, __m256i (&out)[4]) {
    int64_t v;
    std::memcpy(&v, sc, 8);
    const __m256i s16 = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(_mm_cvtsi64_si128(v)));
    out[0] = splat2_epi16<0, 1>(s16);
    out[1] = splat2_epi16<2, 3>(s16);
    out[2] = splat2_epi16<4, 5>(s16);
    out[3] = splat2_epi16<6, 7>(s16);
}

// Two int16 (AVX2 madd) or int32 (VNNI) scale vectors for a 32-value group spanning two 16-value
// Q6_K sub-blocks: low 128 bits take the first sub-block's scale, high 128 bits the second's.
inline __m256i scale_pair_epi16(int s0, int s1) {
    return _mm256_set_m128i(_mm_set1_epi16(int16_t(s1)), _mm_set1_epi16(int16_t(s0)));
}
inline __m256i scale_pair_epi32(int s0, int s1) { return _mm256_set_m128i(_mm_set1_epi32(s1), _mm_set1_epi32(s0)); }

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
