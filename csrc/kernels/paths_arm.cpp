#include "kernels/arm/ops_arm.h"
#include "kernels/paths.h"
#include "platform/platform.h"

namespace phi2cpu {

void add_isa_paths(std::vector<Kernels>& paths) {
    if (!os::arm_features().dotprod) return;
    Kernels k = scalar_kernels();
    k.isa = "neon";
    k.reason = "best path for this CPU: NEON with the dot-product extension (FEAT_DotProd, as the OS reports it)";
    k.vec_dot_f32_f32 = vec_dot_f32_f32_neon;
    k.vec_dot_f16_f32 = vec_dot_f16_f32_neon;
    k.vec_dot_q8_0_q8_0 = vec_dot_q8_0_q8_0_neon;
    k.vec_dot_q4_0_q8_0 = vec_dot_q4_0_q8_0_neon;
    k.quantize_row_q8_0 = quantize_row_q8_0_neon;
    k.gemv_q8_0_q8_0 = gemv_q8_0_q8_0_neon;
    k.gemv_q4_0_q8_0 = gemv_q4_0_q8_0_neon;
    k.gemm_q8_0_q8_0 = gemm_q8_0_q8_0_neon;
    k.gemm_q4_0_q8_0 = gemm_q4_0_q8_0_neon;
    // K-quants (Q4_K/Q5_K/Q6_K x Q8_K and the Q8_K quantizer) have no NEON kernels yet: they keep
    // the scalar _ref entries of scalar_kernels().
    k.gemm_f32_panel16 = gemm_f32_panel16_neon;
    k.layernorm_f32 = layernorm_f32_neon;
    k.gelu_new_f32 = gelu_new_f32_neon;
    k.rope_neox_f32 = rope_neox_f32_neon;
    k.attn_head_f32 = attn_head_f32_neon;
    paths.push_back(k);
}

}  // namespace phi2cpu
