#include "kernels/dispatch.h"

#include <cstdlib>
#include <stdexcept>

#include "kernels/ref/ops_ref.h"
#include "quant/quantize_ref.h"

namespace phi2cpu {
namespace {

Kernels scalar_kernels(std::string reason) {
    Kernels k;
    k.isa = "scalar";
    k.reason = std::move(reason);
    k.vec_dot_f32_f32 = vec_dot_f32_f32_ref;
    k.vec_dot_f16_f32 = vec_dot_f16_f32_ref;
    k.vec_dot_q8_0_q8_0 = vec_dot_q8_0_q8_0_ref;
    k.vec_dot_q4_0_q8_0 = vec_dot_q4_0_q8_0_ref;
    k.quantize_row_q8_0 = quantize_row_q8_0_ref;
    k.layernorm_f32 = layernorm_f32_ref;
    k.gelu_new_f32 = gelu_new_f32_ref;
    k.rope_neox_f32 = rope_neox_f32_ref;
    k.attn_head_f32 = attn_head_f32_ref;
    return k;
}

Kernels choose() {
    const char* forced = std::getenv("PHI2CPU_ISA");
    if (forced && *forced) {
        const std::string want(forced);
        if (want == "scalar") return scalar_kernels("forced by PHI2CPU_ISA=scalar");
        throw std::runtime_error("PHI2CPU_ISA=" + want + " is not available here (available: " +
                                 available_isas() + ")");
    }
    return scalar_kernels("portable scalar kernels (the only path in this build)");
}

}  // namespace

vec_dot_fn Kernels::vec_dot_for(GgmlType t) const {
    switch (t) {
        case GgmlType::F32: return vec_dot_f32_f32;
        case GgmlType::F16: return vec_dot_f16_f32;
        case GgmlType::Q8_0: return vec_dot_q8_0_q8_0;
        case GgmlType::Q4_0: return vec_dot_q4_0_q8_0;
    }
    return nullptr;
}

const Kernels& kernels() {
    static const Kernels k = choose();
    return k;
}

std::string available_isas() { return "scalar"; }

}  // namespace phi2cpu
