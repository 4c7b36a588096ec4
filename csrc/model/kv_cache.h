#pragma once
#include <cstdint>
#include <memory>

namespace phi2cpu {

// Rotated keys and values of every layer, fp32, head-major: k[layer][head][pos][head_dim]. One head's
// keys are contiguous, so attention streams them; with positions n_embd floats apart, every key
// of a head fell into the same few L1 sets. Allocated uninitialised, so pages are touched only as
// positions fill.
struct KVCache {
    int n_layer = 0, n_ctx = 0, n_head = 0, head_dim = 0;
    int n_past = 0;  // positions filled
    std::unique_ptr<float[]> k, v;

    KVCache(int layers, int ctx, int heads, int hd)
        : n_layer(layers), n_ctx(ctx), n_head(heads), head_dim(hd),
          k(new float[size_t(layers) * size_t(ctx) * size_t(heads) * size_t(hd)]),
          v(new float[size_t(layers) * size_t(ctx) * size_t(heads) * size_t(hd)]) {}

    size_t offset(int layer, int head, int pos) const {
        return ((size_t(layer) * n_head + size_t(head)) * n_ctx + size_t(pos)) * head_dim;
    }
    float* k_at(int layer, int head, int pos) { return k.get() + offset(layer, head, pos); }
    float* v_at(int layer, int head, int pos) { return v.get() + offset(layer, head, pos); }
};

}  // namespace phi2cpu
