#include "kernels/ref/ops_ref.h"

#include <cmath>

#include "kernels/ref/fma_exact.h"
#include "kernels/rope_angles.h"
#include "quant/fp16.h"

namespace phi2cpu {

float vec_dot_f32_f32_ref(int64_t n, const void* w, const void* x) {
    const float* a = static_cast<const float*>(w);
    const float* b = static_cast<const float*>(x);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += a[i] * b[i];
    return sum;
}

float vec_dot_f16_f32_ref(int64_t n, const void* w, const void* x) {
    const uint16_t* a = static_cast<const uint16_t*>(w);
    const float* b = static_cast<const float*>(x);
    float sum = 0.0f;
    for (int64_t i = 0; i < n; i++) sum += fp16_to_fp32(a[i]) * b[i];
    return sum;
}

float vec_dot_q8_0_q8_0_ref(int64_t n, const void* w, const void* x) {
    const block_q8_0* a = static_cast<const block_q8_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK8_0; blk++) {
        int32_t isum = 0;
        for (int j = 0; j < QK8_0; j++) isum += int32_t(a[blk].qs[j]) * int32_t(b[blk].qs[j]);
        sum = fma_exact(float(isum), fp16_to_fp32(a[blk].d) * fp16_to_fp32(b[blk].d), sum);
    }
    return sum;
}

float vec_dot_q4_0_q8_0_ref(int64_t n, const void* w, const void* x) {
    const block_q4_0* a = static_cast<const block_q4_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK4_0; blk++) {
        int32_t isum = 0;
        for (int j = 0; j < QK4_0 / 2; j++) {
            isum += ((a[blk].qs[j] & 0x0f) - 8) * int32_t(b[blk].qs[j]);
            isum += ((a[blk].qs[j] >> 4) - 8) * int32_t(b[blk].qs[j + QK4_0 / 2]);
        }
        sum = fma_exact(float(isum), fp16_to_fp32(a[blk].d) * fp16_to_fp32(b[blk].d), sum);
    }
    return sum;
}

float vec_dot_q5_0_q8_0_ref(int64_t n, const void* w, const void* x) {
    const block_q5_0* a = static_cast<const block_q5_0*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK5_0; blk++) {
        int32_t isum = 0;
        for (int j = 0; j < QK5_0; j++) isum += (q5_quant(a[blk].qh, a[blk].qs, j) - 16) * int32_t(b[blk].qs[j]);
        sum += fp16_to_fp32(a[blk].d) * fp16_to_fp32(b[blk].d) * float(isum);
    }
    return sum;
}

namespace {

// sum_j (d q_j + m) dx x_j = d dx sum q x + m dx sum x over blocks with a scale d and offset m.
template <typename Block, int (*Quant)(const Block&, int)>
float vec_dot_offset_q8_0(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / 32; blk++) {
        int32_t qx = 0, xs = 0;
        for (int j = 0; j < 32; j++) {
            qx += Quant(a[blk], j) * int32_t(b[blk].qs[j]);
            xs += b[blk].qs[j];
        }
        const float dx = fp16_to_fp32(b[blk].d);
        sum += fp16_to_fp32(a[blk].d) * dx * float(qx) + fp16_to_fp32(a[blk].m) * dx * float(xs);
    }
    return sum;
}

int quant_q4_1(const block_q4_1& b, int j) { return nibble_quant(b.qs, j); }
int quant_q5_1(const block_q5_1& b, int j) { return q5_quant(b.qh, b.qs, j); }

}  // namespace

float vec_dot_iq4_nl_q8_0_ref(int64_t n, const void* w, const void* x) {
    const block_iq4_nl* a = static_cast<const block_iq4_nl*>(w);
    const block_q8_0* b = static_cast<const block_q8_0*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK4_NL; blk++) {
        int32_t isum = 0;
        for (int j = 0; j < QK4_NL; j++) isum += kIQ4NLValues[nibble_quant(a[blk].qs, j)] * int32_t(b[blk].qs[j]);
        sum += fp16_to_fp32(a[blk].d) * fp16_to_fp32(b[blk].d) * float(isum);
    }
    return sum;
}

float vec_dot_q4_1_q8_0_ref(int64_t n, const void* w, const void* x) {
    return vec_dot_offset_q8_0<block_q4_1, quant_q4_1>(n, w, x);
}

float vec_dot_q5_1_q8_0_ref(int64_t n, const void* w, const void* x) {
    return vec_dot_offset_q8_0<block_q5_1, quant_q5_1>(n, w, x);
}

