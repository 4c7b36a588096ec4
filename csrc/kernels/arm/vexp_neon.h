// Vector exp for AArch64 NEON.
#pragma once
#include <arm_neon.h>

namespace phi2cpu {
namespace arm {

// exp(x) = 2^n exp(r) with n = round(x / ln2), |r| <= ln2/2 (ln2 split in two so r stays exact);
// exp(r) = 1 + r + r^2 q(r), q a degree-4 minimax fit of (exp(r) - 1 - r) / r^2: relative error
// <= 1.2e-7. 2^n is built in the exponent bits, so x is clamped to where 2^n is a normal float:
// x > 88.3 gives exp(88.3) and x < -87.3 (or NaN) gives 0.
inline float32x4_t vexp(float32x4_t x) {
    const float32x4_t lo = vdupq_n_f32(-87.3f);
    const uint32x4_t in_range = vcgeq_f32(x, lo);
    x = vminq_f32(vmaxq_f32(x, lo), vdupq_n_f32(88.3f));
    const int32x4_t ni = vcvtnq_s32_f32(vmulq_n_f32(x, 1.44269504f));
    const float32x4_t n = vcvtq_f32_s32(ni);
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693147182f));
    r = vfmsq_f32(r, n, vdupq_n_f32(-1.90465429e-9f));
    float32x4_t q = vfmaq_f32(vdupq_n_f32(8.36871378e-3f), vdupq_n_f32(1.38146162e-3f), r);
    q = vfmaq_f32(vdupq_n_f32(4.16683890e-2f), q, r);
    q = vfmaq_f32(vdupq_n_f32(1.66665211e-1f), q, r);
    q = vfmaq_f32(vdupq_n_f32(4.99999940e-1f), q, r);
    const float32x4_t p = vaddq_f32(vfmaq_f32(r, q, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(ni, vdupq_n_s32(127)), 23);
    const float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), in_range));
}

}  // namespace arm
}  // namespace phi2cpu
