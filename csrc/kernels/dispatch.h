// The kernel table for this CPU, chosen once (PHI2CPU_ISA=... forces a path).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/repack.h"
#include "quant/blocks.h"

namespace phi2cpu {

using vec_dot_fn = float (*)(int64_t n, const void* w, const void* x);
// y[r] = dot(row r of w, x) for r < n_rows (rows row_bytes apart); see gemv_*_ref.
using gemv_fn = void (*)(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y);
// y[t*ldy + r] = dot(row r of w, activation row t) for n_tok consecutive rows x; see gemm_*_ref.
using gemm_fn = void (*)(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);

struct Kernels {
    const char* isa;     // "scalar", ...
    std::string reason;  // why this path was chosen
    vec_dot_fn vec_dot_f32_f32;
    vec_dot_fn vec_dot_f16_f32;
    vec_dot_fn vec_dot_q8_0_q8_0;
    vec_dot_fn vec_dot_q4_0_q8_0;
    vec_dot_fn vec_dot_q4_K_q8_K;
    vec_dot_fn vec_dot_q5_K_q8_K;
    vec_dot_fn vec_dot_q6_K_q8_K;
    gemv_fn gemv_q8_0_q8_0;
    gemv_fn gemv_q4_0_q8_0;
    gemm_fn gemm_q8_0_q8_0;
    gemm_fn gemm_q4_0_q8_0;
    // Load-time weight layouts: where one is set, that type's gemv and gemm read rows it has
    // repacked (the dot kernels are never given such rows); nullptr keeps the GGUF blocks.
    repack_fn repack_q8_0;
    repack_fn repack_q4_0;
    void (*quantize_row_q8_0)(const float* x, block_q8_0* y, int64_t n);
    void (*quantize_row_q8_K)(const float* x, block_q8_K* y, int64_t n);
    void (*gemm_f32_panel16)(int64_t K, const float* panel, const float* x, int64_t ldx, int n_tok, float* y,
                             int64_t ldy, bool accumulate);
    void (*layernorm_f32)(int64_t n, const float* x, const float* w, const float* b, float eps, float* y);
    void (*gelu_new_f32)(int64_t n, float* x);
    void (*rope_neox_f32)(int n_head, int head_dim, int n_rot, int pos, float theta, float* x);
    // On return scores[0..n_kv) are proportional to the softmax probabilities used (captures read them).
    void (*attn_head_f32)(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                          int64_t kv_stride, float scale, float* scores, float* out);

    // The dot product for a weight type (its activations are traits.vec_dot_type).
    vec_dot_fn vec_dot_for(GgmlType weight_type) const;
    // Multi-row and integer-GEMM kernels for a weight type, or nullptr where there are none.
    gemv_fn gemv_for(GgmlType weight_type) const;
    gemm_fn gemm_for(GgmlType weight_type) const;
    repack_fn repack_for(GgmlType weight_type) const;
    // Quantizes one activation row of n floats to `act_type` blocks (Q8_0 or Q8_K) at y.
    void quantize_activations(GgmlType act_type, const float* x, void* y, int64_t n) const;
};

// The table in use: chosen on first call from the CPU and PHI2CPU_ISA.
const Kernels& kernels();
// Every path this build has and this CPU can run, scalar first, best last.
std::vector<Kernels> runnable_paths();
// Their names, comma-separated.
std::string available_isas();

}  // namespace phi2cpu
