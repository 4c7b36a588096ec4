// AArch64 kernels; each has the signature of its _ref twin in kernels/ref/ops_ref.h.
#pragma once
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

float vec_dot_f32_f32_neon(int64_t n, const void* w, const void* x);
float vec_dot_f16_f32_neon(int64_t n, const void* w, const void* x);
float vec_dot_q8_0_q8_0_neon(int64_t n, const void* w, const void* x);
float vec_dot_q4_0_q8_0_neon(int64_t n, const void* w, const void* x);
void quantize_row_q8_0_neon(const float* x, block_q8_0* y, int64_t n);

}  // namespace phi2cpu