namespace {

// sum_j m[j] * (sum of the 32 activations of sub-block j), from the Q8_K 16-value sums.
inline int32_t kquant_min_sum(const uint8_t* scales, const int16_t* bsums) {
    int32_t s = 0;
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k4_scale_min(j, scales, &sc, &m);
        s += m * (int32_t(bsums[2 * j]) + int32_t(bsums[2 * j + 1]));
    }
    return s;
}

// Q4_K and Q5_K differ only in how an element is read (k4_quant). Per block:
// d*x.d * sum_j sc[j] (q . xq)_j  -  dmin*x.d * sum_j m[j] (sum xq)_j, in the order every path's
// dots and GEMMs of these types follow (dispatch.h): the block's exact integer sums isum and msum, then
//   acc = fma(float(isum), d * x.d, acc);  acc = fma(float(-msum), dmin * x.d, acc)
template <typename Block>
float vec_dot_k4_q8_K(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK_K; blk++) {
        int32_t isum = 0;
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k4_scale_min(j, a[blk].scales, &sc, &m);
            int32_t s = 0;
            for (int l = 0; l < 32; l++) s += k4_quant(a[blk], j, l) * int32_t(b[blk].qs[32 * j + l]);
            isum += sc * s;
        }
        sum = fma_exact(float(isum), fp16_to_fp32(a[blk].d) * b[blk].d, sum);
        sum = fma_exact(float(-kquant_min_sum(a[blk].scales, b[blk].bsums)), fp16_to_fp32(a[blk].dmin) * b[blk].d, sum);
    }
    return sum;
}

}  // namespace

float vec_dot_q4_K_q8_K_ref(int64_t n, const void* w, const void* x) { return vec_dot_k4_q8_K<block_q4_K>(n, w, x); }

float vec_dot_q5_K_q8_K_ref(int64_t n, const void* w, const void* x) { return vec_dot_k4_q8_K<block_q5_K>(n, w, x); }

// Per block: d*x.d * sum_j (sc_j & 15) (q . xq)_j  -  dmin*x.d * sum_j (sc_j >> 4) bsums_j (j: 16 sub-blocks of 16).
float vec_dot_q2_K_q8_K_ref(int64_t n, const void* w, const void* x) {
    const block_q2_K* a = static_cast<const block_q2_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK_K; blk++) {
        int32_t isum = 0, msum = 0;
        for (int j = 0; j < 16; j++) {
            int32_t s = 0;
            for (int l = 0; l < 16; l++) s += k2_low_bits(a[blk].qs, 16 * j + l) * int32_t(b[blk].qs[16 * j + l]);
            isum += (a[blk].scales[j] & 15) * s;
            msum += (a[blk].scales[j] >> 4) * int32_t(b[blk].bsums[j]);
        }
        sum = fma_exact(float(isum), fp16_to_fp32(a[blk].d) * b[blk].d, sum);  // the order of vec_dot_q4_K_q8_K_ref
        sum = fma_exact(float(-msum), fp16_to_fp32(a[blk].dmin) * b[blk].d, sum);
    }
    return sum;
}

float vec_dot_q3_K_q8_K_ref(int64_t n, const void* w, const void* x) {
    const block_q3_K* a = static_cast<const block_q3_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK_K; blk++) {
        int32_t isum = 0;
        for (int j = 0; j < 16; j++) {
            int32_t s = 0;
            for (int l = 0; l < 16; l++) s += q3_quant(a[blk], 16 * j + l) * int32_t(b[blk].qs[16 * j + l]);
            isum += q3_scale(a[blk].scales, j) * s;
        }
        sum = fma_exact(float(isum), fp16_to_fp32(a[blk].d) * b[blk].d, sum);  // as Q6_K
    }
    return sum;
}

float vec_dot_q6_K_q8_K_ref(int64_t n, const void* w, const void* x) {
    const block_q6_K* a = static_cast<const block_q6_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK_K; blk++) {
        int32_t isum = 0;
        for (int h = 0; h < 2; h++) {
            const uint8_t* ql = a[blk].ql + 64 * h;
            const uint8_t* qh = a[blk].qh + 32 * h;
            const int8_t* sc = a[blk].scales + 8 * h;
            const int8_t* xq = b[blk].qs + 128 * h;
            int32_t s[8] = {0, 0, 0, 0, 0, 0, 0, 0};  // per 16-value sub-block of this half
            for (int l = 0; l < 32; l++) {
                const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                s[l / 16] += q1 * xq[l];
                s[l / 16 + 2] += q2 * xq[l + 32];
                s[l / 16 + 4] += q3 * xq[l + 64];
                s[l / 16 + 6] += q4 * xq[l + 96];
            }
            for (int j = 0; j < 8; j++) isum += sc[j] * s[j];
        }
        sum = fma_exact(float(isum), fp16_to_fp32(a[blk].d) * b[blk].d, sum);  // the order of every path
    }
    return sum;
}

