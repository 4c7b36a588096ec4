// NEON + dot-product Q2_K / Q3_K x Q8_K dot products. Compiled with -march=armv8.2-a+dotprod.
//
// A 16-value sub-block j (bytes 16(j%2)..+16 of half j/8's 32 qs bytes, bit pair (j%8)/2; layout in
// quant/blocks.h) is one vdotq of its signed values with the Q8_K bytes, summed and scaled in int32.
#include "kernels/arm/ops_arm.h"

#include <arm_neon.h>

#include <cmath>

#include "quant/fp16.h"

namespace phi2cpu {
namespace {

inline uint8x16_t bit_pair(uint8x16_t q, int k) {
    return vandq_u8(vshlq_u8(q, vdupq_n_s8(int8_t(-2 * k))), vdupq_n_u8(3));
}

}  // namespace

float vec_dot_q2_K_q8_K_neon(int64_t n, const void* w, const void* x) {
    const block_q2_K* a = static_cast<const block_q2_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32_t isum = 0, msum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8x16_t q0 = vld1q_u8(a[i].qs + 32 * h), q1 = vld1q_u8(a[i].qs + 32 * h + 16);
            for (int k = 0; k < 4; k++) {
                const int j = 8 * h + 2 * k;
                const int8_t* xq = b[i].qs + 16 * j;
                const int32x4_t s0 = vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(bit_pair(q0, k)), vld1q_s8(xq));
                const int32x4_t s1 = vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(bit_pair(q1, k)), vld1q_s8(xq + 16));
                isum += (a[i].scales[j] & 15) * vaddvq_s32(s0) + (a[i].scales[j + 1] & 15) * vaddvq_s32(s1);
            }
        }
        // min term: sum_j (scales[j] >> 4) * bsums[j]
        const uint8x16_t m = vshrq_n_u8(vld1q_u8(a[i].scales), 4);
        const int16x8_t m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(m)));
        const int16x8_t m1 = vreinterpretq_s16_u16(vmovl_u8(vget_high_u8(m)));
        const int16x8_t b0 = vld1q_s16(b[i].bsums), b1 = vld1q_s16(b[i].bsums + 8);
        int32x4_t ms = vmull_s16(vget_low_s16(m0), vget_low_s16(b0));
        ms = vmlal_s16(ms, vget_high_s16(m0), vget_high_s16(b0));
        ms = vmlal_s16(ms, vget_low_s16(m1), vget_low_s16(b1));
        ms = vmlal_s16(ms, vget_high_s16(m1), vget_high_s16(b1));
        msum = vaddvq_s32(ms);
        // the order every path follows (vec_dot_q2_K_q8_K_ref)
        sum = std::fma(float(isum), fp16_to_fp32(a[i].d) * b[i].d, sum);
        sum = std::fma(float(-msum), fp16_to_fp32(a[i].dmin) * b[i].d, sum);
    }
    return sum;
}

float vec_dot_q3_K_q8_K_neon(int64_t n, const void* w, const void* x) {
    const block_q3_K* a = static_cast<const block_q3_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        const uint8x16_t hm0 = vld1q_u8(a[i].hmask), hm1 = vld1q_u8(a[i].hmask + 16);
        int32_t isum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8x16_t q0 = vld1q_u8(a[i].qs + 32 * h), q1 = vld1q_u8(a[i].qs + 32 * h + 16);
            for (int k = 0; k < 4; k++) {
                const int g = 4 * h + k, j = 2 * g;
                const uint8x16_t bit = vdupq_n_u8(uint8_t(1u << g));
                // q = bit pair - 4, plus 4 where the hmask bit is set
                const uint8x16_t four = vdupq_n_u8(4);
                const int8x16_t v0 = vsubq_s8(
                    vreinterpretq_s8_u8(vorrq_u8(bit_pair(q0, k), vandq_u8(vtstq_u8(hm0, bit), four))), vdupq_n_s8(4));
                const int8x16_t v1 = vsubq_s8(
                    vreinterpretq_s8_u8(vorrq_u8(bit_pair(q1, k), vandq_u8(vtstq_u8(hm1, bit), four))), vdupq_n_s8(4));
                const int8_t* xq = b[i].qs + 16 * j;
                const int32x4_t s0 = vdotq_s32(vdupq_n_s32(0), v0, vld1q_s8(xq));
                const int32x4_t s1 = vdotq_s32(vdupq_n_s32(0), v1, vld1q_s8(xq + 16));
                isum += q3_scale(a[i].scales, j) * vaddvq_s32(s0) + q3_scale(a[i].scales, j + 1) * vaddvq_s32(s1);
            }
        }
        sum = std::fma(float(isum), fp16_to_fp32(a[i].d) * b[i].d, sum);  // as the reference
    }
    return sum;
}

}  // namespace phi2cpu
