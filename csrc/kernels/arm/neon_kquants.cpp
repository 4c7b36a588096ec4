// NEON + dot-product K-quant kernels: Q4_K, Q5_K, Q6_K and IQ4_XS x Q8_K dots and the Q8_K
// activation quantizer. Compiled with -march=armv8.2-a+dotprod.
//
// vdotq_s32 multiplies signed bytes, so the weights are signed bytes: Q4_K/Q5_K's 0..15 / 0..31 as
// they are (their mins enter once per block through the Q8_K sums of 16), Q6_K's 0..63 minus 32,
// IQ4_XS's table values. Each sub-block's int32 dot is weighted by its integer scale.
#include "kernels/arm/ops_arm.h"

#include <arm_neon.h>

#include <cmath>

#include "quant/fp16.h"

namespace phi2cpu {
namespace {

// The Q5_K fifth bits of chunk c (0..3) from qh >> 2c: bit 0 for sub-block 2c (lo), bit 1 for 2c+1 (hi),
// as bytes 16 or 0. Q4_K has none.
struct NoHighBits {
    explicit NoHighBits(const block_q4_K&) {}
    void chunk(int, uint8x16_t*) const {}
};
struct Q5HighBits {
    uint8x16_t h[2];
    explicit Q5HighBits(const block_q5_K& b) : h{vld1q_u8(b.qh), vld1q_u8(b.qh + 16)} {}
    // out: lo elements 0..15, 16..31, then hi elements 0..15, 16..31
    void chunk(int c, uint8x16_t* out) const {
        const int8x16_t shift = vdupq_n_s8(int8_t(-2 * c));
        for (int k = 0; k < 2; k++) {
            const uint8x16_t s = vshlq_u8(h[k], shift);
            out[k] = vshlq_n_u8(vandq_u8(s, vdupq_n_u8(1)), 4);
            out[2 + k] = vshlq_n_u8(vandq_u8(s, vdupq_n_u8(2)), 3);
        }
    }
};

// sum_j m[j] * (bsums[2j] + bsums[2j+1]): the min term of a Q4_K/Q5_K block (pair sums fit in int16).
inline int32_t min_dot_bsums(const uint8_t* m, const int16_t* bsums) {
    const int16x8_t pairs = vpaddq_s16(vld1q_s16(bsums), vld1q_s16(bsums + 8));
    const int16x8_t m16 = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(m)));
    const int32x4_t s = vmlal_s16(vmull_s16(vget_low_s16(pairs), vget_low_s16(m16)), vget_high_s16(pairs),
                                  vget_high_s16(m16));
    return vaddvq_s32(s);
}

template <typename Block, typename High>
float vec_dot_k4_q8_K(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const uint8x16_t m4 = vdupq_n_u8(0x0f);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; j++) {
            int s, mn;
            k4_scale_min(j, a[i].scales, &s, &mn);
            sc[j] = uint8_t(s);
            m[j] = uint8_t(mn);
        }
        const High high(a[i]);
        int32x4_t sumi = vdupq_n_s32(0);
        for (int c = 0; c < 4; c++) {
            uint8x16_t q[4] = {vandq_u8(vld1q_u8(a[i].qs + 32 * c), m4), vandq_u8(vld1q_u8(a[i].qs + 32 * c + 16), m4),
                               vshrq_n_u8(vld1q_u8(a[i].qs + 32 * c), 4), vshrq_n_u8(vld1q_u8(a[i].qs + 32 * c + 16), 4)};
            uint8x16_t h[4] = {vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0), vdupq_n_u8(0)};
            high.chunk(c, h);
            const int8_t* xq = b[i].qs + 64 * c;
            for (int s = 0; s < 2; s++) {  // sub-block 2c + s
                int32x4_t p = vdotq_s32(vdupq_n_s32(0), vreinterpretq_s8_u8(vorrq_u8(q[2 * s], h[2 * s])),
                                        vld1q_s8(xq + 32 * s));
                p = vdotq_s32(p, vreinterpretq_s8_u8(vorrq_u8(q[2 * s + 1], h[2 * s + 1])), vld1q_s8(xq + 32 * s + 16));
                sumi = vmlaq_n_s32(sumi, p, sc[2 * c + s]);
            }
        }
        // the order every path follows (vec_dot_q4_K_q8_K_ref)
        sum = std::fma(float(vaddvq_s32(sumi)), fp16_to_fp32(a[i].d) * b[i].d, sum);
        sum = std::fma(float(-min_dot_bsums(m, b[i].bsums)), fp16_to_fp32(a[i].dmin) * b[i].d, sum);
    }
    return sum;
}

}  // namespace

float vec_dot_q4_K_q8_K_neon(int64_t n, const void* w, const void* x) {
    return vec_dot_k4_q8_K<block_q4_K, NoHighBits>(n, w, x);
}

float vec_dot_q5_K_q8_K_neon(int64_t n, const void* w, const void* x) {
    return vec_dot_k4_q8_K<block_q5_K, Q5HighBits>(n, w, x);
}

