// Importance-weighted K-quant quantizers (see quantize_weighted.cpp for the search). A super-block's
// sub-block scales are themselves quantized (6-bit for Q4_K/Q5_K, int8 for Q6_K): each is weighted
// by what one step of it costs, sum_i w_i q_i^2 for a scale and sum_i w_i for a min; then each
// sub-block tries its stored scale and min one step either way and keeps the lowest error.
#include <algorithm>
#include <cmath>
#include <vector>

#include "quant/fp16.h"
#include "quant/quantize_ref.h"
#include "quant/quantize_weighted.h"
#include "quant/weighted_fit.h"

namespace phi2cpu {
namespace {

// The sub-block scales v ~ d * L, L in [lmin, lmax], each weighted by c (n <= 16); d in fp16.
// Candidates map the extreme scale onto the end of the range and up to 32% inside it.
float fit_scale_grid(const float* v, const float* c, int n, int lmin, int lmax, int* L) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (std::fabs(v[i]) > amax) { amax = std::fabs(v[i]); max = v[i]; }
    if (amax == 0) {
        std::fill(L, L + n, 0);
        return 0.0f;
    }
    int tmp[16];
    float best_d = 0, best_score = -1;
    for (int end : {lmin, lmax}) {
        if (end == 0) continue;
        for (int t = 0; t <= 16; t++) {
            const float target = float(end) * (1.0f - 0.02f * float(t));
            float d = max / target, sxl = 0, sll = 0;
            for (int i = 0; i < n; i++) {
                tmp[i] = round_to(v[i] / d, lmin, lmax);
                sxl += c[i] * v[i] * float(tmp[i]);
                sll += c[i] * float(tmp[i] * tmp[i]);
            }
            if (sll <= 0) continue;
            d = sxl / sll;
            const float score = sxl * sxl / sll;
            if (score > best_score) { best_score = score; best_d = d; }
        }
    }
    best_d = fp16_to_fp32(fp32_to_fp16(best_d));
    for (int i = 0; i < n; i++) L[i] = best_d != 0 ? round_to(v[i] / best_d, lmin, lmax) : 0;
    return best_d;
}

// Weighted error of one sub-block at stored scale ds and min dm (x ~ ds*q - dm), q re-rounded into q.
float subblock_error(const float* x, const float* w, int n, int nmax, float ds, float dm, int* q) {
    float e = 0;
    for (int i = 0; i < n; i++) {
        q[i] = ds > 0 ? round_to((x[i] + dm) / ds, 0, nmax) : 0;
        const float r = ds * float(q[i]) - dm - x[i];
        e += w[i] * r * r;
    }
    return e;
}

void pack_scale_min_k4(const int* sc, const int* m, uint8_t* q) {
    for (int j = 0; j < 4; j++) {
        q[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = uint8_t((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        q[j + 8] = uint8_t((sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4));
    }
}

// Q4_K (nmax 15) and Q5_K (nmax 31): fills d, dmin, scales; q[256] gets the integers.
void superblock_k4(const float* x, const float* w, int nmax, uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales,
                   int* q) {
    float s[8], mn[8], cs[8], cm[8];
    for (int j = 0; j < 8; j++) {
        float m;
        fit_affine(x + 32 * j, w + 32 * j, 32, nmax, true, &s[j], &m, q + 32 * j);
        mn[j] = -m;
        cs[j] = cm[j] = 0;
        for (int i = 0; i < 32; i++) {
            cs[j] += w[32 * j + i] * float(q[32 * j + i] * q[32 * j + i]);
            cm[j] += w[32 * j + i];
        }
        if (cs[j] <= 0) cs[j] = cm[j];
    }
    int sc[8], m[8];
    const float d = fit_scale_grid(s, cs, 8, 0, 63, sc);
    const float dmin = fit_scale_grid(mn, cm, 8, 0, 63, m);
    *d_out = fp32_to_fp16(d);
    *dmin_out = fp32_to_fp16(dmin);
    int tq[32];
    for (int j = 0; j < 8; j++) {
        const float* xs = x + 32 * j;
        const float* ws = w + 32 * j;
        float best = INFINITY;
        int bs = sc[j], bm = m[j];
        for (int a = -1; a <= 1; a++) {
            for (int b = -1; b <= 1; b++) {
                const int ls = sc[j] + a, lm = m[j] + b;
                if (ls < 0 || ls > 63 || lm < 0 || lm > 63) continue;
                const float e = subblock_error(xs, ws, 32, nmax, d * float(ls), dmin * float(lm), tq);
                if (e < best) { best = e; bs = ls; bm = lm; std::copy(tq, tq + 32, q + 32 * j); }
            }
        }
        sc[j] = bs;
        m[j] = bm;
    }
    pack_scale_min_k4(sc, m, scales);
}

template <typename Block, typename F>
void for_superblocks(const float* x, Block* y, int64_t n, const float* importance, F f) {
    const std::vector<float> w = row_weights(x, importance, n, QK_K);
    for (int64_t b = 0; b < n / QK_K; b++) f(x + b * QK_K, w.data() + b * QK_K, y[b]);
}

}  // namespace

void quantize_row_q4_K_weighted(const float* x, block_q4_K* y, int64_t n, const float* importance) {
    for_superblocks(x, y, n, importance, [](const float* xb, const float* w, block_q4_K& b) {
        int q[QK_K];
        superblock_k4(xb, w, 15, &b.d, &b.dmin, b.scales, q);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) b.qs[32 * c + l] = uint8_t(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    });
}

void quantize_row_q5_K_weighted(const float* x, block_q5_K* y, int64_t n, const float* importance) {
    for_superblocks(x, y, n, importance, [](const float* xb, const float* w, block_q5_K& b) {
        int q[QK_K];
        superblock_k4(xb, w, 31, &b.d, &b.dmin, b.scales, q);
        std::fill(b.qh, b.qh + QK_K / 8, uint8_t(0));
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < 32; l++) b.qh[l] |= uint8_t((q[32 * j + l] >> 4) << j);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                b.qs[32 * c + l] = uint8_t((q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4));
    });
}

namespace {

float q6_error(const float* x, const float* w, float ds, int* q) {
    float e = 0;
    for (int i = 0; i < 16; i++) {
        q[i] = ds != 0 ? round_to(x[i] / ds, -32, 31) : 0;
        const float r = ds * float(q[i]) - x[i];
        e += w[i] * r * r;
    }
    return e;
}

}  // namespace

void quantize_row_q6_K_weighted(const float* x, block_q6_K* y, int64_t n, const float* importance) {
    for_superblocks(x, y, n, importance, [](const float* xb, const float* w, block_q6_K& b) {
        float s[16], c[16];
        int q[QK_K], L[16], tq[16];
        for (int j = 0; j < 16; j++) {
            s[j] = fit_symmetric(xb + 16 * j, w + 16 * j, 16, -32, 31, 9, false, q + 16 * j);
            c[j] = 0;
            for (int i = 0; i < 16; i++) c[j] += w[16 * j + i] * float(q[16 * j + i] * q[16 * j + i]);
        }
        const float d = fit_scale_grid(s, c, 16, -128, 127, L);
        b.d = fp32_to_fp16(d);
        for (int j = 0; j < 16; j++) {
            float best = INFINITY;
            int bl = L[j];
            for (int a = -1; a <= 1; a++) {
                const int l = L[j] + a;
                if (l < -128 || l > 127) continue;
                const float e = q6_error(xb + 16 * j, w + 16 * j, d * float(l), tq);
                if (e < best) { best = e; bl = l; std::copy(tq, tq + 16, q + 16 * j); }
            }
            b.scales[j] = int8_t(bl);
        }
        for (int h = 0; h < 2; h++) {
            const int* qq = q + 128 * h;
            uint8_t* ql = b.ql + 64 * h;
            uint8_t* qh = b.qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                const int a0 = qq[l] + 32, a1 = qq[l + 32] + 32, a2 = qq[l + 64] + 32, a3 = qq[l + 96] + 32;
                ql[l] = uint8_t((a0 & 15) | ((a2 & 15) << 4));
                ql[l + 32] = uint8_t((a1 & 15) | ((a3 & 15) << 4));
                qh[l] = uint8_t((a0 >> 4) | ((a1 >> 4) << 2) | ((a2 >> 4) << 4) | ((a3 >> 4) << 6));
            }
        }
    });
}

}  // namespace phi2cpu

