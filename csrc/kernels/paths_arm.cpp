#include "kernels/arm/ops_arm.h"
#include "kernels/paths.h"
#include "kernels/row_loops.h"
#include "platform/platform.h"

namespace phi2cpu {
namespace {

// {type, vec_dot, gemv, gemm, repack, from_float}; nullptr keeps the scalar entry. The gemv/gemm
// read the GGUF blocks (no repack).
const TypeKernelsOverride kNeonRows[] = {
    {GgmlType::F32, vec_dot_f32_f32_neon, gemv_rows<vec_dot_f32_f32_neon, 1, sizeof(float)>, gemm_rows<vec_dot_f32_f32_neon, 1, sizeof(float)>, nullptr,
     nullptr},
    {GgmlType::F16, vec_dot_f16_f32_neon, gemv_rows<vec_dot_f16_f32_neon, 1, sizeof(float)>, gemm_rows<vec_dot_f16_f32_neon, 1, sizeof(float)>, nullptr,
     nullptr},
    {GgmlType::Q4_0, vec_dot_q4_0_q8_0_neon, gemv_q4_0_q8_0_neon, gemm_q4_0_q8_0_neon, nullptr, nullptr},
    {GgmlType::Q4_1, vec_dot_q4_1_q8_0_neon, gemv_rows<vec_dot_q4_1_q8_0_neon>, gemm_rows<vec_dot_q4_1_q8_0_neon>,
     nullptr, nullptr},
    {GgmlType::Q5_1, vec_dot_q5_1_q8_0_neon, gemv_rows<vec_dot_q5_1_q8_0_neon>, gemm_rows<vec_dot_q5_1_q8_0_neon>,
     nullptr, nullptr},
    {GgmlType::Q5_0, vec_dot_q5_0_q8_0_neon, gemv_rows<vec_dot_q5_0_q8_0_neon>, gemm_rows<vec_dot_q5_0_q8_0_neon>,
     nullptr, nullptr},
    {GgmlType::Q8_0, vec_dot_q8_0_q8_0_neon, gemv_q8_0_q8_0_neon, gemm_q8_0_q8_0_neon, nullptr,
     quantize_as<block_q8_0, quantize_row_q8_0_neon>},
    {GgmlType::IQ4_NL, vec_dot_iq4_nl_q8_0_neon, gemv_rows<vec_dot_iq4_nl_q8_0_neon>,
     gemm_rows<vec_dot_iq4_nl_q8_0_neon>, nullptr, nullptr},
    {GgmlType::Q2_K, vec_dot_q2_K_q8_K_neon, gemv_rows<vec_dot_q2_K_q8_K_neon, QK_K, sizeof(block_q8_K)>, gemm_rows<vec_dot_q2_K_q8_K_neon, QK_K, sizeof(block_q8_K)>,
     nullptr, nullptr},
    {GgmlType::Q3_K, vec_dot_q3_K_q8_K_neon, gemv_rows<vec_dot_q3_K_q8_K_neon, QK_K, sizeof(block_q8_K)>, gemm_rows<vec_dot_q3_K_q8_K_neon, QK_K, sizeof(block_q8_K)>,
     nullptr, nullptr},
    {GgmlType::Q4_K, vec_dot_q4_K_q8_K_neon, gemv_rows<vec_dot_q4_K_q8_K_neon, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_q4_K_q8_K_neon, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
    {GgmlType::Q5_K, vec_dot_q5_K_q8_K_neon, gemv_rows<vec_dot_q5_K_q8_K_neon, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_q5_K_q8_K_neon, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
    {GgmlType::Q6_K, vec_dot_q6_K_q8_K_neon, gemv_rows<vec_dot_q6_K_q8_K_neon, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_q6_K_q8_K_neon, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
    {GgmlType::IQ4_XS, vec_dot_iq4_xs_q8_K_neon, gemv_rows<vec_dot_iq4_xs_q8_K_neon, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_iq4_xs_q8_K_neon, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
    {GgmlType::Q8_K, nullptr, nullptr, nullptr, nullptr, quantize_as<block_q8_K, quantize_row_q8_K_neon>},
};

// FEAT_I8MM: the prefill GEMM of Q4_0 / Q8_0 in SMMLA tiles; everything else as on the NEON path.
const TypeKernelsOverride kI8mmRows[] = {
    {GgmlType::Q4_0, nullptr, nullptr, gemm_q4_0_q8_0_i8mm, nullptr, nullptr},
    {GgmlType::Q8_0, nullptr, nullptr, gemm_q8_0_q8_0_i8mm, nullptr, nullptr},
};

}  // namespace

void add_isa_paths(std::vector<Kernels>& paths) {
    const os::ArmFeatures cpu = os::arm_features();
    if (!cpu.dotprod) return;
    Kernels k = scalar_kernels();
    k.isa = "neon";
    k.reason = "best path for this CPU: NEON with the dot-product extension (FEAT_DotProd, as the OS reports it)";
    k.override_rows(kNeonRows);
    k.gemm_f32_panel16 = gemm_f32_panel16_neon;
    k.layernorm_f32 = layernorm_f32_neon;
    k.gelu_new_f32 = gelu_new_f32_neon;
    k.rope_neox_f32 = rope_neox_f32_neon;
    k.attn_head_f32 = attn_head_f32_neon;
    k.attn_head_f16 = attn_head_f16_neon;
    paths.push_back(k);
    if (!cpu.i8mm) return;
    k.isa = "neon_i8mm";
    k.reason = "best path for this CPU: NEON with dot-product and 8-bit matrix multiply (FEAT_I8MM, as the OS reports it)";
    k.override_rows(kI8mmRows);
    paths.push_back(k);
}

}  // namespace phi2cpu
