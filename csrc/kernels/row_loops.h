// GEMV and GEMM as plain loops over a row dot product: the scalar reference's definition of both,
// and the NEON GEMV (its GEMM has register tiles: neon_qgemm.cpp). Header-only so each ISA file
// instantiates it with its own dot and compile flags.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

// y[r] = dot(row r of w, x) for r < n_rows; rows are row_bytes apart, x is one activation row of n values.
template <float (*Dot)(int64_t, const void*, const void*)>
void gemv_rows(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    for (int64_t r = 0; r < n_rows; r++) y[r] = Dot(n, static_cast<const uint8_t*>(w) + r * row_bytes, x);
}

// y[t*ldy + r] = dot(row r of w, token t of x) for t < n_tok, where x holds n_tok rows of K / ActQK
// activation blocks of ActBytes each. Rows go in tiles of 16 that stay in cache while every token
// passes them.
template <float (*Dot)(int64_t, const void*, const void*), int ActQK = QK8_0, size_t ActBytes = sizeof(block_q8_0)>
void gemm_rows(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
               int64_t ldy) {
    const size_t x_row = size_t(K / ActQK) * ActBytes;
    for (int64_t r0 = 0; r0 < n_rows; r0 += 16) {
        const int64_t nr = n_rows - r0 < 16 ? n_rows - r0 : 16;
        for (int64_t t = 0; t < n_tok; t++)
            gemv_rows<Dot>(K, nr, static_cast<const uint8_t*>(w) + r0 * row_bytes, row_bytes,
                           static_cast<const uint8_t*>(x) + t * x_row, y + t * ldy + r0);
    }
}

// The same over Q8_K activation rows (the K-quants' activation type).
template <float (*Dot)(int64_t, const void*, const void*)>
void gemm_k_rows(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
                 int64_t ldy) {
    gemm_rows<Dot, QK_K, sizeof(block_q8_K)>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
