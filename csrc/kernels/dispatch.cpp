#include "kernels/dispatch.h"

#include <cstdlib>
#include <stdexcept>
#include <vector>

#include "kernels/paths.h"
#include "kernels/ref/ops_ref.h"
#include "model/errors.h"
#include "quant/quantize_ref.h"

namespace phi2cpu {

Kernels scalar_kernels() {
    Kernels k;
    k.isa = "scalar";
    k.reason = "portable C++ (no SIMD path for this CPU)";
    k.vec_dot_f32_f32 = vec_dot_f32_f32_ref;
    k.vec_dot_f16_f32 = vec_dot_f16_f32_ref;
    k.vec_dot_q8_0_q8_0 = vec_dot_q8_0_q8_0_ref;
    k.vec_dot_q4_0_q8_0 = vec_dot_q4_0_q8_0_ref;
    k.vec_dot_q4_K_q8_K = vec_dot_q4_K_q8_K_ref;
    k.vec_dot_q5_K_q8_K = vec_dot_q5_K_q8_K_ref;
    k.vec_dot_q6_K_q8_K = vec_dot_q6_K_q8_K_ref;
    k.gemv_q8_0_q8_0 = gemv_q8_0_q8_0_ref;
    k.gemv_q4_0_q8_0 = gemv_q4_0_q8_0_ref;
    k.gemm_q8_0_q8_0 = gemm_q8_0_q8_0_ref;
    k.gemm_q4_0_q8_0 = gemm_q4_0_q8_0_ref;
    k.repack_q8_0 = nullptr;
    k.repack_q4_0 = nullptr;
    k.quantize_row_q8_0 = quantize_row_q8_0_ref;
    k.quantize_row_q8_K = quantize_row_q8_K_ref;
    k.gemm_f32_panel16 = gemm_f32_panel16_ref;
    k.layernorm_f32 = layernorm_f32_ref;
    k.gelu_new_f32 = gelu_new_f32_ref;
    k.rope_neox_f32 = rope_neox_f32_ref;
    k.attn_head_f32 = attn_head_f32_ref;
    return k;
}

std::vector<Kernels> runnable_paths() {
    std::vector<Kernels> paths{scalar_kernels()};
    add_isa_paths(paths);
    return paths;
}

namespace {

Kernels choose() {
    std::vector<Kernels> paths = runnable_paths();
    const char* forced = std::getenv("PHI2CPU_ISA");
    if (forced && *forced) {
        for (auto& k : paths) {
            if (std::string(k.isa) == forced) {
                k.reason = std::string("forced by PHI2CPU_ISA=") + forced;
                return k;
            }
        }
        throw SetupError(std::string("PHI2CPU_ISA=") + forced + " is not available on this CPU (available: " +
                                 available_isas() + ")");
    }
    return paths.back();
}

}  // namespace

vec_dot_fn Kernels::vec_dot_for(GgmlType t) const {
    switch (t) {
        case GgmlType::F32: return vec_dot_f32_f32;
        case GgmlType::F16: return vec_dot_f16_f32;
        case GgmlType::Q8_0: return vec_dot_q8_0_q8_0;
        case GgmlType::Q4_0: return vec_dot_q4_0_q8_0;
        case GgmlType::Q4_K: return vec_dot_q4_K_q8_K;
        case GgmlType::Q5_K: return vec_dot_q5_K_q8_K;
        case GgmlType::Q6_K: return vec_dot_q6_K_q8_K;
        case GgmlType::Q8_K: return nullptr;  // an activation type only
    }
    return nullptr;
}

void Kernels::quantize_activations(GgmlType act_type, const float* x, void* y, int64_t n) const {
    if (act_type == GgmlType::Q8_K)
        quantize_row_q8_K(x, static_cast<block_q8_K*>(y), n);
    else if (act_type == GgmlType::Q8_0)
        quantize_row_q8_0(x, static_cast<block_q8_0*>(y), n);
    else
        throw std::logic_error("no activation quantizer for this type");
}

gemv_fn Kernels::gemv_for(GgmlType t) const {
    if (t == GgmlType::Q8_0) return gemv_q8_0_q8_0;
    if (t == GgmlType::Q4_0) return gemv_q4_0_q8_0;
    return nullptr;
}

gemm_fn Kernels::gemm_for(GgmlType t) const {
    if (t == GgmlType::Q8_0) return gemm_q8_0_q8_0;
    if (t == GgmlType::Q4_0) return gemm_q4_0_q8_0;
    return nullptr;
}

repack_fn Kernels::repack_for(GgmlType t) const {
    if (t == GgmlType::Q8_0) return repack_q8_0;
    if (t == GgmlType::Q4_0) return repack_q4_0;
    return nullptr;
}

const Kernels& kernels() {
    static const Kernels k = choose();
    return k;
}

std::string available_isas() {
    std::string out;
    for (const auto& k : runnable_paths()) out += (out.empty() ? "" : ", ") + std::string(k.isa);
    return out;
}

}  // namespace phi2cpu
