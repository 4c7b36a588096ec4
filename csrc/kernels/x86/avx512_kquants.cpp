// AVX-512 VNNI K-quant dot products (256-bit vpdpbusd: unsigned weight bytes x signed Q8_K bytes,
// four products summed into each int32 lane with no intermediate saturation). Compiled with the
// AVX-512 flags of avx512.cpp; called only when the CPU and OS support them. The Q8_K quantizer
// is the AVX2 one.
#include "kernels/x86/kquants_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

// 8 int32 lanes, lane l = sum of u[4l..4l+3] * s[4l..4l+3]
inline __m256i dot_u8_s8(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }

}  // namespace

namespace {

// Q4_K and Q5_K differ only in the high bits k4_chunk merges in.
template <typename Block>
float vec_dot_k4_q8_K(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const K4Scales s = unpack_scales_k4(a[i].scales);
        const auto sc = [&](int j) { return _mm256_set1_epi32(int((s.sc >> (8 * j)) & 0xff)); };
        __m256i qh = k4_high_bits(a[i]);
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            __m256i lo, hi;
            k4_chunk(a[i].qs, c, qh, lo, hi);
            const __m256i p0 = dot_u8_s8(lo, load256(b[i].qs + 64 * c));
            const __m256i p1 = dot_u8_s8(hi, load256(b[i].qs + 64 * c + 32));
            sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(p0, sc(2 * c)));
            sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(p1, sc(2 * c + 1)));
        }
        k4_block_step(a[i], b[i], sumi, min_dot_bsums(s.m, b[i].bsums), acc);
    }
    return acc.value();
}

}  // namespace

float vec_dot_q4_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x) {
    return vec_dot_k4_q8_K<block_q4_K>(n, w, x);
}

float vec_dot_q5_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x) {
    return vec_dot_k4_q8_K<block_q5_K>(n, w, x);
}

float vec_dot_q6_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x) {
    const block_q6_K* a = static_cast<const block_q6_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        // sum sc*(q-32)*x = sum sc*q*x - 32 sum sc*bsum
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(),
                                        _mm256_slli_epi32(q6_scale_dot_bsums(a[i].scales, b[i].bsums), 5));
        for (int h = 0; h < 2; h++) {
            __m256i v[4];
            unpack_q6_half(a[i].ql + 64 * h, a[i].qh + 32 * h, v);
            const int8_t* sc = a[i].scales + 8 * h;
            const int8_t* xq = b[i].qs + 128 * h;
            for (int g = 0; g < 4; g++) {
                // lanes 0-3 hold elements 0-15 of the group (first sub-block), lanes 4-7 the rest
                const __m256i p = dot_u8_s8(v[g], load256(xq + 32 * g));
                sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(p, scale_pair_epi32(sc[2 * g], sc[2 * g + 1])));
            }
        }
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);  // as the reference
    }
    return acc.value();
}

float vec_dot_iq4_xs_q8_K_avx512vnni(int64_t n, const void* w, const void* x) {
    const block_iq4_xs* a = static_cast<const block_iq4_xs*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const __m256i table = iq4nl_table256();
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            // vpdpbusd takes unsigned x signed: |x| (Q8_K's -128 read as 128) times v carrying x's sign
            const __m256i v = iq4xs_values(a[i], j, table);
            const __m256i xq = load256(b[i].qs + 32 * j);
            const __m256i p = dot_u8_s8(_mm256_sign_epi8(xq, xq), _mm256_sign_epi8(v, xq));
            sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(p, _mm256_set1_epi32(iq4xs_scale(a[i], j))));
        }
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);  // as the reference
    }
    return acc.value();
}

}  // namespace phi2cpu