namespace phi2cpu {
namespace {

template <typename Block, void (*Q)(const float*, Block*, int64_t, const float*),
          void (*D)(const Block*, float*, int64_t)>
void best_of_weighted(const float* x, Block* y, int64_t n, const float* importance) {
    if (!importance) {
        Q(x, y, n, nullptr);
        return;
    }
    float uniform[QK_K], a[QK_K], b[QK_K];
    std::fill(uniform, uniform + QK_K, 1.0f);
    for (int64_t i = 0; i < n / QK_K; i++) {
        const float* xb = x + i * QK_K;
        const float* imp = importance + i * QK_K;
        if (std::all_of(imp, imp + QK_K, [](float v) { return v == 0.0f; })) imp = uniform;
        Block weighted, plain;
        Q(xb, &weighted, QK_K, imp);
        Q(xb, &plain, QK_K, nullptr);
        D(&weighted, a, QK_K);
        D(&plain, b, QK_K);
        double ew = 0, ep = 0;
        for (int j = 0; j < QK_K; j++) {
            ew += double(imp[j]) * double(a[j] - xb[j]) * double(a[j] - xb[j]);
            ep += double(imp[j]) * double(b[j] - xb[j]) * double(b[j] - xb[j]);
        }
        y[i] = ew <= ep ? weighted : plain;
    }
}

}  // namespace

void quantize_row_q2_K_weighted(const float* x, block_q2_K* y, int64_t n, const float* importance) {
    best_of_weighted<block_q2_K, quantize_row_q2_K_ref, dequantize_row_q2_K_ref>(x, y, n, importance);
}
void quantize_row_q3_K_weighted(const float* x, block_q3_K* y, int64_t n, const float* importance) {
    best_of_weighted<block_q3_K, quantize_row_q3_K_ref, dequantize_row_q3_K_ref>(x, y, n, importance);
}
void quantize_row_iq4_xs_weighted(const float* x, block_iq4_xs* y, int64_t n, const float* importance) {
    best_of_weighted<block_iq4_xs, quantize_row_iq4_xs_ref, dequantize_row_iq4_xs_ref>(x, y, n, importance);
}

}  // namespace phi2cpu
