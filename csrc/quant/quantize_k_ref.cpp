// Scalar K-quant (de)quantizers. Dequantizers follow the block layouts in blocks.h with the same
// float operation order as gguf.quants, so they equal it bit for bit (compiled with -ffp-contract=off).
// The weight quantizers are this project's own: a per-sub-block grid search over scales with a
// least-squares refit, then the sub-block scales themselves quantized to 6 or 8 bits.
#include <algorithm>
#include <cmath>

#include "quant/fp16.h"
#include "quant/quantize_ref.h"

namespace phi2cpu {
namespace {

inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

void pack_scale_min_k4(const int* sc, const int* m, uint8_t* q) {
    for (int j = 0; j < 4; j++) {
        q[j] = uint8_t((sc[j] & 63) | ((sc[j + 4] >> 4) << 6));
        q[j + 4] = uint8_t((m[j] & 63) | ((m[j + 4] >> 4) << 6));
        q[j + 8] = uint8_t((sc[j + 4] & 0x0f) | ((m[j + 4] & 0x0f) << 4));
    }
}

// Fit x[i] ~ scale * q[i] - min with q in 0..nmax and min >= 0 (the offset is never positive, as the
// format stores it unsigned). Tries several scales across the range, refits (scale, min) by least
// squares to each candidate's integers, keeps the lowest squared error.
void fit_scale_min(const float* x, int n, int nmax, float* scale, float* min) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) { lo = std::min(lo, x[i]); hi = std::max(hi, x[i]); }
    lo = std::min(lo, 0.0f);
    if (hi <= lo) { *scale = 0.0f; *min = -lo; return; }
    float best_err = INFINITY, best_s = (hi - lo) / float(nmax), best_m = -lo;
    for (int step = -4; step <= 8; step++) {
        const float iscale = (float(nmax) + 0.125f * float(step)) / (hi - lo);
        float sq = 0, sq2 = 0, sx = 0, sqx = 0;
        int q[QK_K];
        for (int i = 0; i < n; i++) {
            q[i] = clampi(int(std::nearbyint((x[i] - lo) * iscale)), 0, nmax);
            sq += float(q[i]); sq2 += float(q[i] * q[i]); sx += x[i]; sqx += float(q[i]) * x[i];
        }
        // least squares for x ~ s q + b: s = (n sqx - sq sx) / (n sq2 - sq^2), b = (sx - s sq) / n
        const float det = float(n) * sq2 - sq * sq;
        if (det <= 0) continue;
        float s = (float(n) * sqx - sq * sx) / det;
        float b = (sx - s * sq) / float(n);
        if (b > 0) { b = 0; s = sq2 > 0 ? sqx / sq2 : 0; }  // offset must stay <= 0
        if (s <= 0) continue;
        float err = 0;
        for (int i = 0; i < n; i++) {
            const float e = s * float(q[i]) + b - x[i];
            err += e * e;
        }
        if (err < best_err) { best_err = err; best_s = s; best_m = -b; }
    }
    *scale = best_s;
    *min = best_m;
}

// Shared by Q4_K (nmax 15) and Q5_K (nmax 31): fills d, dmin, scales; q[256] gets the integers.
void quantize_superblock_k4(const float* x, int nmax, uint16_t* d_out, uint16_t* dmin_out, uint8_t* scales,
                            uint8_t* q) {
    float s[8], mn[8], smax = 0, mmax = 0;
    for (int j = 0; j < 8; j++) {
        fit_scale_min(x + 32 * j, 32, nmax, &s[j], &mn[j]);
        smax = std::max(smax, s[j]);
        mmax = std::max(mmax, mn[j]);
    }
    *d_out = fp32_to_fp16(smax / 63.0f);
    *dmin_out = fp32_to_fp16(mmax / 63.0f);
    const float d = fp16_to_fp32(*d_out), dmin = fp16_to_fp32(*dmin_out);
    int sc[8], m[8];
    for (int j = 0; j < 8; j++) {
        sc[j] = d > 0 ? clampi(int(std::nearbyint(s[j] / d)), 0, 63) : 0;
        m[j] = dmin > 0 ? clampi(int(std::nearbyint(mn[j] / dmin)), 0, 63) : 0;
    }
    pack_scale_min_k4(sc, m, scales);
    for (int j = 0; j < 8; j++) {
        const float ds = d * float(sc[j]), dm = dmin * float(m[j]);
        for (int i = 0; i < 32; i++)
            q[32 * j + i] = ds > 0 ? uint8_t(clampi(int(std::nearbyint((x[32 * j + i] + dm) / ds)), 0, nmax)) : 0;
    }
}

// Fit x[i] ~ scale * q[i] with q in -32..31: grid over scales mapping the extreme value near -32,
// least-squares refit of the scale to each candidate's integers, lowest squared error wins.
float fit_scale_q6(const float* x, int n) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
    if (amax == 0) return 0.0f;
    float best_err = INFINITY, best_s = max / -32.0f;
    for (int step = -4; step <= 4; step++) {
        const float iscale = -(32.0f + 0.25f * float(step)) / max;
        float sqx = 0, sq2 = 0;
        int q[16];
        for (int i = 0; i < n; i++) {
            q[i] = clampi(int(std::nearbyint(x[i] * iscale)), -32, 31);
            sqx += float(q[i]) * x[i];
            sq2 += float(q[i] * q[i]);
        }
        if (sq2 <= 0) continue;
        const float s = sqx / sq2;
        float err = 0;
        for (int i = 0; i < n; i++) {
            const float e = s * float(q[i]) - x[i];
            err += e * e;
        }
        if (err < best_err) { best_err = err; best_s = s; }
    }
    return best_s;
}

}  // namespace

