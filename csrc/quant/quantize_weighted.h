// Importance-weighted row quantizers. `importance` (n values, one per column of the matrix, e.g. the
// mean square of that input over a calibration text) weights each element's squared error in the
// scale / min / rounding search; nullptr weighs every column the same. The result is any valid
// encoding of the type: every reader dequantizes it as usual.
#pragma once
#include <cstdint>
#include "quant/blocks.h"

namespace phi2cpu {

void quantize_row_q4_0_weighted(const float* x, block_q4_0* y, int64_t n, const float* importance);
void quantize_row_q4_1_weighted(const float* x, block_q4_1* y, int64_t n, const float* importance);
void quantize_row_q5_0_weighted(const float* x, block_q5_0* y, int64_t n, const float* importance);
void quantize_row_q5_1_weighted(const float* x, block_q5_1* y, int64_t n, const float* importance);
void quantize_row_q8_0_weighted(const float* x, block_q8_0* y, int64_t n, const float* importance);
void quantize_row_iq4_nl_weighted(const float* x, block_iq4_nl* y, int64_t n, const float* importance);
void quantize_row_q4_K_weighted(const float* x, block_q4_K* y, int64_t n, const float* importance);
void quantize_row_q5_K_weighted(const float* x, block_q5_K* y, int64_t n, const float* importance);
void quantize_row_q6_K_weighted(const float* x, block_q6_K* y, int64_t n, const float* importance);

// The weight of each element of a row in the error sum: importance[j] * sqrt(mean(x^2) + x[j]^2)
// (importance 1 when nullptr). Exposed for tests.
void element_weights(const float* x, const float* importance, int64_t n, float* w);

}  // namespace phi2cpu

namespace phi2cpu {

// Q2_K / Q3_K / IQ4_XS: llama.cpp's importance-weighted search (quantize_row_q2_K_ref, _q3_K_ref, _iq4_xs_ref with importance),
// per super-block kept only when its importance-weighted error is below the unweighted encoding's,
// and a super-block whose importance is all zero quantized as if it were all ones.
void quantize_row_q2_K_weighted(const float* x, block_q2_K* y, int64_t n, const float* importance);
void quantize_row_q3_K_weighted(const float* x, block_q3_K* y, int64_t n, const float* importance);
void quantize_row_iq4_xs_weighted(const float* x, block_iq4_xs* y, int64_t n, const float* importance);

}  // namespace phi2cpu
