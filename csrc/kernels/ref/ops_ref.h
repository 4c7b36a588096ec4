// Scalar reference kernels: the spec every SIMD kernel is tested against.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

// Dot products of one weight row with one activation row of n elements. For Q8_0/Q4_0 weights the
// activations are Q8_0 blocks (quantized on the fly), for K-quants Q8_K blocks; for F16/F32 weights f32.
// The Q8_0 and Q4_0 dots are the one order every GEMV/GEMM kernel of theirs follows bit for bit
// (dispatch.h): sum = fma(float(isum_b), d_w * d_x, sum) block after block.
float vec_dot_f32_f32_ref(int64_t n, const void* w, const void* x);
float vec_dot_f16_f32_ref(int64_t n, const void* w, const void* x);
float vec_dot_q8_0_q8_0_ref(int64_t n, const void* w, const void* x);
float vec_dot_q4_0_q8_0_ref(int64_t n, const void* w, const void* x);
float vec_dot_q5_0_q8_0_ref(int64_t n, const void* w, const void* x);
float vec_dot_iq4_nl_q8_0_ref(int64_t n, const void* w, const void* x);
// Q4_1 / Q5_1 (value = d q + m) with Q8_0 activations: the offset term uses each block's sum of quants.
float vec_dot_q4_1_q8_0_ref(int64_t n, const void* w, const void* x);
float vec_dot_q5_1_q8_0_ref(int64_t n, const void* w, const void* x);
// K-quant weights pair with Q8_K activations (n a multiple of 256).
float vec_dot_q4_K_q8_K_ref(int64_t n, const void* w, const void* x);
float vec_dot_q5_K_q8_K_ref(int64_t n, const void* w, const void* x);
float vec_dot_q6_K_q8_K_ref(int64_t n, const void* w, const void* x);
float vec_dot_q2_K_q8_K_ref(int64_t n, const void* w, const void* x);
float vec_dot_q3_K_q8_K_ref(int64_t n, const void* w, const void* x);
float vec_dot_iq4_xs_q8_K_ref(int64_t n, const void* w, const void* x);

// Register-blocked GEMM step on a weight panel: for c < n_tok, j < 16,
//   y[c*ldy + j] (+)= sum_k panel[k*16 + j] * x[c*ldx + k]      (k < K; += when accumulate)
// The panel holds 16 weight rows transposed to [K][16] in f32 (dequantized once, reused for every token).
constexpr int kPanelRows = 16;
void gemm_f32_panel16_ref(int64_t K, const float* panel, const float* x, int64_t ldx, int n_tok, float* y,
                          int64_t ldy, bool accumulate);

// y = (x - mean) / sqrt(var + eps) * w + b over n elements.
void layernorm_f32_ref(int64_t n, const float* x, const float* w, const float* b, float eps, float* y);
// In place: x = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void gelu_new_f32_ref(int64_t n, float* x);
// In place NeoX rotary on the first n_rot dims of each of n_head heads of head_dim:
// pairs (i, i + n_rot/2) rotate by pos * theta^(-2i/n_rot).
void rope_neox_f32_ref(int n_head, int head_dim, int n_rot, int pos, float theta, float* x);
// In place softmax over n elements.
void softmax_f32_ref(int64_t n, float* x);
// One head of causal attention for one query over n_kv cached positions.
// k and v rows are kv_stride floats apart; out gets head_dim floats; scores is scratch of n_kv.
void attn_head_f32_ref(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                       int64_t kv_stride, float scale, float* scores, float* out);
// The same over an IEEE half cache: k and v elements are widened to f32 exactly; scores, softmax
// and the weighted sum stay f32 (Phi-2's scores overflow in f16).
void attn_head_f16_ref(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                       int64_t kv_stride, float scale, float* scores, float* out);

}  // namespace phi2cpu
