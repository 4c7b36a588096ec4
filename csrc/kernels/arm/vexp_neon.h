// Vector exp for AArch64 NEON.
#pragma once
#include <arm_neon.h>

#include "kernels/vexp_poly.h"

namespace phi2cpu {
namespace arm {

// See kernels/vexp_poly.h for the method and its constants.
inline float32x4_t vexp(float32x4_t x) {
    const float32x4_t lo = vdupq_n_f32(vexp_poly::kMin);
    const uint32x4_t in_range = vcgeq_f32(x, lo);
    x = vminq_f32(vmaxq_f32(x, lo), vdupq_n_f32(vexp_poly::kMax));
    const int32x4_t ni = vcvtnq_s32_f32(vmulq_n_f32(x, vexp_poly::kLog2e));
    const float32x4_t n = vcvtq_f32_s32(ni);
    float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(vexp_poly::kLn2Hi));
    r = vfmsq_f32(r, n, vdupq_n_f32(vexp_poly::kLn2Lo));
    float32x4_t q = vfmaq_f32(vdupq_n_f32(vexp_poly::kQ3), vdupq_n_f32(vexp_poly::kQ4), r);
    q = vfmaq_f32(vdupq_n_f32(vexp_poly::kQ2), q, r);
    q = vfmaq_f32(vdupq_n_f32(vexp_poly::kQ1), q, r);
    q = vfmaq_f32(vdupq_n_f32(vexp_poly::kQ0), q, r);
    const float32x4_t p = vaddq_f32(vfmaq_f32(r, q, vmulq_f32(r, r)), vdupq_n_f32(1.0f));
    const int32x4_t e = vshlq_n_s32(vaddq_s32(ni, vdupq_n_s32(127)), 23);
    const float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), in_range));
}

}  // namespace arm
}  // namespace phi2cpu
