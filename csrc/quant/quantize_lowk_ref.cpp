// Scalar Q2_K / Q3_K (de)quantizers. Dequantizers use gguf.quants' float operation order, so they
// equal it bit for bit (compiled with -ffp-contract=off). The quantizers follow llama.cpp's algorithm
// for each type: without importance its reference search, with importance its weighted search, where
// each sub-block's squared error is weighted by importance[i] * sqrt(sigma^2 + x[i]^2).
#include <cmath>
#include <cstring>

#include "quant/fp16.h"
#include "quant/quantize_ref.h"

namespace phi2cpu {
namespace {

constexpr float kGroupMaxEps = 1e-15f;

inline int nearest(float v) { return int(std::nearbyint(v)); }
inline int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
inline float weight_of(const float* w, const float* x, int i) { return w ? w[i] : x[i] * x[i]; }

// x ~ scale * L - the_min with L in 0..nmax, the_min >= 0. Starts from the min-max mapping, then tries
// nstep + 1 inverse scales (rmin + rdelta * is + nmax) / (max - min), refits scale and min to each
// candidate's integers by weighted least squares and keeps the lowest weighted error (absolute error
// when use_mad). w == nullptr weights by x^2. Returns the scale.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, float rmin,
                    float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weight_of(w, x, 0), sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        const float wi = weight_of(w, x, i);
        sum_w += wi;
        sum_x += wi * x[i];
    }
    if (min > 0) min = 0;
    if (max <= min) {
        std::memset(L, 0, size_t(n));
        *the_min = -min;
        return 0.0f;
    }
    float iscale = float(nmax) / (max - min), scale = 1 / iscale;
    const auto err_of = [&](float s, float m, const uint8_t* q) {
        float e = 0;
        for (int i = 0; i < n; i++) {
            float diff = s * float(q[i]) + m - x[i];
            diff = use_mad ? std::fabs(diff) : diff * diff;
            e += weight_of(w, x, i) * diff;
        }
        return e;
    };
    for (int i = 0; i < n; i++) L[i] = uint8_t(clampi(nearest(iscale * (x[i] - min)), 0, nmax));
    float best = err_of(scale, min, L);
    uint8_t aux[16];
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * float(is) + float(nmax)) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest(iscale * (x[i] - min)), 0, nmax);
            aux[i] = uint8_t(l);
            const float wi = weight_of(w, x, i);
            sum_l += wi * float(l);
            sum_l2 += wi * float(l) * float(l);
            sum_xl += wi * float(l) * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            const float e = err_of(this_scale, this_min, aux);
            if (e < best) {
                std::memcpy(L, aux, size_t(n));
                best = e;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

// Non-negative x ~ scale * L with L in 0..nmax (the sub-block scales and mins of a weighted Q2_K
// block): a grid of 9 scales, then up to 5 passes of coordinate descent on the weighted fit.
float fit_positive_scale(int n, int nmax, const float* x, uint8_t* L, const float* w) {
    float max = 0;
    for (int i = 0; i < n; i++) max = std::fmax(max, x[i]);
    if (max == 0) {
        std::memset(L, 0, size_t(n));
        return 0.0f;
    }
    float iscale = float(nmax) / max;
    const float scale = 1 / iscale;
    float best = 0;
    for (int i = 0; i < n; i++) {
        const float diff = x[i] - scale * float(nearest(iscale * x[i]));
        best += w[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * float(is) + float(nmax)) / max, scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; i++) {
            const int l = std::min(nmax, nearest(iscale_is * x[i]));
            const float diff = x[i] - scale_is * float(l);
            mse += w[i] * diff * diff;
        }
        if (mse < best) {
            best = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = std::min(nmax, nearest(iscale * x[i]));
        L[i] = uint8_t(l);
        sumlx += w[i] * x[i] * float(l);
        suml2 += w[i] * float(l) * float(l);
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float slx = sumlx - w[i] * x[i] * float(L[i]), sl2 = suml2 - w[i] * float(L[i]) * float(L[i]);
            if (slx > 0 && sl2 > 0) {
                const int new_l = std::min(nmax, nearest(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w[i] * x[i] * float(new_l);
                    sl2 += w[i] * float(new_l) * float(new_l);
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = uint8_t(new_l);
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return sumlx / suml2;
}

// Symmetric x ~ scale * (L - nmax) with L - nmax in -nmax..nmax-1, the extreme value mapped to -nmax.
// The unweighted Q3_K search: up to 5 passes of coordinate descent weighted by x^2.
float fit_scale_q3(int n, int nmax, const float* x, int8_t* L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++)
        if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
    if (amax < kGroupMaxEps) {
        std::memset(L, 0, size_t(n));
        return 0.0f;
    }
    const float iscale = -float(nmax) / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = int8_t(l);
        const float w = x[i] * x[i];
        sumlx += w * x[i] * float(l);
        suml2 += w * float(l) * float(l);
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * float(L[i]);
            if (slx > 0) {
                float sl2 = suml2 - w * float(L[i]) * float(L[i]);
                const int new_l = clampi(nearest(x[i] * sl2 / slx), -nmax, nmax - 1);
                if (new_l != L[i]) {
                    slx += w * x[i] * float(new_l);
                    sl2 += w * float(new_l) * float(new_l);
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = int8_t(new_l);
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = int8_t(L[i] + nmax);
    return sumlx / suml2;
}

// Symmetric x ~ scale * (L - nmax) as fit_scale_q3, weighted by w: 19 candidate scales around the
// extreme-value mapping, each scored by its least-squares fit (the weighted Q3_K search, used both
// for the values and for the sub-block scales themselves).
float fit_scale_weighted(int n, int nmax, const float* x, int8_t* L, const float* w) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++)
        if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
    if (amax < kGroupMaxEps) {
        std::memset(L, 0, size_t(n));
        return 0.0f;
    }
    float iscale = -float(nmax) / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
        L[i] = int8_t(l + nmax);
        sumlx += w[i] * x[i] * float(l);
        suml2 += w[i] * float(l) * float(l);
    }
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(float(nmax) + 0.1f * float(is)) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = clampi(nearest(iscale * x[i]), -nmax, nmax - 1);
            sumlx += w[i] * x[i] * float(l);
            suml2 += w[i] * float(l) * float(l);
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) L[i] = int8_t(nmax + clampi(nearest(iscale * x[i]), -nmax, nmax - 1));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

// Two-bit fields of 256 values L (0..3) into a Q2_K / Q3_K qs.
void pack_2bit(const uint8_t* L, uint8_t* qs) {
    for (int h = 0; h < 2; h++)
        for (int l = 0; l < 32; l++) {
            const uint8_t* q = L + 128 * h + l;
            qs[32 * h + l] = uint8_t(q[0] | (q[32] << 2) | (q[64] << 4) | (q[96] << 6));
        }
}

// Q2_K integers from the block's final d, dmin and packed scales (sub-blocks whose scale is 0 keep L).
void requantize_q2(const float* x, const block_q2_K& y, uint8_t* L) {
    const float dd = fp16_to_fp32(y.d), dm = fp16_to_fp32(y.dmin);
    for (int j = 0; j < 16; j++) {
        const float d = dd * float(y.scales[j] & 15);
        if (d == 0) continue;
        const float m = dm * float(y.scales[j] >> 4);
        for (int i = 0; i < 16; i++) L[16 * j + i] = uint8_t(clampi(nearest((x[16 * j + i] + m) / d), 0, 3));
    }
}

void quantize_block_q2_K(const float* x, block_q2_K& y) {
    uint8_t L[QK_K];
    float scales[16], mins[16], w[16], max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        for (int i = 0; i < 16; i++) w[i] = std::fabs(x[16 * j + i]);
        scales[j] = fit_scale_min(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true);
        max_scale = std::fmax(max_scale, scales[j]);
        max_min = std::fmax(max_min, mins[j]);
    }
    std::memset(y.scales, 0, sizeof y.scales);
    y.d = fp32_to_fp16(max_scale > 0 ? max_scale / 15.0f : 0.0f);
    y.dmin = fp32_to_fp16(max_min > 0 ? max_min / 15.0f : 0.0f);
    if (max_scale > 0)
        for (int j = 0; j < 16; j++) y.scales[j] = uint8_t(nearest(15.0f / max_scale * scales[j]));
    if (max_min > 0)
        for (int j = 0; j < 16; j++) y.scales[j] = uint8_t(y.scales[j] | (nearest(15.0f / max_min * mins[j]) << 4));
    requantize_q2(x, y, L);
    pack_2bit(L, y.qs);
}

void quantize_block_q2_K_weighted(const float* x, const float* importance, block_q2_K& y) {
    uint8_t L[QK_K], Ls[16], Lm[16];
    float scales[16], mins[16], sw[16], w[16], sumx2 = 0;
    for (int i = 0; i < QK_K; i++) sumx2 += x[i] * x[i];
    const float sigma2 = sumx2 / QK_K;
    for (int j = 0; j < 16; j++) {
        sw[j] = 0;
        for (int i = 0; i < 16; i++) {
            w[i] = importance[16 * j + i] * std::sqrt(sigma2 + x[16 * j + i] * x[16 * j + i]);
            sw[j] += w[i];
        }
        scales[j] = fit_scale_min(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], -0.9f, 0.05f, 36, false);
    }
    y.d = fp32_to_fp16(fit_positive_scale(16, 15, scales, Ls, sw));
    y.dmin = fp32_to_fp16(fit_positive_scale(16, 15, mins, Lm, sw));
    for (int j = 0; j < 16; j++) y.scales[j] = uint8_t(Ls[j] | (Lm[j] << 4));
    requantize_q2(x, y, L);
    pack_2bit(L, y.qs);
}

// Packs 16 biased 6-bit scales (0..63) into a Q3_K block's 12 bytes.
void pack_q3_scales(const int* l, uint8_t* scales) {
    std::memset(scales, 0, K_SCALE_SIZE);
    for (int j = 0; j < 16; j++) {
        if (j < 8) scales[j] = uint8_t(l[j] & 15);
        else scales[j - 8] = uint8_t(scales[j - 8] | ((l[j] & 15) << 4));
        scales[8 + j % 4] = uint8_t(scales[8 + j % 4] | ((l[j] >> 4) << (2 * (j / 4))));
    }
}

// Requantizes with the block's final d and scales (sub-blocks whose scale is 0 keep L, biased by 4),
// then splits L into hmask and the 2-bit fields.
void finish_q3(const float* x, int8_t* L, block_q3_K& y) {
    const float dd = fp16_to_fp32(y.d);
    for (int j = 0; j < 16; j++) {
        const float d = dd * float(q3_scale(y.scales, j));
        if (d == 0) continue;
        for (int i = 0; i < 16; i++) L[16 * j + i] = int8_t(clampi(nearest(x[16 * j + i] / d), -4, 3) + 4);
    }
    std::memset(y.hmask, 0, sizeof y.hmask);
    uint8_t low[QK_K];
    for (int e = 0; e < QK_K; e++) {
        int v = L[e];
        if (v > 3) {
            y.hmask[e % 32] = uint8_t(y.hmask[e % 32] | (1 << (e / 32)));
            v -= 4;
        }
        low[e] = uint8_t(v);
    }
    pack_2bit(low, y.qs);
}

void quantize_block_q3_K(const float* x, block_q3_K& y) {
    int8_t L[QK_K];
    float scales[16], max_scale = 0, amax = 0;
    for (int j = 0; j < 16; j++) {
        scales[j] = fit_scale_q3(16, 4, x + 16 * j, L + 16 * j);
        if (std::fabs(scales[j]) > amax) { amax = std::fabs(scales[j]); max_scale = scales[j]; }
    }
    int l[16] = {};
    if (max_scale != 0) {
        const float iscale = -32.0f / max_scale;
        for (int j = 0; j < 16; j++) l[j] = clampi(nearest(iscale * scales[j]), -32, 31) + 32;
        y.d = fp32_to_fp16(1 / iscale);
    } else {
        y.d = fp32_to_fp16(0.0f);
    }
    pack_q3_scales(l, y.scales);
    finish_q3(x, L, y);
}

void quantize_block_q3_K_weighted(const float* x, const float* importance, block_q3_K& y) {
    int8_t L[QK_K], Ls[16];
    float scales[16], sw[16], w[16], sumx2 = 0;
    for (int i = 0; i < QK_K; i++) sumx2 += x[i] * x[i];
    const float sigma2 = 2 * sumx2 / QK_K;
    for (int j = 0; j < 16; j++) {
        sw[j] = 0;
        for (int i = 0; i < 16; i++) {
            w[i] = importance[16 * j + i] * std::sqrt(sigma2 + x[16 * j + i] * x[16 * j + i]);
            sw[j] += w[i];
        }
        scales[j] = fit_scale_weighted(16, 4, x + 16 * j, L + 16 * j, w);
    }
    const float d = fit_scale_weighted(16, 32, scales, Ls, sw);
    int l[16];
    for (int j = 0; j < 16; j++) l[j] = Ls[j];
    pack_q3_scales(l, y.scales);
    y.d = fp32_to_fp16(d);
    finish_q3(x, L, y);
}

}  // namespace

void quantize_row_q2_K_ref(const float* x, block_q2_K* y, int64_t n, const float* importance) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        if (importance) quantize_block_q2_K_weighted(x, importance + b * QK_K, y[b]);
        else quantize_block_q2_K(x, y[b]);
    }
}

void quantize_row_q3_K_ref(const float* x, block_q3_K* y, int64_t n, const float* importance) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K) {
        if (importance) quantize_block_q3_K_weighted(x, importance + b * QK_K, y[b]);
        else quantize_block_q3_K(x, y[b]);
    }
}

void dequantize_row_q2_K_ref(const block_q2_K* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(x[b].d), dmin = fp16_to_fp32(x[b].dmin);
        for (int e = 0; e < QK_K; e++) {
            const uint8_t sc = x[b].scales[e / 16];
            const float dl = d * float(sc & 15), ml = dmin * float(sc >> 4);
            *y++ = dl * float(k2_low_bits(x[b].qs, e)) - ml;
        }
    }
}

void dequantize_row_q3_K_ref(const block_q3_K* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(x[b].d);
        for (int e = 0; e < QK_K; e++) *y++ = d * float(q3_scale(x[b].scales, e / 16)) * float(q3_quant(x[b], e));
    }
}

}  // namespace phi2cpu
