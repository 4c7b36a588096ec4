#pragma once
#include <cstdint>
#include <vector>

#include "kernels/threadpool.h"
#include "model/weights.h"

namespace phi2cpu {

// y[t*y_stride + r] = dot(W row r, x[t*W.cols ...]) + bias[r] for t < n_tok, r < W.rows.
// Activations are converted once to the weight type's paired activation type (Q8_0 or Q8_K blocks for
// quantized weights); `scratch` holds them between calls.
void matmul(const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y, int64_t y_stride,
            ThreadPool& pool, std::vector<uint8_t>& scratch);

}  // namespace phi2cpu
