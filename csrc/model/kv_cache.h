#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "quant/fp16.h"

namespace phi2cpu {

// How cached keys and values are stored; attention widens them to f32 as it reads them.
enum class KVType { F32, F16 };

// Rotated keys and values of n_seq sequences, each in its own region, head-major:
// k[seq][layer][head][pos][head_dim] (v alike), as f32 or IEEE half. One head's keys of a sequence
// are contiguous, so decode attention streams them; with positions n_embd elements apart, every
// key of a head fell into the same few L1 sets. A sequence's region is allocated on its first use,
// uninitialised, so pages are touched only as positions fill.
struct KVCache {
    int n_seq = 0, n_layer = 0, n_ctx = 0, n_head = 0, head_dim = 0;
    KVType type = KVType::F16;
    std::vector<int> n_past;                      // (n_seq): positions filled
    std::vector<std::unique_ptr<uint8_t[]>> k, v;  // (n_seq): a region each, null until used

    KVCache(int seqs, int layers, int ctx, int heads, int hd, KVType t)
        : n_seq(seqs), n_layer(layers), n_ctx(ctx), n_head(heads), head_dim(hd), type(t),
          n_past(size_t(seqs > 0 ? seqs : 0), 0), k(n_past.size()), v(n_past.size()) {}

    size_t elem_bytes() const { return type == KVType::F16 ? 2 : 4; }
    // element offset of (layer, head, pos) within a sequence's region
    size_t offset(int layer, int head, int pos) const {
        return ((size_t(layer) * n_head + size_t(head)) * n_ctx + size_t(pos)) * head_dim;
    }
    void check_seq(int seq) const {
        if (seq < 0 || seq >= n_seq)
            throw std::invalid_argument("sequence id " + std::to_string(seq) + " is outside 0.." +
                                        std::to_string(n_seq - 1) + " (the model was loaded with n_seq=" +
                                        std::to_string(n_seq) + ")");
    }
    void ensure(int seq) {
        if (k[size_t(seq)]) return;
        const size_t bytes = size_t(n_layer) * n_head * size_t(n_ctx) * head_dim * elem_bytes();
        k[size_t(seq)].reset(new uint8_t[bytes]);
        v[size_t(seq)].reset(new uint8_t[bytes]);
    }
    uint8_t* k_at(int seq, int layer, int head, int pos) const {
        return k[size_t(seq)].get() + offset(layer, head, pos) * elem_bytes();
    }
    uint8_t* v_at(int seq, int layer, int head, int pos) const {
        return v[size_t(seq)].get() + offset(layer, head, pos) * elem_bytes();
    }
    // n f32 values -> n cached elements at dst (rounded to nearest even for a half cache)
    void put(const float* x, uint8_t* dst, int n) const {
        if (type == KVType::F32) return void(std::memcpy(dst, x, size_t(n) * 4));
        auto* h = reinterpret_cast<uint16_t*>(dst);
        for (int i = 0; i < n; i++) h[i] = fp32_to_fp16(x[i]);
    }
};

}  // namespace phi2cpu
