#include "kernels/paths.h"
#include "kernels/x86/cpu_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

void add_isa_paths(std::vector<Kernels>& paths) {
    const X86Features f = detect_x86();
    if (!f.avx2_fma_f16c) return;
    Kernels k = scalar_kernels();
    k.isa = "avx2";
    k.reason = "best path for this CPU: AVX2 + FMA + F16C, YMM state enabled by the OS";
    k.vec_dot_f32_f32 = vec_dot_f32_f32_avx2;
    k.vec_dot_f16_f32 = vec_dot_f16_f32_avx2;
    k.vec_dot_q8_0_q8_0 = vec_dot_q8_0_q8_0_avx2;
    k.vec_dot_q4_0_q8_0 = vec_dot_q4_0_q8_0_avx2;
    k.quantize_row_q8_0 = quantize_row_q8_0_avx2;
    k.gemv_q8_0_q8_0 = gemv_q8_0_q8_0_avx2;
    k.gemv_q4_0_q8_0 = gemv_q4_0_q8_0_avx2;
    k.gemm_q8_0_q8_0 = gemm_q8_0_q8_0_avx2;
    k.gemm_q4_0_q8_0 = gemm_q4_0_q8_0_avx2;
    k.repack_q8_0 = repack_q8_0_scales_first;  // the gemv/gemm above read scales-first rows
    k.repack_q4_0 = repack_q4_0_scales_first;
    k.vec_dot_q4_K_q8_K = vec_dot_q4_K_q8_K_avx2;
    k.vec_dot_q5_K_q8_K = vec_dot_q5_K_q8_K_avx2;
    k.vec_dot_q6_K_q8_K = vec_dot_q6_K_q8_K_avx2;
    k.quantize_row_q8_K = quantize_row_q8_K_avx2;
    k.gemm_f32_panel16 = gemm_f32_panel16_avx2;
    k.layernorm_f32 = layernorm_f32_avx2;
    k.gelu_new_f32 = gelu_new_f32_avx2;
    k.rope_neox_f32 = rope_neox_f32_avx2;
    k.attn_head_f32 = attn_head_f32_avx2;
    paths.push_back(k);
    if (!f.avx512_vnni) return;
    k.isa = "avx512";
    k.reason = "best path for this CPU: AVX-512 F/BW/VL + VNNI, ZMM state enabled by the OS";
    k.vec_dot_f32_f32 = vec_dot_f32_f32_avx512;
    k.vec_dot_f16_f32 = vec_dot_f16_f32_avx512;
    k.vec_dot_q8_0_q8_0 = vec_dot_q8_0_q8_0_avx512vnni;
    k.vec_dot_q4_0_q8_0 = vec_dot_q4_0_q8_0_avx512vnni;
    k.gemv_q8_0_q8_0 = gemv_q8_0_q8_0_avx512vnni;  // same repacked rows as the AVX2 kernels read
    k.gemv_q4_0_q8_0 = gemv_q4_0_q8_0_avx512vnni;
    k.gemm_q8_0_q8_0 = gemm_q8_0_q8_0_avx512vnni;
    k.gemm_q4_0_q8_0 = gemm_q4_0_q8_0_avx512vnni;
    k.vec_dot_q4_K_q8_K = vec_dot_q4_K_q8_K_avx512vnni;
    k.vec_dot_q5_K_q8_K = vec_dot_q5_K_q8_K_avx512vnni;
    k.vec_dot_q6_K_q8_K = vec_dot_q6_K_q8_K_avx512vnni;
    k.layernorm_f32 = layernorm_f32_avx512;
    k.gelu_new_f32 = gelu_new_f32_avx512;
    k.rope_neox_f32 = rope_neox_f32_avx512;
    k.attn_head_f32 = attn_head_f32_avx512;
    paths.push_back(k);
}

}  // namespace phi2cpu
