// NEON elementwise and attention kernels. Compiled with the neon.cpp flags; called only when
// HWCAP reports ASIMDDP.
#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "kernels/arm/ops_arm.h"
#include "kernels/rope_angles.h"
#include "kernels/arm/vexp_neon.h"

namespace phi2cpu {

using namespace arm;

namespace {

// Adds the 4 floats of v to two f64 accumulators.
inline void add_f64(float32x4_t v, float64x2_t& s0, float64x2_t& s1) {
    s0 = vaddq_f64(s0, vcvt_f64_f32(vget_low_f32(v)));
    s1 = vaddq_f64(s1, vcvt_high_f64_f32(v));
}

// 0.5 v (1 + tanh(u)) = v * sigmoid(2u) = v e / (e + 1) with e = exp(2u): no cancellation for
// negative v, and vexp's clamp keeps e finite for any u.
inline float32x4_t gelu4(float32x4_t v) {
    const float32x4_t t = vfmaq_f32(v, vmulq_n_f32(vmulq_f32(v, v), 0.044715f), v);
    const float32x4_t e = vexp(vmulq_n_f32(t, 2.0f * 0.7978845608028654f));
    return vmulq_f32(v, vdivq_f32(e, vaddq_f32(e, vdupq_n_f32(1.0f))));
}

// Four cached elements as f32: an f32 cache or an IEEE half cache (widened exactly).
inline float32x4_t load4(const float* p) { return vld1q_f32(p); }
inline float32x4_t load4(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
inline float kv_f32(float x) { return x; }
inline float kv_f32(uint16_t h) { return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0); }

// q . k_r for the 8 rows r = 0..7 of k (stride elements apart) over hd4 (a multiple of 4) dims,
// into s[0..8).
template <typename T>
inline void dot8_rows(int hd4, const float* q, const T* k, int64_t stride, float* s) {
    float32x4_t a[8];
    for (int r = 0; r < 8; r++) a[r] = vdupq_n_f32(0.0f);
    for (int d = 0; d < hd4; d += 4) {
        const float32x4_t qd = vld1q_f32(q + d);
        for (int r = 0; r < 8; r++) a[r] = vfmaq_f32(a[r], qd, load4(k + r * stride + d));
    }
    // pairwise-add tree: lane r of each result is the full sum of a[r] (a[4 + r])
    vst1q_f32(s, vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])));
    vst1q_f32(s + 4, vpaddq_f32(vpaddq_f32(a[4], a[5]), vpaddq_f32(a[6], a[7])));
}

template <typename T>
inline float dot_row(int head_dim, const float* q, const T* k) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    int d = 0;
    for (; d + 4 <= head_dim; d += 4) acc = vfmaq_f32(acc, vld1q_f32(q + d), load4(k + d));
    float s = vaddvq_f32(acc);
    for (; d < head_dim; d++) s += q[d] * kv_f32(k[d]);
    return s;
}

// out += sum_{r < R} p[r] * row r of v (rows stride elements apart), over head_dim floats.
template <int R, typename T>
inline void axpy_rows(int head_dim, const float* p, const T* v, int64_t stride, float* out) {
    int d = 0;
    for (; d + 4 <= head_dim; d += 4) {
        float32x4_t acc = vld1q_f32(out + d);
        for (int r = 0; r < R; r++) acc = vfmaq_n_f32(acc, load4(v + r * stride + d), p[r]);
        vst1q_f32(out + d, acc);
    }
    for (; d < head_dim; d++)
        for (int r = 0; r < R; r++) out[d] += p[r] * kv_f32(v[r * stride + d]);
}

}  // namespace

void layernorm_f32_neon(int64_t n, const float* x, const float* w, const float* b, float eps, float* y) {
    // the mean is summed in f64 like the ref, so float(mean) rounds the same even on large offsets
    float64x2_t s0 = vdupq_n_f64(0.0), s1 = vdupq_n_f64(0.0);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) add_f64(vld1q_f32(x + i), s0, s1);
    double sum = vaddvq_f64(vaddq_f64(s0, s1));
    for (; i < n; i++) sum += x[i];
    const float m = float(sum / double(n));
    const float32x4_t vm = vdupq_n_f32(m);
    float32x4_t q0 = vdupq_n_f32(0.0f), q1 = vdupq_n_f32(0.0f);
    for (i = 0; i + 8 <= n; i += 8) {
        const float32x4_t d0 = vsubq_f32(vld1q_f32(x + i), vm), d1 = vsubq_f32(vld1q_f32(x + i + 4), vm);
        q0 = vfmaq_f32(q0, d0, d0);
        q1 = vfmaq_f32(q1, d1, d1);
    }
    double var = vaddvq_f32(vaddq_f32(q0, q1));
    for (; i < n; i++) var += double(x[i] - m) * double(x[i] - m);
    const float inv = float(1.0 / std::sqrt(var / double(n) + double(eps)));
    for (i = 0; i + 4 <= n; i += 4) {
        const float32x4_t t = vmulq_n_f32(vsubq_f32(vld1q_f32(x + i), vm), inv);
        vst1q_f32(y + i, vfmaq_f32(vld1q_f32(b + i), t, vld1q_f32(w + i)));
    }
    for (; i < n; i++) y[i] = (x[i] - m) * inv * w[i] + b[i];
}

