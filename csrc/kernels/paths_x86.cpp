#include "kernels/paths.h"
#include "kernels/row_loops.h"
#include "kernels/x86/cpu_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {
namespace {

// {type, vec_dot, gemv, gemm, repack, from_float}; nullptr keeps the entry of the path below.
const TypeKernelsOverride kAvx2Rows[] = {
    {GgmlType::F32, vec_dot_f32_f32_avx2, gemv_rows<vec_dot_f32_f32_avx2, 1, sizeof(float)>, gemm_rows<vec_dot_f32_f32_avx2, 1, sizeof(float)>,
     nullptr, nullptr},
    {GgmlType::F16, vec_dot_f16_f32_avx2, gemv_rows<vec_dot_f16_f32_avx2, 1, sizeof(float)>, gemm_rows<vec_dot_f16_f32_avx2, 1, sizeof(float)>,
     nullptr, nullptr},
    // the gemv/gemm of Q4_0 and Q8_0 read scales-first rows
    {GgmlType::Q4_0, vec_dot_q4_0_q8_0_avx2, gemv_q4_0_q8_0_avx2, gemm_q4_0_q8_0_avx2, repack_q4_0_scales_first,
     nullptr},
    {GgmlType::Q4_1, vec_dot_q4_1_q8_0_avx2, gemv_rows<vec_dot_q4_1_q8_0_avx2>,
     gemm_q4_1_q8_0_avx2, nullptr, nullptr},
    {GgmlType::Q5_1, vec_dot_q5_1_q8_0_avx2, gemv_rows<vec_dot_q5_1_q8_0_avx2>,
     gemm_q5_1_q8_0_avx2, nullptr, nullptr},
    {GgmlType::Q5_0, vec_dot_q5_0_q8_0_avx2, gemv_rows<vec_dot_q5_0_q8_0_avx2>, gemm_q5_0_q8_0_avx2,
     nullptr, nullptr},
    {GgmlType::Q8_0, vec_dot_q8_0_q8_0_avx2, gemv_q8_0_q8_0_avx2, gemm_q8_0_q8_0_avx2, repack_q8_0_scales_first,
     quantize_as<block_q8_0, quantize_row_q8_0_avx2>},
    {GgmlType::IQ4_NL, vec_dot_iq4_nl_q8_0_avx2, gemv_rows<vec_dot_iq4_nl_q8_0_avx2>,
     gemm_iq4_nl_q8_0_avx2, nullptr, nullptr},
    // the gemv/gemm of the K-quants and IQ4_XS read rows in lanes (repack.h)
    {GgmlType::Q2_K, vec_dot_q2_K_q8_K_avx2, gemv_q2_K_q8_K_avx2, gemm_q2_K_q8_K_avx2, repack_q2_K_rows8, nullptr},
    {GgmlType::Q3_K, vec_dot_q3_K_q8_K_avx2, gemv_q3_K_q8_K_avx2, gemm_q3_K_q8_K_avx2, repack_q3_K_rows8, nullptr},
    {GgmlType::Q4_K, vec_dot_q4_K_q8_K_avx2, gemv_q4_K_q8_K_avx2, gemm_q4_K_q8_K_avx2, repack_q4_K_rows8, nullptr},
    {GgmlType::Q5_K, vec_dot_q5_K_q8_K_avx2, gemv_q5_K_q8_K_avx2, gemm_q5_K_q8_K_avx2, repack_q5_K_rows8, nullptr},
    {GgmlType::Q6_K, vec_dot_q6_K_q8_K_avx2, gemv_q6_K_q8_K_avx2, gemm_q6_K_q8_K_avx2, repack_q6_K_rows8, nullptr},
    {GgmlType::IQ4_XS, vec_dot_iq4_xs_q8_K_avx2, gemv_iq4_xs_q8_K_avx2, gemm_iq4_xs_q8_K_avx2, repack_iq4_xs_rows8,
     nullptr},
    {GgmlType::Q8_K, nullptr, nullptr, nullptr, nullptr, quantize_as<block_q8_K, quantize_row_q8_K_avx2>},
};

// On top of the AVX2 rows: the gemv/gemm read the same repacked rows as the AVX2 kernels. The K-quants
// and IQ4_XS keep the AVX2 rows-in-lanes GEMV but for Q4_K / Q5_K (Q6_K's measured slower in 512 bits),
// and their GEMM runs the AVX2 panels with VNNI tiles; all give the bits of their dots (the order all
// paths follow).
const TypeKernelsOverride kAvx512Rows[] = {
    {GgmlType::F32, vec_dot_f32_f32_avx512, gemv_rows<vec_dot_f32_f32_avx512, 1, sizeof(float)>, gemm_rows<vec_dot_f32_f32_avx512, 1, sizeof(float)>,
     nullptr, nullptr},
    {GgmlType::F16, vec_dot_f16_f32_avx512, gemv_rows<vec_dot_f16_f32_avx512, 1, sizeof(float)>, gemm_rows<vec_dot_f16_f32_avx512, 1, sizeof(float)>,
     nullptr, nullptr},
    {GgmlType::Q4_0, vec_dot_q4_0_q8_0_avx512vnni, gemv_q4_0_q8_0_avx512vnni, gemm_q4_0_q8_0_avx512vnni, nullptr,
     nullptr},
    {GgmlType::Q4_1, vec_dot_q4_1_q8_0_avx512vnni, gemv_rows<vec_dot_q4_1_q8_0_avx512vnni>,
     gemm_rows<vec_dot_q4_1_q8_0_avx512vnni>, nullptr, nullptr},
    {GgmlType::Q5_1, vec_dot_q5_1_q8_0_avx512vnni, gemv_rows<vec_dot_q5_1_q8_0_avx512vnni>,
     gemm_rows<vec_dot_q5_1_q8_0_avx512vnni>, nullptr, nullptr},
    {GgmlType::Q5_0, vec_dot_q5_0_q8_0_avx512vnni, gemv_rows<vec_dot_q5_0_q8_0_avx512vnni>,
     gemm_rows<vec_dot_q5_0_q8_0_avx512vnni>, nullptr, nullptr},
    {GgmlType::Q8_0, vec_dot_q8_0_q8_0_avx512vnni, gemv_q8_0_q8_0_avx512vnni, gemm_q8_0_q8_0_avx512vnni, nullptr,
     nullptr},
    {GgmlType::IQ4_NL, vec_dot_iq4_nl_q8_0_avx512vnni, gemv_rows<vec_dot_iq4_nl_q8_0_avx512vnni>,
     gemm_rows<vec_dot_iq4_nl_q8_0_avx512vnni>, nullptr, nullptr},
    {GgmlType::Q2_K, vec_dot_q2_K_q8_K_avx512vnni, nullptr, gemm_q2_K_q8_K_avx512vnni, nullptr,
     nullptr},
    {GgmlType::Q3_K, vec_dot_q3_K_q8_K_avx512vnni, nullptr, gemm_q3_K_q8_K_avx512vnni, nullptr,
     nullptr},
    {GgmlType::Q4_K, vec_dot_q4_K_q8_K_avx512vnni, gemv_q4_K_q8_K_avx512vnni, gemm_q4_K_q8_K_avx512vnni, nullptr,
     nullptr},
    {GgmlType::Q5_K, vec_dot_q5_K_q8_K_avx512vnni, gemv_q5_K_q8_K_avx512vnni, gemm_q5_K_q8_K_avx512vnni, nullptr,
     nullptr},
    {GgmlType::Q6_K, vec_dot_q6_K_q8_K_avx512vnni, nullptr, gemm_q6_K_q8_K_avx512vnni, nullptr,
     nullptr},
    {GgmlType::IQ4_XS, vec_dot_iq4_xs_q8_K_avx512vnni, nullptr, gemm_iq4_xs_q8_K_avx512vnni, nullptr,
     nullptr},
};

}  // namespace