void quantize_row_q4_K_ref(const float* x, block_q4_K* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        uint8_t q[QK_K];
        quantize_superblock_k4(x, 15, &y[b].d, &y[b].dmin, y[b].scales, q);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) y[b].qs[32 * c + l] = uint8_t(q[64 * c + l] | (q[64 * c + 32 + l] << 4));
    }
}

void quantize_row_q5_K_ref(const float* x, block_q5_K* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        uint8_t q[QK_K];
        quantize_superblock_k4(x, 31, &y[b].d, &y[b].dmin, y[b].scales, q);
        std::fill(y[b].qh, y[b].qh + QK_K / 8, uint8_t(0));
        for (int j = 0; j < 8; j++)
            for (int l = 0; l < 32; l++) y[b].qh[l] |= uint8_t((q[32 * j + l] >> 4) << j);
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                y[b].qs[32 * c + l] = uint8_t((q[64 * c + l] & 15) | ((q[64 * c + 32 + l] & 15) << 4));
    }
}

void quantize_row_q6_K_ref(const float* x, block_q6_K* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float s[16], smax = 0;
        for (int j = 0; j < 16; j++) {
            s[j] = fit_scale_q6(x + 16 * j, 16);
            smax = std::max(smax, std::fabs(s[j]));
        }
        y[b].d = fp32_to_fp16(smax / 127.0f);
        const float d = fp16_to_fp32(y[b].d);
        uint8_t q[QK_K];
        for (int j = 0; j < 16; j++) {
            y[b].scales[j] = int8_t(d > 0 ? clampi(int(std::nearbyint(s[j] / d)), -127, 127) : 0);
            const float ds = d * float(y[b].scales[j]);
            for (int i = 0; i < 16; i++)
                q[16 * j + i] = uint8_t(ds != 0 ? clampi(int(std::nearbyint(x[16 * j + i] / ds)), -32, 31) + 32 : 32);
        }
        for (int h = 0; h < 2; h++) {
            const uint8_t* qq = q + 128 * h;
            uint8_t* ql = y[b].ql + 64 * h;
            uint8_t* qh = y[b].qh + 32 * h;
            for (int l = 0; l < 32; l++) {
                ql[l] = uint8_t((qq[l] & 15) | ((qq[l + 64] & 15) << 4));
                ql[l + 32] = uint8_t((qq[l + 32] & 15) | ((qq[l + 96] & 15) << 4));
                qh[l] = uint8_t((qq[l] >> 4) | ((qq[l + 32] >> 4) << 2) | ((qq[l + 64] >> 4) << 4) |
                                ((qq[l + 96] >> 4) << 6));
            }
        }
    }
}

// The value of largest magnitude (the first one on ties) maps to -128; rounding is to nearest even.
void quantize_row_q8_K_ref(const float* x, block_q8_K* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        float amax = 0, max = 0;
        for (int i = 0; i < QK_K; i++)
            if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
        if (amax == 0) {
            y[b].d = 0;
            std::fill(y[b].qs, y[b].qs + QK_K, int8_t(0));
            std::fill(y[b].bsums, y[b].bsums + QK_K / 16, int16_t(0));
            continue;
        }
        const float iscale = -128.0f / max;
        for (int i = 0; i < QK_K; i++) y[b].qs[i] = int8_t(std::min(127, int(std::nearbyint(iscale * x[i]))));
        for (int j = 0; j < QK_K / 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += y[b].qs[16 * j + i];
            y[b].bsums[j] = int16_t(sum);
        }
        y[b].d = 1.0f / iscale;
    }
}

namespace {

// Q4_K and Q5_K differ only in how an element is read (k4_quant).
template <typename Block>
void dequantize_row_k4(const Block* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(x[b].d), dmin = fp16_to_fp32(x[b].dmin);
        for (int j = 0; j < 8; j++) {
            int sc, m;
            k4_scale_min(j, x[b].scales, &sc, &m);
            const float d1 = d * float(sc), m1 = dmin * float(m);
            for (int l = 0; l < 32; l++) *y++ = d1 * float(k4_quant(x[b], j, l)) - m1;
        }
    }
}

}  // namespace

void dequantize_row_q4_K_ref(const block_q4_K* x, float* y, int64_t n) { dequantize_row_k4(x, y, n); }

void dequantize_row_q5_K_ref(const block_q5_K* x, float* y, int64_t n) { dequantize_row_k4(x, y, n); }

void dequantize_row_q6_K_ref(const block_q6_K* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(x[b].d);
        for (int h = 0; h < 2; h++) {
            const uint8_t* ql = x[b].ql + 64 * h;
            const uint8_t* qh = x[b].qh + 32 * h;
            const int8_t* sc = x[b].scales + 8 * h;
            for (int l = 0; l < 32; l++) {
                const int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * float(sc[l / 16]) * float(q1);
                y[l + 32] = d * float(sc[l / 16 + 2]) * float(q2);
                y[l + 64] = d * float(sc[l / 16 + 4]) * float(q3);
                y[l + 96] = d * float(sc[l / 16 + 6]) * float(q4);
            }
            y += 128;
        }
    }
}

void dequantize_row_q8_K_ref(const block_q8_K* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++)
        for (int i = 0; i < QK_K; i++) *y++ = x[b].d * float(x[b].qs[i]);
}

}  // namespace phi2cpu
