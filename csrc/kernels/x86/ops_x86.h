// x86 kernels; each has the signature of its _ref twin in kernels/ref/ops_ref.h.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

float vec_dot_f32_f32_avx2(int64_t n, const void* w, const void* x);
float vec_dot_f16_f32_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q8_0_q8_0_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q4_0_q8_0_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q5_0_q8_0_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q4_1_q8_0_avx2(int64_t n, const void* w, const void* x);
void gemm_q5_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_q4_1_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_q5_1_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_iq4_nl_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                           float* y, int64_t ldy);
float vec_dot_iq4_nl_q8_0_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q5_1_q8_0_avx2(int64_t n, const void* w, const void* x);
void quantize_row_q8_0_avx2(const float* x, block_q8_0* y, int64_t n);
void gemv_q8_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
    float* y, int64_t ldy);
void gemv_q4_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
    float* y, int64_t ldy);
void gemm_q8_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_q4_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
// Prefill over K-quant rows (Q4_K, Q6_K: as their repack leaves them; the others as stored), with
// the bits of the type's dot; the Q4_K and Q6_K decode GEMVs over the same rows.
void gemv_q2_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemv_q3_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemv_q4_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemv_q5_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemv_iq4_xs_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                           float* y, int64_t ldy);
void gemv_q6_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_q2_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_q3_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_iq4_xs_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                           float* y, int64_t ldy);
void gemm_q4_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_q5_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
void gemm_q6_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
float vec_dot_q4_K_q8_K_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q5_K_q8_K_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q6_K_q8_K_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q2_K_q8_K_avx2(int64_t n, const void* w, const void* x);
float vec_dot_q3_K_q8_K_avx2(int64_t n, const void* w, const void* x);
float vec_dot_iq4_xs_q8_K_avx2(int64_t n, const void* w, const void* x);
void quantize_row_q8_K_avx2(const float* x, block_q8_K* y, int64_t n);
void gemm_f32_panel16_avx2(int64_t K, const float* panel, const float* x, int64_t ldx, int n_tok, float* y,
                           int64_t ldy, bool accumulate);
void layernorm_f32_avx2(int64_t n, const float* x, const float* w, const float* b, float eps, float* y);
void gelu_new_f32_avx2(int64_t n, float* x);
void rope_neox_f32_avx2(int n_head, int head_dim, int n_rot, int pos, float theta, float* x);
void attn_head_f32_avx2(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                        int64_t kv_stride, float scale, float* scores, float* out);
void attn_head_f16_avx2(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                        int64_t kv_stride, float scale, float* scores, float* out);

float vec_dot_f32_f32_avx512(int64_t n, const void* w, const void* x);
float vec_dot_f16_f32_avx512(int64_t n, const void* w, const void* x);
float vec_dot_q8_0_q8_0_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q4_0_q8_0_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q5_0_q8_0_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q4_1_q8_0_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_iq4_nl_q8_0_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q5_1_q8_0_avx512vnni(int64_t n, const void* w, const void* x);
void gemv_q8_0_q8_0_avx512vnni(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
    float* y, int64_t ldy);
void gemv_q4_0_q8_0_avx512vnni(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
    float* y, int64_t ldy);
void gemm_q8_0_q8_0_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemm_q4_0_q8_0_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
// Rows in lanes (kernels/repack.h), as the AVX2 gemv / gemm of these types read them (avx512_krows.cpp).
void gemv_q4_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemv_q5_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemm_q2_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemm_q3_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemm_q4_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemm_q5_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemm_q6_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void gemm_iq4_xs_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy);
void layernorm_f32_avx512(int64_t n, const float* x, const float* w, const float* b, float eps, float* y);
void gelu_new_f32_avx512(int64_t n, float* x);
void rope_neox_f32_avx512(int n_head, int head_dim, int n_rot, int pos, float theta, float* x);
void attn_head_f32_avx512(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                          int64_t kv_stride, float scale, float* scores, float* out);
void attn_head_f16_avx512(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                          int64_t kv_stride, float scale, float* scores, float* out);
float vec_dot_q4_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q5_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q6_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q2_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_q3_K_q8_K_avx512vnni(int64_t n, const void* w, const void* x);
float vec_dot_iq4_xs_q8_K_avx512vnni(int64_t n, const void* w, const void* x);

}  // namespace phi2cpu
