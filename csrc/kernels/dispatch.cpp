#include "kernels/dispatch.h"

#include <cstdlib>
#include <stdexcept>
#include <vector>

#include "kernels/paths.h"
#include "kernels/ref/ops_ref.h"
#include "kernels/row_loops.h"
#include "model/errors.h"

namespace phi2cpu {
namespace {

// The scalar kernels of every weight type: the spec each ISA path is tested against.
const TypeKernelsOverride kRefRows[] = {
    {GgmlType::F32, vec_dot_f32_f32_ref, gemv_rows<vec_dot_f32_f32_ref, 1, sizeof(float)>,
     gemm_rows<vec_dot_f32_f32_ref, 1, sizeof(float)>, nullptr, nullptr},
    {GgmlType::F16, vec_dot_f16_f32_ref, gemv_rows<vec_dot_f16_f32_ref, 1, sizeof(float)>,
     gemm_rows<vec_dot_f16_f32_ref, 1, sizeof(float)>, nullptr, nullptr},
    {GgmlType::Q4_0, vec_dot_q4_0_q8_0_ref, gemv_rows<vec_dot_q4_0_q8_0_ref>, gemm_rows<vec_dot_q4_0_q8_0_ref>,
     nullptr, nullptr},
    {GgmlType::Q4_1, vec_dot_q4_1_q8_0_ref, gemv_rows<vec_dot_q4_1_q8_0_ref>, gemm_rows<vec_dot_q4_1_q8_0_ref>, nullptr,
     nullptr},
    {GgmlType::Q5_1, vec_dot_q5_1_q8_0_ref, gemv_rows<vec_dot_q5_1_q8_0_ref>, gemm_rows<vec_dot_q5_1_q8_0_ref>, nullptr,
     nullptr},
    {GgmlType::Q5_0, vec_dot_q5_0_q8_0_ref, gemv_rows<vec_dot_q5_0_q8_0_ref>, gemm_rows<vec_dot_q5_0_q8_0_ref>, nullptr,
     nullptr},
    {GgmlType::Q8_0, vec_dot_q8_0_q8_0_ref, gemv_rows<vec_dot_q8_0_q8_0_ref>, gemm_rows<vec_dot_q8_0_q8_0_ref>,
     nullptr, nullptr},
    {GgmlType::IQ4_NL, vec_dot_iq4_nl_q8_0_ref, gemv_rows<vec_dot_iq4_nl_q8_0_ref>, gemm_rows<vec_dot_iq4_nl_q8_0_ref>,
     nullptr, nullptr},
    // Q2_K / Q3_K: GEMV and GEMM are loops over the dot (no repack)
    {GgmlType::Q2_K, vec_dot_q2_K_q8_K_ref, gemv_rows<vec_dot_q2_K_q8_K_ref, QK_K, sizeof(block_q8_K)>, gemm_rows<vec_dot_q2_K_q8_K_ref, QK_K, sizeof(block_q8_K)>,
     nullptr, nullptr},
    {GgmlType::Q3_K, vec_dot_q3_K_q8_K_ref, gemv_rows<vec_dot_q3_K_q8_K_ref, QK_K, sizeof(block_q8_K)>, gemm_rows<vec_dot_q3_K_q8_K_ref, QK_K, sizeof(block_q8_K)>,
     nullptr, nullptr},
    {GgmlType::Q4_K, vec_dot_q4_K_q8_K_ref, gemv_rows<vec_dot_q4_K_q8_K_ref, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_q4_K_q8_K_ref, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
    {GgmlType::Q5_K, vec_dot_q5_K_q8_K_ref, gemv_rows<vec_dot_q5_K_q8_K_ref, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_q5_K_q8_K_ref, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
    {GgmlType::Q6_K, vec_dot_q6_K_q8_K_ref, gemv_rows<vec_dot_q6_K_q8_K_ref, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_q6_K_q8_K_ref, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
    {GgmlType::IQ4_XS, vec_dot_iq4_xs_q8_K_ref, gemv_rows<vec_dot_iq4_xs_q8_K_ref, QK_K, sizeof(block_q8_K)>,
     gemm_rows<vec_dot_iq4_xs_q8_K_ref, QK_K, sizeof(block_q8_K)>, nullptr, nullptr},
};

}  // namespace

void Kernels::override_rows(const TypeKernelsOverride* rows, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const TypeKernelsOverride& o = rows[i];
        TypeKernels& row = types[size_t(o.type)];
        if (!row.traits) throw std::logic_error("kernel row for a type without traits");
        if (o.vec_dot) row.vec_dot = o.vec_dot;
        if (o.gemv) row.gemv = o.gemv;
        if (o.gemm) row.gemm = o.gemm;
        if (o.repack) row.repack = o.repack;
        if (o.from_float) row.from_float = o.from_float;
    }
}

Kernels scalar_kernels() {
    Kernels k;
    k.isa = "scalar";
    k.reason = "portable C++ (no SIMD path for this CPU)";
    for (const TypeTraits& tt : all_type_traits()) k.types[size_t(tt.type)].traits = &tt;
    // every activation type quantizes with its reference quantizer
    for (const TypeTraits& tt : all_type_traits())
        if (tt.vec_dot_type != GgmlType::F32)
            k.types[size_t(tt.vec_dot_type)].from_float = type_traits(tt.vec_dot_type)->quantize;
    k.override_rows(kRefRows);
    k.gemm_f32_panel16 = gemm_f32_panel16_ref;
    k.layernorm_f32 = layernorm_f32_ref;
    k.gelu_new_f32 = gelu_new_f32_ref;
    k.rope_neox_f32 = rope_neox_f32_ref;
    k.attn_head_f32 = attn_head_f32_ref;
    k.attn_head_f16 = attn_head_f16_ref;
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

void Kernels::quantize_activations(GgmlType act_type, const float* x, void* y, int64_t n) const {
    const quantize_row_fn f = of(act_type).from_float;
    if (!f) throw std::logic_error("no activation quantizer for this type");
    f(x, y, n);
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
