// GEMV and GEMM as plain loops over a row dot product: the scalar reference's definition of both,
// and the kernels of every type without register tiles. Each (row, token) output is one call of the
// dot, so the GEMV and the GEMM give the same bits whatever the batch (dispatch.h). Header-only so
// each ISA file instantiates it with its own dot and compile flags.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

// Activation rows of K values as `Act` blocks of ActQK values (Q8_0, Q8_K, or f32 with ActQK = 1).
template <int ActQK, size_t ActBytes>
constexpr size_t act_row_bytes(int64_t K) {
    return size_t(K / ActQK) * ActBytes;
}

// y[t*ldy + r] = dot(row r of w, token t of x) for r < n_rows, t < n_tok: each row is read from
// memory once and stays in L1 while the (few) tokens pass it.
template <float (*Dot)(int64_t, const void*, const void*), int ActQK = QK8_0, size_t ActBytes = sizeof(block_q8_0)>
void gemv_rows(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
               int64_t ldy) {
    const size_t x_row = act_row_bytes<ActQK, ActBytes>(K);
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t t = 0; t < n_tok; t++)
            y[t * ldy + r] = Dot(K, static_cast<const uint8_t*>(w) + r * row_bytes,
                                 static_cast<const uint8_t*>(x) + t * x_row);
}

// The same for any n_tok, in tiles of 16 rows that stay in cache while every token passes them.
template <float (*Dot)(int64_t, const void*, const void*), int ActQK = QK8_0, size_t ActBytes = sizeof(block_q8_0)>
void gemm_rows(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
               int64_t ldy) {
    const size_t x_row = act_row_bytes<ActQK, ActBytes>(K);
    for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
        const int64_t nr = n_rows - r0 < 16 ? n_rows - r0 : 16;
        for (int64_t t = 0; t < n_tok; t++)
            for (int64_t r = r0; r < r0 + nr; r++)
                y[t * ldy + r] = Dot(K, static_cast<const uint8_t*>(w) + r * row_bytes,
                                     static_cast<const uint8_t*>(x) + t * x_row);
    }
}

}  // namespace phi2cpu
