// The one place a tensor type is described: block geometry, (de)quantizers, and the activation
// type its matmul kernels pair it with.
#pragma once
#include <cstddef>
#include <cstdint>

#include "quant/blocks.h"

namespace phi2cpu {

using quantize_row_fn = void (*)(const float* x, void* y, int64_t n);
using dequantize_row_fn = void (*)(const void* x, float* y, int64_t n);
// importance: one weight per column (n values) for the squared error of each element; may be nullptr
using quantize_weighted_fn = void (*)(const float* x, void* y, int64_t n, const float* importance);

struct TypeTraits {
    GgmlType type;
    const char* name;
    int block_size;               // elements per block
    size_t type_size;             // bytes per block
    quantize_row_fn quantize;     // from f32 (n a multiple of block_size)
    dequantize_row_fn dequantize; // to f32
    GgmlType vec_dot_type;        // what activations are converted to before the dot product
    quantize_weighted_fn quantize_weighted = nullptr;  // importance-weighted search (weight types)
};

// GGML type ids are below this; kernel tables are indexed by them.
constexpr size_t kTypeCount = 40;

// nullptr when the engine does not support the type.
const TypeTraits* type_traits(GgmlType t);
const TypeTraits* type_traits(uint32_t raw_type);

// Every type the engine knows, in id order.
struct TypeList {
    const TypeTraits* first;
    size_t count;
    const TypeTraits* begin() const { return first; }
    const TypeTraits* end() const { return first + count; }
};
TypeList all_type_traits();

// A typed row quantizer / dequantizer as the untyped function of the table.
template <typename Block, void (*F)(const float*, Block*, int64_t)>
void quantize_as(const float* x, void* y, int64_t n) { F(x, static_cast<Block*>(y), n); }
// The unweighted form of a quantizer that takes importance weights (nullptr: none).
template <typename Block, void (*F)(const float*, Block*, int64_t, const float*)>
void quantize_unweighted_as(const float* x, void* y, int64_t n) { F(x, static_cast<Block*>(y), n, nullptr); }
// The same, with importance weights.
template <typename Block, void (*F)(const float*, Block*, int64_t, const float*)>
void quantize_weighted_as(const float* x, void* y, int64_t n, const float* importance) {
    F(x, static_cast<Block*>(y), n, importance);
}
template <typename Block, void (*F)(const Block*, float*, int64_t)>
void dequantize_as(const void* x, float* y, int64_t n) { F(static_cast<const Block*>(x), y, n); }

inline size_t row_bytes(const TypeTraits& tt, int64_t n) { return size_t(n / tt.block_size) * tt.type_size; }

}  // namespace phi2cpu
