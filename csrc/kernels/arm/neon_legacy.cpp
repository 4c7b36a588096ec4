// NEON + dot-product dots of the 32-value legacy formats beside Q4_0 (Q5_0, Q4_1, Q5_1) with Q8_0
// activations.
// Compiled with -march=armv8.2-a+dotprod.
#include "kernels/arm/ops_arm.h"

#include <arm_neon.h>

#include <cstring>

#include "quant/fp16.h"

namespace phi2cpu {
namespace {

// The fifth bits of a Q5_0 block as bytes 16 or 0: lo for elements 0..15, hi for 16..31.
inline void unpack_q5_high(const uint8_t* qh, uint8x16_t& lo, uint8x16_t& hi) {
    const uint8x8_t bit = vcreate_u8(0x8040201008040201ull);
    const uint8x16_t sixteen = vdupq_n_u8(16);
    lo = vandq_u8(vcombine_u8(vtst_u8(vdup_n_u8(qh[0]), bit), vtst_u8(vdup_n_u8(qh[1]), bit)), sixteen);
    hi = vandq_u8(vcombine_u8(vtst_u8(vdup_n_u8(qh[2]), bit), vtst_u8(vdup_n_u8(qh[3]), bit)), sixteen);
}

// A block's 32 unsigned quants (0..15 or 0..31, below 128 so they are also signed bytes): lo holds
// elements 0..15, hi 16..31.
inline void unpack_quants(const block_q4_1& b, int8x16_t& lo, int8x16_t& hi) {
    const uint8x16_t q = vld1q_u8(b.qs);
    lo = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f)));
    hi = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
}
inline void unpack_quants(const block_q5_1& b, int8x16_t& lo, int8x16_t& hi) {
    uint8x16_t h0, h1;
    unpack_q5_high(b.qh, h0, h1);
    const uint8x16_t q = vld1q_u8(b.qs);
    lo = vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), h0));
    hi = vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), h1));
}

// d dx sum q x + m dx sum x (value = d q + m); sum x is a dot with 1s.
template <typename Block>
float vec_dot_offset_q8_0(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const int8x16_t ones = vdupq_n_s8(1);
    float32x4_t acc_d = vdupq_n_f32(0.0f), acc_m = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < n / 32; i++) {
        int8x16_t lo, hi;
        unpack_quants(a[i], lo, hi);
        const int8x16_t x0 = vld1q_s8(b[i].qs), x1 = vld1q_s8(b[i].qs + 16);
        const int32x4_t qx = vdotq_s32(vdotq_s32(vdupq_n_s32(0), lo, x0), hi, x1);
        const int32x4_t xs = vdotq_s32(vdotq_s32(vdupq_n_s32(0), ones, x0), ones, x1);
        const float dx = fp16_to_fp32(b[i].d);
        acc_d = vfmaq_n_f32(acc_d, vcvtq_f32_s32(qx), fp16_to_fp32(a[i].d) * dx);
        acc_m = vfmaq_n_f32(acc_m, vcvtq_f32_s32(xs), fp16_to_fp32(a[i].m) * dx);
    }
    return vaddvq_f32(vaddq_f32(acc_d, acc_m));
}

}  // namespace

float vec_dot_iq4_nl_q8_0_neon(int64_t n, const void* w, const void* x) {
    const block_iq4_nl* a = static_cast<const block_iq4_nl*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    const int8x16_t table = vld1q_s8(kIQ4NLValues);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < n / QK4_NL; i++) {
        const uint8x16_t q = vld1q_u8(a[i].qs);
        const int8x16_t lo = vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0f)));
        const int8x16_t hi = vqtbl1q_s8(table, vshrq_n_u8(q, 4));
        int32x4_t s = vdotq_s32(vdupq_n_s32(0), lo, vld1q_s8(b[i].qs));
        s = vdotq_s32(s, hi, vld1q_s8(b[i].qs + 16));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d));
    }
    return vaddvq_f32(acc);
}

float vec_dot_q4_1_q8_0_neon(int64_t n, const void* w, const void* x) { return vec_dot_offset_q8_0<block_q4_1>(n, w, x); }

float vec_dot_q5_1_q8_0_neon(int64_t n, const void* w, const void* x) { return vec_dot_offset_q8_0<block_q5_1>(n, w, x); }

float vec_dot_q5_0_q8_0_neon(int64_t n, const void* w, const void* x) {
    const block_q5_0* a = static_cast<const block_q5_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float32x4_t acc = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < n / QK5_0; i++) {
        uint8x16_t h0, h1;
        unpack_q5_high(a[i].qh, h0, h1);
        const uint8x16_t q = vld1q_u8(a[i].qs);
        const int8x16_t lo = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(q, vdupq_n_u8(0x0f)), h0)), vdupq_n_s8(16));
        const int8x16_t hi = vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8(q, 4), h1)), vdupq_n_s8(16));
        int32x4_t s = vdotq_s32(vdupq_n_s32(0), lo, vld1q_s8(b[i].qs));
        s = vdotq_s32(s, hi, vld1q_s8(b[i].qs + 16));
        acc = vfmaq_n_f32(acc, vcvtq_f32_s32(s), fp16_to_fp32(a[i].d) * fp16_to_fp32(b[i].d));
    }
    return vaddvq_f32(acc);
}

}  // namespace phi2cpu
