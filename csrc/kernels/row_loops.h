// GEMV and GEMM as plain loops over a row dot product: the scalar reference's definition of both,
// and the NEON GEMV (its GEMM has register tiles: neon_qgemm.cpp). Header-only so each ISA file
// instantiates it with its own dot and compile flags.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

// y[r] = dot(row r of w, x) for r < n_rows; rows are row_bytes apart, x is one Q8_0 row of n values.
template <float (*Dot)(int64_t, const void*, const void*)>
void gemv_rows(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    for (int64_t r = 0; r < n_rows; r++) y[r] = Dot(n, static_cast<const uint8_t*>(w) + r * row_bytes, x);
}

// y[t*ldy + r] = dot(row r of w, token t of x) for t < n_tok: one GEMV per token.
template <float (*Dot)(int64_t, const void*, const void*)>
void gemm_rows(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
               int64_t ldy) {
    const size_t x_row = size_t(K / QK8_0) * sizeof(block_q8_0);
    for (int64_t t = 0; t < n_tok; t++)
        gemv_rows<Dot>(K, n_rows, w, row_bytes, static_cast<const uint8_t*>(x) + t * x_row, y + t * ldy);
}

}  // namespace phi2cpu