void gelu_new_f32_neon(int64_t n, float* x) {
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) vst1q_f32(x + i, gelu4(vld1q_f32(x + i)));
    if (i < n) {  // the tail through a padded copy, so every element gets the same math
        float t[4] = {};
        std::copy(x + i, x + n, t);
        vst1q_f32(t, gelu4(vld1q_f32(t)));
        std::copy(t, t + (n - i), x + i);
    }
}

void rope_neox_f32_neon(int n_head, int head_dim, int n_rot, int pos, float theta, float* x) {
    rope_neox_chunks(n_head, head_dim, n_rot, pos, theta, x, [](float* xa, float* xb, const float* cs, const float* sn,
                                                                int m) {
        int j = 0;
        for (; j + 4 <= m; j += 4) {
            const float32x4_t a = vld1q_f32(xa + j), b = vld1q_f32(xb + j);
            const float32x4_t c = vld1q_f32(cs + j), s = vld1q_f32(sn + j);
            vst1q_f32(xa + j, vfmsq_f32(vmulq_f32(a, c), b, s));
            vst1q_f32(xb + j, vfmaq_f32(vmulq_f32(b, c), a, s));
        }
        rope_pairs_tail(xa, xb, cs, sn, j, m);
    });
}

namespace {

template <typename T>
void attn_head_neon(int head_dim, int n_kv, const float* q, const T* k, const T* v, int64_t kv_stride, float scale,
                    float* scores, float* out) {
    const int hd4 = head_dim & ~3;
    // scores = scale * q.k_j, eight keys per step (a head's keys are contiguous: the hardware prefetcher streams them)
    int j = 0;
    for (; j + 8 <= n_kv; j += 8) {
        dot8_rows(hd4, q, k + j * kv_stride, kv_stride, scores + j);
        for (int d = hd4; d < head_dim; d++)
            for (int r = 0; r < 8; r++) scores[j + r] += q[d] * kv_f32(k[(j + r) * kv_stride + d]);
    }
    for (; j < n_kv; j++) scores[j] = dot_row(head_dim, q, k + j * kv_stride);

    // softmax numerators e_j = exp(s_j - max); the sum in f64 like the ref
    float32x4_t vmax = vdupq_n_f32(-INFINITY);
    for (j = 0; j + 4 <= n_kv; j += 4) {
        const float32x4_t s = vmulq_n_f32(vld1q_f32(scores + j), scale);
        vst1q_f32(scores + j, s);
        vmax = vmaxq_f32(vmax, s);
    }
    float mx = vmaxvq_f32(vmax);
    for (; j < n_kv; j++) {
        scores[j] *= scale;
        mx = std::max(mx, scores[j]);
    }
    const float32x4_t vmx = vdupq_n_f32(mx);
    float64x2_t s0 = vdupq_n_f64(0.0), s1 = vdupq_n_f64(0.0);
    for (j = 0; j + 4 <= n_kv; j += 4) {
        const float32x4_t e = vexp(vsubq_f32(vld1q_f32(scores + j), vmx));
        vst1q_f32(scores + j, e);
        add_f64(e, s0, s1);
    }
    if (j < n_kv) {  // padded with -inf, whose exp is 0
        float t[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
        std::copy(scores + j, scores + n_kv, t);
        const float32x4_t e = vexp(vsubq_f32(vld1q_f32(t), vmx));
        vst1q_f32(t, e);
        add_f64(e, s0, s1);
        std::copy(t, t + (n_kv - j), scores + j);
    }
    const float inv = float(1.0 / vaddvq_f64(vaddq_f64(s0, s1)));

    // out = inv * sum_j e_j v_j, four rows per pass over out
    std::fill(out, out + head_dim, 0.0f);
    for (j = 0; j + 4 <= n_kv; j += 4) {
        axpy_rows<4>(head_dim, scores + j, v + j * kv_stride, kv_stride, out);
    }
    for (; j < n_kv; j++) axpy_rows<1>(head_dim, scores + j, v + j * kv_stride, kv_stride, out);
    int d = 0;
    for (; d + 4 <= head_dim; d += 4) vst1q_f32(out + d, vmulq_n_f32(vld1q_f32(out + d), inv));
    for (; d < head_dim; d++) out[d] *= inv;
}

}  // namespace

void attn_head_f32_neon(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                        int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_neon(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

void attn_head_f16_neon(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                        int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_neon(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

}  // namespace phi2cpu
