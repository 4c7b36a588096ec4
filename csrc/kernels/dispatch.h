// The kernel table for this CPU, chosen once (PHI2CPU_ISA=... forces a path).
//
// One row per tensor type, indexed by its GGML id: the format (quant/traits.h) and this path's
// kernels for it. The scalar path fills every row with the _ref kernels; an ISA path starts from
// that table and overrides only the entries it has kernels for (paths_<arch>.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/repack.h"
#include "quant/blocks.h"
#include "quant/traits.h"

namespace phi2cpu {

using vec_dot_fn = float (*)(int64_t n, const void* w, const void* x);
// y[t*ldy + r] = dot(row r of w, activation row t) for r < n_rows (rows row_bytes apart) and n_tok
// consecutive activation rows x. The gemv entry takes n_tok <= kGemvMaxTokens and reads each weight
// block from memory once for all of them (decoding several sequences); the gemm entry takes any
// n_tok (prefill). See gemv_rows / gemm_rows (row_loops.h) and gemm_*_ref.
//
// Batch invariance: for every weight type and on every path, the gemv and gemm entries of a row
// give each (row, token) output with the same float operations in the same order, whatever n_tok,
// the other tokens, the other rows or the tiling: a row's logits never depend on its batch. Where
// both are loops over the row's vec_dot this holds by construction; the Q4_0 / Q8_0 kernels
// instead all compute  acc = 0; for each block b in order: acc = fma(float(isum_b), dw_b * dx_b, acc)
// with isum_b the block's exact integer dot (vec_dot_q4_0_q8_0_ref is this spec), and the Q2_K..Q6_K
// and IQ4_XS kernels the same per 256-value block, with a second fma for the mins
// (vec_dot_q4_K_q8_K_ref). Float lanes hold rows, tokens or (row, token) pairs (the i8mm 2x2
// tiles), never parts of one sum. test_kernels.cpp checks the bits on every path.
using gemm_fn = void (*)(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy);
using gemv_fn = gemm_fn;
constexpr int64_t kGemvMaxTokens = 8;

// A type's kernels on one path. Its activations are traits->vec_dot_type blocks.
struct TypeKernels {
    const TypeTraits* traits = nullptr;  // nullptr: the engine does not know the type
    vec_dot_fn vec_dot = nullptr;        // one weight row . one activation row; nullptr: not a weight type
    gemv_fn gemv = nullptr;              // decode: up to kGemvMaxTokens tokens; set for every weight type
    gemm_fn gemm = nullptr;              // prefill GEMM; set for every weight type
    // Load-time weight layout: where set, gemv and gemm read rows it has repacked (vec_dot is never
    // given such rows); nullptr keeps the GGUF blocks. A row with a repack has a gemv and a gemm.
    repack_fn repack = nullptr;
    quantize_row_fn from_float = nullptr;  // activation types: an f32 row to these blocks
};

// An ISA path's override of one row: each non-null entry replaces the row's entry.
struct TypeKernelsOverride {
    GgmlType type;
    vec_dot_fn vec_dot;
    gemv_fn gemv;
    gemm_fn gemm;
    repack_fn repack;
    quantize_row_fn from_float;
};

struct Kernels {
    const char* isa;     // "scalar", ...
    std::string reason;  // why this path was chosen
    TypeKernels types[kTypeCount];

    void (*gemm_f32_panel16)(int64_t K, const float* panel, const float* x, int64_t ldx, int n_tok, float* y,
                             int64_t ldy, bool accumulate);
    void (*layernorm_f32)(int64_t n, const float* x, const float* w, const float* b, float eps, float* y);
    void (*gelu_new_f32)(int64_t n, float* x);
    void (*rope_neox_f32)(int n_head, int head_dim, int n_rot, int pos, float theta, float* x);
    // On return scores[0..n_kv) are proportional to the softmax probabilities used (captures read them).
    void (*attn_head_f32)(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                          int64_t kv_stride, float scale, float* scores, float* out);
    // The same over an IEEE half cache (k, v elements widened to f32; scores and softmax in f32).
    void (*attn_head_f16)(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                          int64_t kv_stride, float scale, float* scores, float* out);

    const TypeKernels& of(GgmlType t) const { return types[size_t(t)]; }
    void override_rows(const TypeKernelsOverride* rows, size_t n);
    template <size_t N>
    void override_rows(const TypeKernelsOverride (&rows)[N]) { override_rows(rows, N); }
    // Quantizes one activation row of n floats to `act_type` blocks at y.
    void quantize_activations(GgmlType act_type, const float* x, void* y, int64_t n) const;
};

// The table in use: chosen on first call from the CPU and PHI2CPU_ISA.
const Kernels& kernels();
// Every path this build has and this CPU can run, scalar first, best last.
std::vector<Kernels> runnable_paths();
// Their names, comma-separated.
std::string available_isas();

}  // namespace phi2cpu