void add_isa_paths(std::vector<Kernels>& paths) {
    const X86Features f = detect_x86();
    if (!f.avx2_fma_f16c) return;
    Kernels k = scalar_kernels();
    k.isa = "avx2";
    k.reason = "best path for this CPU: AVX2 + FMA + F16C, YMM state enabled by the OS";
    k.override_rows(kAvx2Rows);
    k.gemm_f32_panel16 = gemm_f32_panel16_avx2;
    k.layernorm_f32 = layernorm_f32_avx2;
    k.gelu_new_f32 = gelu_new_f32_avx2;
    k.rope_neox_f32 = rope_neox_f32_avx2;
    k.attn_head_f32 = attn_head_f32_avx2;
    k.attn_head_f16 = attn_head_f16_avx2;
    paths.push_back(k);
    if (!f.avx512_vnni) return;
    k.isa = "avx512";
    k.reason = "best path for this CPU: AVX-512 F/BW/VL + VNNI, ZMM state enabled by the OS";
    k.override_rows(kAvx512Rows);
    k.layernorm_f32 = layernorm_f32_avx512;
    k.gelu_new_f32 = gelu_new_f32_avx512;
    k.rope_neox_f32 = rope_neox_f32_avx512;
    k.attn_head_f32 = attn_head_f32_avx512;
    k.attn_head_f16 = attn_head_f16_avx512;
    paths.push_back(k);
}

}  // namespace phi2cpu