// d * x.d * sum_j (ls_j - 32) * (values . xq)_j over the eight sub-blocks of 32.
float vec_dot_iq4_xs_q8_K_ref(int64_t n, const void* w, const void* x) {
    const block_iq4_xs* a = static_cast<const block_iq4_xs*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    float sum = 0.0f;
    for (int64_t blk = 0; blk < n / QK_K; blk++) {
        int32_t isum = 0;
        for (int j = 0; j < 8; j++) {
            int32_t s = 0;
            for (int l = 0; l < 32; l++)
                s += kIQ4NLValues[nibble_quant(a[blk].qs + 16 * j, l)] * int32_t(b[blk].qs[32 * j + l]);
            isum += iq4xs_scale(a[blk], j) * s;
        }
        sum = fma_exact(float(isum), fp16_to_fp32(a[blk].d) * b[blk].d, sum);  // as Q6_K
    }
    return sum;
}

void gemm_f32_panel16_ref(int64_t K, const float* panel, const float* x, int64_t ldx, int n_tok, float* y,
                          int64_t ldy, bool accumulate) {
    for (int c = 0; c < n_tok; c++) {
        for (int j = 0; j < kPanelRows; j++) {
            float sum = accumulate ? y[c * ldy + j] : 0.0f;
            for (int64_t k = 0; k < K; k++) sum += panel[k * kPanelRows + j] * x[c * ldx + k];
            y[c * ldy + j] = sum;
        }
    }
}

void layernorm_f32_ref(int64_t n, const float* x, const float* w, const float* b, float eps, float* y) {
    double mean = 0.0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= double(n);
    double var = 0.0;
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= double(n);
    const float inv = float(1.0 / std::sqrt(var + double(eps)));
    const float m = float(mean);
    for (int64_t i = 0; i < n; i++) y[i] = (x[i] - m) * inv * w[i] + b[i];
}

void gelu_new_f32_ref(int64_t n, float* x) {
    const float k = 0.7978845608028654f;  // sqrt(2/pi)
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        x[i] = 0.5f * v * (1.0f + std::tanh(k * (v + 0.044715f * v * v * v)));
    }
}

void rope_neox_f32_ref(int n_head, int head_dim, int n_rot, int pos, float theta, float* x) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        float c, s;
        rope_cos_sin(pos, theta, n_rot, i, 1, &c, &s);
        for (int h = 0; h < n_head; h++) {
            float* xh = x + int64_t(h) * head_dim;
            const float a = xh[i], b = xh[i + half];
            xh[i] = a * c - b * s;
            xh[i + half] = b * c + a * s;
        }
    }
}

void softmax_f32_ref(int64_t n, float* x) {
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++) mx = std::fmax(mx, x[i]);
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = std::exp(x[i] - mx);
        sum += x[i];
    }
    const float inv = float(1.0 / sum);
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

namespace {

inline float kv_f32(float x) { return x; }
inline float kv_f32(uint16_t h) { return fp16_to_fp32(h); }

// The math of attn_head_f32_ref over cached rows of type T, each element widened to f32 as it is read.
template <typename T>
void attn_head_ref(int head_dim, int n_kv, const float* q, const T* k, const T* v, int64_t kv_stride, float scale,
                   float* scores, float* out) {
    for (int j = 0; j < n_kv; j++) {
        const T* kj = k + j * kv_stride;
        float s = 0.0f;
        for (int d = 0; d < head_dim; d++) s += q[d] * kv_f32(kj[d]);
        scores[j] = s * scale;
    }
    softmax_f32_ref(n_kv, scores);
    for (int d = 0; d < head_dim; d++) out[d] = 0.0f;
    for (int j = 0; j < n_kv; j++) {
        const T* vj = v + j * kv_stride;
        const float p = scores[j];
        for (int d = 0; d < head_dim; d++) out[d] += p * kv_f32(vj[d]);
    }
}

}  // namespace

void attn_head_f32_ref(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                       int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_ref(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

void attn_head_f16_ref(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                       int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_ref(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

}  // namespace phi2cpu
