// Compiled with -ffp-contract=off: x*id + 8.5f must round twice, as in ggml, or bytes differ.
#include "quant/quantize_ref.h"

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

void quantize_row_f16_ref(const float* x, uint16_t* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fp32_to_fp16(x[i]);
}

void dequantize_row_f16_ref(const uint16_t* x, float* y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fp16_to_fp32(x[i]);
}

}  // namespace phi2cpu