float vec_dot_q6_K_q8_K_neon(int64_t n, const void* w, const void* x) {
    const block_q6_K* a = static_cast<const block_q6_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const uint8x16_t m4 = vdupq_n_u8(0x0f), m2 = vdupq_n_u8(0x30);
    const int8x16_t off = vdupq_n_s8(32);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sumi = vdupq_n_s32(0);
        for (int h = 0; h < 2; h++) {
            const uint8_t* ql = a[i].ql + 64 * h;
            const uint8_t* qh = a[i].qh + 32 * h;
            const int8_t* sc = a[i].scales + 8 * h;
            const int8_t* xq = b[i].qs + 128 * h;
            for (int k = 0; k < 2; k++) {  // elements 16k..16k+15 of each 32-value group
                const uint8x16_t lo = vld1q_u8(ql + 16 * k), hi = vld1q_u8(ql + 32 + 16 * k);
                const uint8x16_t hb = vld1q_u8(qh + 16 * k);
                // group g: elements 32g + 16k + (0..15), scale sc[2g + k] (layout in quant/blocks.h)
                const uint8x16_t v[4] = {vorrq_u8(vandq_u8(lo, m4), vandq_u8(vshlq_n_u8(hb, 4), m2)),
                                         vorrq_u8(vandq_u8(hi, m4), vandq_u8(vshlq_n_u8(hb, 2), m2)),
                                         vorrq_u8(vshrq_n_u8(lo, 4), vandq_u8(hb, m2)),
                                         vorrq_u8(vshrq_n_u8(hi, 4), vandq_u8(vshrq_n_u8(hb, 2), m2))};
                for (int g = 0; g < 4; g++) {
                    const int8x16_t q = vsubq_s8(vreinterpretq_s8_u8(v[g]), off);
                    sumi = vmlaq_n_s32(sumi, vdotq_s32(vdupq_n_s32(0), q, vld1q_s8(xq + 32 * g + 16 * k)),
                                       sc[2 * g + k]);
                }
            }
        }
        sum = std::fma(float(vaddvq_s32(sumi)), fp16_to_fp32(a[i].d) * b[i].d, sum);  // as the reference
    }
    return sum;
}

float vec_dot_iq4_xs_q8_K_neon(int64_t n, const void* w, const void* x) {
    const block_iq4_xs* a = static_cast<const block_iq4_xs*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const int8x16_t table = vld1q_s8(kIQ4NLValues);
    float sum = 0.0f;
    for (int64_t i = 0; i < n / QK_K; i++) {
        int32x4_t sumi = vdupq_n_s32(0);
        for (int j = 0; j < 8; j++) {
            const uint8x16_t q = vld1q_u8(a[i].qs + 16 * j);
            const int8x16_t lo = vqtbl1q_s8(table, vandq_u8(q, vdupq_n_u8(0x0f)));
            const int8x16_t hi = vqtbl1q_s8(table, vshrq_n_u8(q, 4));
            int32x4_t p = vdotq_s32(vdupq_n_s32(0), lo, vld1q_s8(b[i].qs + 32 * j));
            p = vdotq_s32(p, hi, vld1q_s8(b[i].qs + 32 * j + 16));
            sumi = vmlaq_n_s32(sumi, p, iq4xs_scale(a[i], j));
        }
        sum = std::fma(float(vaddvq_s32(sumi)), fp16_to_fp32(a[i].d) * b[i].d, sum);  // as the reference
    }
    return sum;
}

// Same bytes as quantize_row_q8_K_ref: vcvtnq rounds to nearest even like nearbyint, and the scale
// comes from the first element of largest magnitude.
void quantize_row_q8_K_neon(const float* x, block_q8_K* y, int64_t n) {
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        float32x4_t amax4 = vdupq_n_f32(0.0f);
        for (int j = 0; j < QK_K; j += 4) amax4 = vmaxq_f32(amax4, vabsq_f32(vld1q_f32(x + j)));
        const float amax = vmaxvq_f32(amax4);
        if (amax == 0.0f) {
            y[i].d = 0.0f;
            for (int j = 0; j < QK_K; j += 16) vst1q_s8(y[i].qs + j, vdupq_n_s8(0));
            for (int j = 0; j < QK_K / 16; j += 8) vst1q_s16(y[i].bsums + j, vdupq_n_s16(0));
            continue;
        }
        float max = 0.0f;
        for (int j = 0; j < QK_K; j++)
            if (std::fabs(x[j]) == amax) { max = x[j]; break; }
        const float iscale = -128.0f / max;
        const int32x4_t lim = vdupq_n_s32(127);
        for (int j = 0; j < QK_K; j += 16) {
            int32x4_t q[4];
            for (int k = 0; k < 4; k++) q[k] = vminq_s32(vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(x + j + 4 * k), iscale)), lim);
            y[i].bsums[j / 16] = int16_t(vaddvq_s32(vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3]))));
            const int16x8_t a16 = vcombine_s16(vmovn_s32(q[0]), vmovn_s32(q[1]));
            const int16x8_t b16 = vcombine_s16(vmovn_s32(q[2]), vmovn_s32(q[3]));
            vst1q_s8(y[i].qs + j, vcombine_s8(vmovn_s16(a16), vmovn_s16(b16)));
        }
        y[i].d = 1.0f / iscale;
    }
}

}  // namespace phi2cpu
