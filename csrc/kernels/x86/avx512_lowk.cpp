// AVX-512 VNNI Q2_K / Q3_K x Q8_K dot products (256-bit vpdpbusd: unsigned weight bytes x signed Q8_K
// bytes, four products per int32 lane). Lanes 0-3 of a 32-value group's dot hold its first 16-value
// sub-block, lanes 4-7 the second, so one mullo applies the pair of scales. Values and offsets as in
// avx2_lowk.cpp. Compiled with the AVX-512 flags of avx512.cpp; called only when the CPU and OS
// support them.
#include "kernels/x86/kquants_x86.h"
#include "kernels/x86/lowk_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

inline __m256i dot_u8_s8(__m256i u, __m256i s) { return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s); }

}  // namespace

float vec_dot_q2_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x) {
    const block_q2_K* a = static_cast<const block_q2_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q = load256(a[i].qs + 32 * h);
            for (int k = 0; k < 4; k++) {
                const int j = 8 * h + 2 * k;
                const __m256i p = dot_u8_s8(k2_field(q, k), load256(b[i].qs + 32 * (4 * h + k)));
                const __m256i sc = scale_pair_epi32(a[i].scales[j] & 15, a[i].scales[j + 1] & 15);
                sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(p, sc));
            }
        }
        // the order every path follows (vec_dot_q2_K_q8_K_ref)
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);
        acc.sub(q2_min_dot_bsums(a[i].scales, b[i].bsums), half_to_float(a[i].dmin) * b[i].d);
    }
    return acc.value();
}

float vec_dot_q3_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x) {
    const block_q3_K* a = static_cast<const block_q3_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int16_t sc[16];
        unpack_scales_q3(a[i].scales, sc);
        const __m256i hm = load256(a[i].hmask);
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(),
                                        _mm256_slli_epi32(q3_scale_dot_bsums(sc, b[i].bsums), 2));
        for (int h = 0; h < 2; h++) {
            const __m256i q = load256(a[i].qs + 32 * h);
            for (int k = 0; k < 4; k++) {
                const int g = 4 * h + k;
                const __m256i p = dot_u8_s8(q3_group(q, hm, k, g), load256(b[i].qs + 32 * g));
                sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(p, scale_pair_epi32(sc[2 * g], sc[2 * g + 1])));
            }
        }
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);  // as the reference
    }
    return acc.value();
}

}  // namespace phi2cpu
