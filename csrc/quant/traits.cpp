#include "quant/traits.h"

#include "quant/quantize_ref.h"
#include "quant/quantize_weighted.h"

namespace phi2cpu {
namespace {

void copy_f32(const float* x, void* y, int64_t n) {
    float* out = static_cast<float*>(y);
    for (int64_t i = 0; i < n; i++) out[i] = x[i];
}
void copy_to_f32(const void* x, float* y, int64_t n) {
    const float* in = static_cast<const float*>(x);
    for (int64_t i = 0; i < n; i++) y[i] = in[i];
}
void quantize_iq4_xs_unweighted(const float* x, void* y, int64_t n) {
    quantize_row_iq4_xs_ref(x, static_cast<block_iq4_xs*>(y), n, nullptr);
}

const TypeTraits kTraits[] = {
    {GgmlType::F32, "F32", 1, 4, copy_f32, copy_to_f32, GgmlType::F32},
    {GgmlType::F16, "F16", 1, 2, quantize_as<uint16_t, quantize_row_f16_ref>,
     dequantize_as<uint16_t, dequantize_row_f16_ref>, GgmlType::F32},
    {GgmlType::Q4_0, "Q4_0", QK4_0, sizeof(block_q4_0), quantize_as<block_q4_0, quantize_row_q4_0_ref>,
     dequantize_as<block_q4_0, dequantize_row_q4_0_ref>, GgmlType::Q8_0,
     quantize_weighted_as<block_q4_0, quantize_row_q4_0_weighted>},
    {GgmlType::Q4_1, "Q4_1", QK4_1, sizeof(block_q4_1), quantize_as<block_q4_1, quantize_row_q4_1_ref>,
     dequantize_as<block_q4_1, dequantize_row_q4_1_ref>, GgmlType::Q8_0,
     quantize_weighted_as<block_q4_1, quantize_row_q4_1_weighted>},
    {GgmlType::Q5_0, "Q5_0", QK5_0, sizeof(block_q5_0), quantize_as<block_q5_0, quantize_row_q5_0_ref>,
     dequantize_as<block_q5_0, dequantize_row_q5_0_ref>, GgmlType::Q8_0,
     quantize_weighted_as<block_q5_0, quantize_row_q5_0_weighted>},
    {GgmlType::Q5_1, "Q5_1", QK5_1, sizeof(block_q5_1), quantize_as<block_q5_1, quantize_row_q5_1_ref>,
     dequantize_as<block_q5_1, dequantize_row_q5_1_ref>, GgmlType::Q8_0,
     quantize_weighted_as<block_q5_1, quantize_row_q5_1_weighted>},
    {GgmlType::Q8_0, "Q8_0", QK8_0, sizeof(block_q8_0), quantize_as<block_q8_0, quantize_row_q8_0_ref>,
     dequantize_as<block_q8_0, dequantize_row_q8_0_ref>, GgmlType::Q8_0,
     quantize_weighted_as<block_q8_0, quantize_row_q8_0_weighted>},
    {GgmlType::Q2_K, "Q2_K", QK_K, sizeof(block_q2_K), quantize_unweighted_as<block_q2_K, quantize_row_q2_K_ref>,
     dequantize_as<block_q2_K, dequantize_row_q2_K_ref>, GgmlType::Q8_K,
     quantize_weighted_as<block_q2_K, quantize_row_q2_K_weighted>},
    {GgmlType::Q3_K, "Q3_K", QK_K, sizeof(block_q3_K), quantize_unweighted_as<block_q3_K, quantize_row_q3_K_ref>,
     dequantize_as<block_q3_K, dequantize_row_q3_K_ref>, GgmlType::Q8_K,
     quantize_weighted_as<block_q3_K, quantize_row_q3_K_weighted>},
    {GgmlType::Q4_K, "Q4_K", QK_K, sizeof(block_q4_K), quantize_as<block_q4_K, quantize_row_q4_K_ref>,
     dequantize_as<block_q4_K, dequantize_row_q4_K_ref>, GgmlType::Q8_K,
     quantize_weighted_as<block_q4_K, quantize_row_q4_K_weighted>},
    {GgmlType::Q5_K, "Q5_K", QK_K, sizeof(block_q5_K), quantize_as<block_q5_K, quantize_row_q5_K_ref>,
     dequantize_as<block_q5_K, dequantize_row_q5_K_ref>, GgmlType::Q8_K,
     quantize_weighted_as<block_q5_K, quantize_row_q5_K_weighted>},
    {GgmlType::Q6_K, "Q6_K", QK_K, sizeof(block_q6_K), quantize_as<block_q6_K, quantize_row_q6_K_ref>,
     dequantize_as<block_q6_K, dequantize_row_q6_K_ref>, GgmlType::Q8_K,
     quantize_weighted_as<block_q6_K, quantize_row_q6_K_weighted>},
    // activations only: no weight kernel pairs with it (the loader rejects it as a weight type)
    {GgmlType::Q8_K, "Q8_K", QK_K, sizeof(block_q8_K), quantize_as<block_q8_K, quantize_row_q8_K_ref>,
     dequantize_as<block_q8_K, dequantize_row_q8_K_ref>, GgmlType::Q8_K},
    {GgmlType::IQ4_NL, "IQ4_NL", QK4_NL, sizeof(block_iq4_nl), quantize_as<block_iq4_nl, quantize_row_iq4_nl_ref>,
     dequantize_as<block_iq4_nl, dequantize_row_iq4_nl_ref>, GgmlType::Q8_0,
     quantize_weighted_as<block_iq4_nl, quantize_row_iq4_nl_weighted>},
    {GgmlType::IQ4_XS, "IQ4_XS", QK_K, sizeof(block_iq4_xs), quantize_iq4_xs_unweighted,
     dequantize_as<block_iq4_xs, dequantize_row_iq4_xs_ref>, GgmlType::Q8_K,
     quantize_weighted_as<block_iq4_xs, quantize_row_iq4_xs_weighted>},
};

}  // namespace

const TypeTraits* type_traits(GgmlType t) {
    for (const auto& tt : kTraits)
        if (tt.type == t) return &tt;
    return nullptr;
}

const TypeTraits* type_traits(uint32_t raw_type) {
    return raw_type < kTypeCount ? type_traits(static_cast<GgmlType>(raw_type)) : nullptr;
}

TypeList all_type_traits() { return {kTraits, sizeof kTraits / sizeof kTraits[0]}; }

}  // namespace phi2cpu
