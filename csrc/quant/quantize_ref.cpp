// Compiled with -ffp-contract=off: x*id + 8.5f must round twice, as in ggml, or bytes differ.
#include "quant/quantize_ref.h"

#include <algorithm>
#include <cmath>

#include "quant/fp16.h"

namespace phi2cpu {

void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t n) {
    for (int64_t b = 0; b < n / QK8_0; b++, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; j++) amax = std::fmax(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK8_0; j++) y[b].qs[j] = int8_t(std::roundf(x[j] * id));
    }
}

void quantize_row_q4_0_ref(const float* x, block_q4_0* y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_0; b++, x += QK4_0) {
        // the signed value of largest magnitude maps to -8, so the full range [-8, 7] is used
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_0; j++) {
            if (std::fabs(x[j]) > amax) { amax = std::fabs(x[j]); max = x[j]; }
        }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            const float v0 = x[j] * id + 8.5f;
            const float v1 = x[j + QK4_0 / 2] * id + 8.5f;
            const int q0 = v0 >= 15.0f ? 15 : int(v0);
            const int q1 = v1 >= 15.0f ? 15 : int(v1);
            y[b].qs[j] = uint8_t(q0 | (q1 << 4));
        }
    }
}

void dequantize_row_q8_0_ref(const block_q8_0* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK8_0; b++) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK8_0; j++) y[b * QK8_0 + j] = d * float(x[b].qs[j]);
    }
}

void dequantize_row_q4_0_ref(const block_q4_0* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_0; b++) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK4_0 / 2; j++) {
            y[b * QK4_0 + j] = d * float((x[b].qs[j] & 0x0f) - 8);
            y[b * QK4_0 + j + QK4_0 / 2] = d * float((x[b].qs[j] >> 4) - 8);
        }
    }
}

void quantize_row_q5_0_ref(const float* x, block_q5_0* y, int64_t n) {
    for (int64_t b = 0; b < n / QK5_0; b++, x += QK5_0) {
        // as Q4_0: the signed value of largest magnitude maps to -16
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK5_0; j++) {
            if (std::fabs(x[j]) > amax) { amax = std::fabs(x[j]); max = x[j]; }
        }
        const float d = max / -16.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < QK5_0 / 2; j++) {
            const float v0 = x[j] * id + 16.5f;
            const float v1 = x[j + QK5_0 / 2] * id + 16.5f;
            const int q0 = v0 >= 31.0f ? 31 : int(v0);
            const int q1 = v1 >= 31.0f ? 31 : int(v1);
            y[b].qs[j] = uint8_t((q0 & 15) | ((q1 & 15) << 4));
            qh |= uint32_t(q0 >> 4) << j | uint32_t(q1 >> 4) << (j + QK5_0 / 2);
        }
        for (int i = 0; i < 4; i++) y[b].qh[i] = uint8_t(qh >> (8 * i));
    }
}

void dequantize_row_q5_0_ref(const block_q5_0* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK5_0; b++) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK5_0; j++) y[b * QK5_0 + j] = d * float(q5_quant(x[b].qh, x[b].qs, j) - 16);
    }
}

namespace {

// Q4_1 / Q5_1 (2^bits - 1 steps from the block's minimum): the quants of one block of 32 into
// q[32], its scale and offset into d, m.
template <int Steps>
void quantize_min_block(const float* x, uint8_t* q, uint16_t* d_out, uint16_t* m_out) {
    float min = x[0], max = x[0];
    for (int j = 1; j < 32; j++) {
        min = std::fmin(min, x[j]);
        max = std::fmax(max, x[j]);
    }
    const float d = (max - min) / float(Steps);
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    *d_out = fp32_to_fp16(d);
    *m_out = fp32_to_fp16(min);
    for (int j = 0; j < 32; j++) {
        const float v = (x[j] - min) * id + 0.5f;
        q[j] = uint8_t(v >= float(Steps) ? Steps : int(v));
    }
}

// The 32 quants q of a block as Q4_0-style nibbles (and, for 5 bits, the qh bytes).
void pack_nibbles(const uint8_t* q, uint8_t* qs) {
    for (int j = 0; j < 16; j++) qs[j] = uint8_t((q[j] & 15) | ((q[j + 16] & 15) << 4));
}
void pack_high_bits(const uint8_t* q, uint8_t* qh) {
    uint32_t h = 0;
    for (int j = 0; j < 32; j++) h |= uint32_t(q[j] >> 4) << j;
    for (int i = 0; i < 4; i++) qh[i] = uint8_t(h >> (8 * i));
}

}  // namespace

