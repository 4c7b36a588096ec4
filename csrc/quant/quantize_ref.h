// Scalar quantize / dequantize of one row (n a multiple of the block size). These are the spec:
// their bytes equal ggml's reference quantizers and gguf.quants.
#pragma once
#include <cstdint>
#include "quant/blocks.h"

namespace phi2cpu {

void quantize_row_q8_0_ref(const float* x, block_q8_0* y, int64_t n);
void quantize_row_q4_0_ref(const float* x, block_q4_0* y, int64_t n);
void dequantize_row_q8_0_ref(const block_q8_0* x, float* y, int64_t n);
void dequantize_row_q4_0_ref(const block_q4_0* x, float* y, int64_t n);
void quantize_row_q5_0_ref(const float* x, block_q5_0* y, int64_t n);
void dequantize_row_q5_0_ref(const block_q5_0* x, float* y, int64_t n);
void quantize_row_q4_1_ref(const float* x, block_q4_1* y, int64_t n);
void quantize_row_q5_1_ref(const float* x, block_q5_1* y, int64_t n);
void dequantize_row_q4_1_ref(const block_q4_1* x, float* y, int64_t n);
void dequantize_row_q5_1_ref(const block_q5_1* x, float* y, int64_t n);
void quantize_row_iq4_nl_ref(const float* x, block_iq4_nl* y, int64_t n);
void dequantize_row_iq4_nl_ref(const block_iq4_nl* x, float* y, int64_t n);
// IQ4_XS (quantize_iq4_xs_ref.cpp): `importance` (n values, one per column; nullable) weights each
// value's squared error in the scale search, as llama.cpp's imatrix weights do; nullptr weights x^2.
void quantize_row_iq4_xs_ref(const float* x, block_iq4_xs* y, int64_t n, const float* importance);
void dequantize_row_iq4_xs_ref(const block_iq4_xs* x, float* y, int64_t n);
void quantize_row_f16_ref(const float* x, uint16_t* y, int64_t n);
void dequantize_row_f16_ref(const uint16_t* x, float* y, int64_t n);

// K-quants (quantize_k_ref.cpp). Dequantizers equal gguf.quants bit for bit; the weight quantizers
// are this project's own encoder (any valid encoding loads everywhere). Q8_K is the activation type
// of the K-quant dot products; its ref quantizer is the spec the SIMD ones must match byte for byte.
void quantize_row_q4_K_ref(const float* x, block_q4_K* y, int64_t n);
void quantize_row_q5_K_ref(const float* x, block_q5_K* y, int64_t n);
void quantize_row_q6_K_ref(const float* x, block_q6_K* y, int64_t n);
void quantize_row_q8_K_ref(const float* x, block_q8_K* y, int64_t n);
void dequantize_row_q4_K_ref(const block_q4_K* x, float* y, int64_t n);
void dequantize_row_q5_K_ref(const block_q5_K* x, float* y, int64_t n);
void dequantize_row_q6_K_ref(const block_q6_K* x, float* y, int64_t n);
void dequantize_row_q8_K_ref(const block_q8_K* x, float* y, int64_t n);

// Q2_K / Q3_K (quantize_lowk_ref.cpp): llama.cpp's searches for these types. importance (n floats, one
// per column, or nullptr) weights each value's squared error in the scale / min search; nullptr is the
// unweighted search.
void quantize_row_q2_K_ref(const float* x, block_q2_K* y, int64_t n, const float* importance);
void quantize_row_q3_K_ref(const float* x, block_q3_K* y, int64_t n, const float* importance);
void dequantize_row_q2_K_ref(const block_q2_K* x, float* y, int64_t n);
void dequantize_row_q3_K_ref(const block_q3_K* x, float* y, int64_t n);

}  // namespace phi2cpu
