// The one place a tensor type is described: block geometry, (de)quantizers, and the activation
// type its matmul kernels pair it with.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

using quantize_row_fn = void (*)(const float* x, void* y, int64_t n);
using dequantize_row_fn = void (*)(const void* x, float* y, int64_t n);

struct TypeTraits {
    GgmlType type;
    const char* name;
    int block_size;               // elements per block
    size_t type_size;             // bytes per block
    quantize_row_fn quantize;     // from f32 (n a multiple of block_size)
    dequantize_row_fn dequantize; // to f32
    GgmlType vec_dot_type;        // what activations are converted to before the dot product
};

// nullptr when the engine does not support the type.
const TypeTraits* type_traits(GgmlType t);
const TypeTraits* type_traits(uint32_t raw_type);

inline size_t row_bytes(const TypeTraits& tt, int64_t n) { return size_t(n / tt.block_size) * tt.type_size; }

}  // namespace phi2cpu
