// NEON + dot-product (ARMv8.2 SDOT) kernels. Compiled with -march=armv8.2-a+dotprod; called only
// when HWCAP reports ASIMDDP.
#include <cmath>

#include "kernels/arm/ops_arm.h"

#include <arm_neon.h>

#include "kernels/arm/simd_neon.h"
#include "kernels/row_loops.h"
#include "quant/fp16.h"

namespace phi2cpu {

float vec_dot_f32_f32_neon(int64_t n, const void* w, const void* x) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        acc0 = vfmaq_f32(acc0, vld1q_f32(a + i), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

float vec_dot_f16_f32_neon(int64_t n, const void* w, const void* x) {
    const uint16_t* a = static_cast<const uint16_t*>(w);
    const float* b = static_cast<const float*>(x);
    float32x4_t acc0 = vdupq_n_f32(0.0f), acc1 = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const float16x8_t h = vreinterpretq_f16_u16(vld1q_u16(a + i));
        acc0 = vfmaq_f32(acc0, vcvt_f32_f16(vget_low_f16(h)), vld1q_f32(b + i));
        acc1 = vfmaq_f32(acc1, vcvt_high_f32_f16(h), vld1q_f32(b + i + 4));
    }
    float sum = vaddvq_f32(vaddq_f32(acc0, acc1));
    for (; i < n; i++) sum += fp16_to_fp32(a[i]) * b[i];
    return sum;
}

float vec_dot_q8_0_q8_0_neon(int64_t n, const void* w, const void* x) {
    const block_q8_0* a = static_cast<const block_q8_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float acc = 0.0f;  // block after block, as every Q8_0 kernel sums (dispatch.h)
    for (int64_t i = 0; i < n / QK8_0; i++) {
        int32x4_t s = vdotq_s32(vdupq_n_s32(0), vld1q_s8(a[i].qs), vld1q_s8(b[i].qs));
        s = vdotq_s32(s, vld1q_s8(a[i].qs + 16), vld1q_s8(b[i].qs + 16));
        acc = std::fma(float(vaddvq_s32(s)), fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d), acc);
    }
    return acc;
}

float vec_dot_q4_0_q8_0_neon(int64_t n, const void* w, const void* x) {
    const block_q4_0* a = static_cast<const block_q4_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float acc = 0.0f;  // block after block, as every Q4_0 kernel sums (dispatch.h)
    for (int64_t i = 0; i < n / QK4_0; i++) {
        int8x16_t lo, hi;
        arm::unpack_q4_0(a[i], lo, hi);
        int32x4_t s = vdotq_s32(vdupq_n_s32(0), lo, vld1q_s8(b[i].qs));
        s = vdotq_s32(s, hi, vld1q_s8(b[i].qs + 16));
        acc = std::fma(float(vaddvq_s32(s)), fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d), acc);
    }
    return acc;
}

void gemv_q8_0_q8_0_neon(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemv_rows<vec_dot_q8_0_q8_0_neon>(n, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemv_q4_0_q8_0_neon(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemv_rows<vec_dot_q4_0_q8_0_neon>(n, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void quantize_row_q8_0_neon(const float* x, block_q8_0* y, int64_t n) {
    for (int64_t i = 0; i < n / QK8_0; i++, x += QK8_0) {
        float32x4_t v[8];
        float32x4_t amax = vdupq_n_f32(0.0f);
        for (int j = 0; j < 8; j++) {
            v[j] = vld1q_f32(x + 4 * j);
            amax = vmaxq_f32(amax, vabsq_f32(v[j]));
        }
        const float d = vmaxvq_f32(amax) / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[i].d = fp32_to_fp16(d);
        for (int j = 0; j < 8; j += 2) {
            // vcvtaq rounds halves away from zero, exactly like the scalar roundf
            const int32x4_t q0 = vcvtaq_s32_f32(vmulq_n_f32(v[j], id));
            const int32x4_t q1 = vcvtaq_s32_f32(vmulq_n_f32(v[j + 1], id));
            const int16x8_t q16 = vcombine_s16(vqmovn_s32(q0), vqmovn_s32(q1));
            vst1_s8(y[i].qs + 4 * j, vqmovn_s16(q16));
        }
    }
}

}  // namespace phi2cpu
