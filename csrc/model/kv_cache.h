#pragma once
#include <cstdint>
#include <memory>

namespace phi2cpu {

// Rotated keys and values of every layer: k[layer][pos][n_embd] (head h at h*head_dim), fp32.
// Allocated uninitialised, so pages are touched only as positions fill.
struct KVCache {
    int n_layer = 0, n_ctx = 0, n_embd = 0;
    int n_past = 0;  // positions filled
    std::unique_ptr<float[]> k, v;

    KVCache(int layers, int ctx, int embd)
        : n_layer(layers), n_ctx(ctx), n_embd(embd),
          k(new float[size_t(layers) * size_t(ctx) * size_t(embd)]),
          v(new float[size_t(layers) * size_t(ctx) * size_t(embd)]) {}

    float* k_at(int layer, int pos) { return k.get() + (size_t(layer) * n_ctx + size_t(pos)) * n_embd; }
    float* v_at(int layer, int pos) { return v.get() + (size_t(layer) * n_ctx + size_t(pos)) * n_embd; }
    size_t bytes() const { return 2 * size_t(n_layer) * n_ctx * n_embd * sizeof(float); }
};

}  // namespace phi2cpu