void quantize_row_q4_1_ref(const float* x, block_q4_1* y, int64_t n) {
    uint8_t q[32];
    for (int64_t b = 0; b < n / QK4_1; b++, x += QK4_1) {
        quantize_min_block<15>(x, q, &y[b].d, &y[b].m);
        pack_nibbles(q, y[b].qs);
    }
}

void quantize_row_q5_1_ref(const float* x, block_q5_1* y, int64_t n) {
    uint8_t q[32];
    for (int64_t b = 0; b < n / QK5_1; b++, x += QK5_1) {
        quantize_min_block<31>(x, q, &y[b].d, &y[b].m);
        pack_nibbles(q, y[b].qs);
        pack_high_bits(q, y[b].qh);
    }
}

void dequantize_row_q4_1_ref(const block_q4_1* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_1; b++) {
        const float d = fp16_to_fp32(x[b].d), m = fp16_to_fp32(x[b].m);
        for (int j = 0; j < QK4_1; j++) y[b * QK4_1 + j] = d * float(nibble_quant(x[b].qs, j)) + m;
    }
}

void dequantize_row_q5_1_ref(const block_q5_1* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK5_1; b++) {
        const float d = fp16_to_fp32(x[b].d), m = fp16_to_fp32(x[b].m);
        for (int j = 0; j < QK5_1; j++) y[b * QK5_1 + j] = d * float(q5_quant(x[b].qh, x[b].qs, j)) + m;
    }
}

namespace {

// The index of the IQ4_NL value nearest v (the values are sorted).
int nearest_iq4nl(float v) {
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        (v < float(kIQ4NLValues[mid]) ? hi : lo) = mid;
    }
    return v - float(kIQ4NLValues[lo]) < float(kIQ4NLValues[hi]) - v ? lo : hi;
}

// Squared error of block x (32 values) at scale d, and its indices into q.
float iq4nl_error(const float* x, float d, uint8_t* q) {
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    float err = 0.0f;
    for (int j = 0; j < 32; j++) {
        q[j] = uint8_t(nearest_iq4nl(x[j] * id));
        const float e = x[j] - d * float(kIQ4NLValues[q[j]]);
        err += e * e;
    }
    return err;
}

}  // namespace

// This project's own encoder: the scale (as stored, in fp16) with the least squared error among 14
// candidates that map the largest-magnitude value near either end of the table, each refined once
// by least squares on its indices.
void quantize_row_iq4_nl_ref(const float* x, block_iq4_nl* y, int64_t n) {
    uint8_t q[32], best_q[32];
    for (int64_t b = 0; b < n / QK4_NL; b++, x += QK4_NL) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK4_NL; j++)
            if (std::fabs(x[j]) > amax) { amax = std::fabs(x[j]); max = x[j]; }
        float best_err = INFINITY;
        uint16_t best_d = 0;
        std::fill(best_q, best_q + 32, uint8_t(8));  // value 1 * d with d = 0: an all-zero block
        if (amax > 0.0f) {
            for (int t = -3; t <= 3; t++) {
                for (float end : {-127.0f, 113.0f}) {
                    const float d0 = max / (end + float(t) * (end < 0 ? 2.0f : -2.0f));
                    float d = fp16_to_fp32(fp32_to_fp16(d0));
                    iq4nl_error(x, d, q);
                    float sxv = 0.0f, svv = 0.0f;  // least-squares scale for these indices
                    for (int j = 0; j < 32; j++) {
                        const float v = float(kIQ4NLValues[q[j]]);
                        sxv += x[j] * v;
                        svv += v * v;
                    }
                    if (svv > 0.0f) d = fp16_to_fp32(fp32_to_fp16(sxv / svv));
                    const float err = iq4nl_error(x, d, q);
                    if (err < best_err) {
                        best_err = err;
                        best_d = fp32_to_fp16(d);
                        std::copy(q, q + 32, best_q);
                    }
                }
            }
        }
        y[b].d = best_d;
        for (int j = 0; j < 16; j++) y[b].qs[j] = uint8_t(best_q[j] | (best_q[j + 16] << 4));
    }
}

void dequantize_row_iq4_nl_ref(const block_iq4_nl* x, float* y, int64_t n) {
    for (int64_t b = 0; b < n / QK4_NL; b++) {
        const float d = fp16_to_fp32(x[b].d);
        for (int j = 0; j < QK4_NL; j++) y[b * QK4_NL + j] = d * float(kIQ4NLValues[nibble_quant(x[b].qs, j)]);
    }
}

void quantize_row_f16_ref(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(x[i]);
}

void dequantize_row_f16_ref(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(x[i]);
}

}  // namespace phi2cpu
