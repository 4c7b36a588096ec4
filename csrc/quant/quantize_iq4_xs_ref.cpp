// IQ4_XS (de)quantizer. The encoder follows llama.cpp's IQ4_XS algorithm: per sub-block of 32, a
// weighted least-squares scale searched over 15 candidate grids; the eight sub-block scales then
// quantized to 6 bits against the super-block's fp16 scale, and every value re-rounded to its
// sub-block's final scale. Compiled with -ffp-contract=off (the float operation order is the spec).
#include <cmath>

#include "quant/fp16.h"
#include "quant/quantize_ref.h"

namespace phi2cpu {
namespace {

constexpr int kSub = 32;           // values per sub-block
constexpr int kTries = 7;          // candidate grids -kTries..kTries around the extreme value
constexpr float kGroupEps = 1e-15f;

// kBelow[t + 127]: the index of the largest IQ4_NL value <= t, for integers t in -127..112.
struct BelowTable {
    uint8_t idx[240];
    BelowTable() {
        for (int t = -127, k = 0; t <= 112; t++) {
            while (k < 15 && kIQ4NLValues[k + 1] <= t) k++;
            idx[t + 127] = uint8_t(k);
        }
    }
};
const BelowTable kBelow;

// The index of the IQ4_NL value nearest v; a tie goes to the larger value. The values are integers,
// so the one just below v is the one just below floor(v).
int nearest_value(float v) {
    if (v <= float(kIQ4NLValues[0])) return 0;
    if (!(v < float(kIQ4NLValues[15]))) return 15;  // NaN too
    const int lo = kBelow.idx[int(std::floor(v)) + 127];
    return v - float(kIQ4NLValues[lo]) < float(kIQ4NLValues[lo + 1]) - v ? lo : lo + 1;
}

// Weighted sums sum w q x and sum w q^2 of sub-block x rounded to the grid at inverse scale id.
void grid_sums(const float* x, const float* w, float id, float* sumqx, float* sumq2) {
    float sqx = 0.0f, sq2 = 0.0f;
    for (int j = 0; j < kSub; j++) {
        const float q = float(kIQ4NLValues[nearest_value(id * x[j])]);
        sqx += w[j] * q * x[j];
        sq2 += w[j] * q * q;
    }
    *sumqx = sqx;
    *sumq2 = sq2;
}

// The best scale of one sub-block: the value of largest magnitude lands near an end of the grid,
// and the candidate with the most weighted least-squares gain (sumqx^2 / sumq2) wins.
float subblock_scale(const float* x, const float* w) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < kSub; j++)
        if (std::fabs(x[j]) > amax) { amax = std::fabs(x[j]); max = x[j]; }
    if (amax < kGroupEps) return 0.0f;
    const float v0 = float(kIQ4NLValues[0]);
    float sumqx, sumq2;
    grid_sums(x, w, 1.0f / (-max / v0), &sumqx, &sumq2);
    float d = sumqx / sumq2, best = d * sumqx;
    for (int t = -kTries; t <= kTries; t++) {
        grid_sums(x, w, (float(t) + v0) / max, &sumqx, &sumq2);
        if (sumq2 > 0.0f && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

void quantize_superblock(const float* x, block_iq4_xs* y, const float* importance) {
    float sigma2 = 0.0f;
    for (int j = 0; j < QK_K; j++) sigma2 += x[j] * x[j];
    sigma2 *= 2.0f / float(QK_K);
    float scales[QK_K / kSub], w[kSub];
    float max_scale = 0.0f, amax_scale = 0.0f;
    for (int ib = 0; ib < QK_K / kSub; ib++) {
        const float* xb = x + kSub * ib;
        // the error weight of each value: its importance (scaled by its own size), else its square
        for (int j = 0; j < kSub; j++)
            w[j] = importance ? importance[kSub * ib + j] * std::sqrt(sigma2 + xb[j] * xb[j]) : xb[j] * xb[j];
        scales[ib] = subblock_scale(xb, w);
        if (std::fabs(scales[ib]) > amax_scale) { amax_scale = std::fabs(scales[ib]); max_scale = scales[ib]; }
    }
    const float d = -max_scale / 32.0f;
    y->d = fp32_to_fp16(d);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    y->scales_h = 0;
    for (int ib = 0; ib < QK_K / kSub; ib++) {
        int l = int(std::nearbyint(id * scales[ib]));
        l = l < -32 ? -32 : (l > 31 ? 31 : l);
        const float dl = d * float(l);
        const float idl = dl != 0.0f ? 1.0f / dl : 0.0f;
        const float* xb = x + kSub * ib;
        uint8_t* qs = y->qs + 16 * ib;
        for (int j = 0; j < 16; j++)
            qs[j] = uint8_t(nearest_value(idl * xb[j]) | (nearest_value(idl * xb[j + 16]) << 4));
        const int ls = l + 32;
        if (ib % 2 == 0) y->scales_l[ib / 2] = uint8_t(ls & 15);
        else y->scales_l[ib / 2] |= uint8_t((ls & 15) << 4);
        y->scales_h |= uint16_t((ls >> 4) << (2 * ib));
    }
}

}  // namespace

void quantize_row_iq4_xs_ref(const float* x, block_iq4_xs* y, int64_t n, const float* importance) {
    for (int64_t b = 0; b < n / QK_K; b++)
        quantize_superblock(x + QK_K * b, y + b, importance ? importance + QK_K * b : nullptr);
}

void dequantize_row_iq4_xs_ref(const block_iq4_xs* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK_K / kSub; j++) {
            const float dl = d * float(iq4xs_scale(x[b], j));
            for (int l = 0; l < kSub; l++)
                *y++ = dl * float(kIQ4NLValues[nibble_quant(x[b].qs + 16 * j, l)]);
        }
    }
}

}  // namespace phi2cpu
