// AVX2 Q2_K / Q3_K x Q8_K dot products. Compiled with -mavx2 -mfma -mf16c; called only when the CPU
// has them.
//
// Each 32-value group g = 4h + k of a block (half h, bit pair k; layout in quant/blocks.h) spans two
// 16-value sub-blocks: maddubs of its unsigned values with the Q8_K bytes gives 16 int16 pair sums,
// the low 8 of the first sub-block and the high 8 of the second, and one madd with the pair of scales
// weights them. Q3_K's values are kept unsigned (q + 4, 0..7) and the 4 * sum_j sc_j bsums_j offset is
// taken once per block. Bounds: pairs reach 2*7*128 = 1792, times |sc| <= 32 well inside int32.
#include "kernels/x86/kquants_x86.h"
#include "kernels/x86/lowk_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

using namespace x86;

float vec_dot_q2_K_q8_K_avx2(int64_t n, const void* w, const void* x) {
    const block_q2_K* a = static_cast<const block_q2_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i q = load256(a[i].qs + 32 * h);
            for (int k = 0; k < 4; k++) {
                const int j = 8 * h + 2 * k;
                const __m256i p = _mm256_maddubs_epi16(k2_field(q, k), load256(b[i].qs + 32 * (4 * h + k)));
                const __m256i sc = scale_pair_epi16(a[i].scales[j] & 15, a[i].scales[j + 1] & 15);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
            }
        }
        // the order every path follows (vec_dot_q2_K_q8_K_ref)
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);
        acc.sub(q2_min_dot_bsums(a[i].scales, b[i].bsums), half_to_float(a[i].dmin) * b[i].d);
    }
    return acc.value();
}

float vec_dot_q3_K_q8_K_avx2(int64_t n, const void* w, const void* x) {
    const block_q3_K* a = static_cast<const block_q3_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int16_t sc[16];
        unpack_scales_q3(a[i].scales, sc);
        const __m256i hm = load256(a[i].hmask);
        // sum sc*(u-4)*x = sum sc*u*x - 4 sum sc*bsum
        __m256i sumi = _mm256_slli_epi32(q3_scale_dot_bsums(sc, b[i].bsums), 2);
        sumi = _mm256_sub_epi32(_mm256_setzero_si256(), sumi);
        for (int h = 0; h < 2; h++) {
            const __m256i q = load256(a[i].qs + 32 * h);
            for (int k = 0; k < 4; k++) {
                const int g = 4 * h + k;
                const __m256i p = _mm256_maddubs_epi16(q3_group(q, hm, k, g), load256(b[i].qs + 32 * g));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scale_pair_epi16(sc[2 * g], sc[2 * g + 1])));
            }
        }
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);  // as the reference
    }
    return acc.value();
}

}  // namespace phi2cpu
