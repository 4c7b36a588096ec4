// The Phi-2 network: mapped weights, KV cache, and one C++ forward per call.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/threadpool.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace phi2cpu {

class Model {
public:
    Model(const std::string& path, const Config& cfg, const std::vector<TensorEntry>& entries, int n_ctx,
          int n_threads);

    // Appends n tokens at positions n_past()..n_past()+n-1 to the cache and writes float32 logits:
    // (n, n_vocab) when all_logits, else (1, n_vocab) for the last token. Throws ContextError when the
    // tokens do not fit, std::invalid_argument for ids outside the vocabulary; the cache is unchanged then.
    void forward(const int32_t* tokens, int n, bool all_logits, float* logits);

    void reset() { kv_.n_past = 0; }
    // Keep only the first n cached positions (n <= n_past()).
    void truncate(int n);
    int n_past() const { return kv_.n_past; }
    int n_ctx() const { return kv_.n_ctx; }
    int n_threads() const { return pool_.size(); }
    const Config& config() const { return cfg_; }

private:
    void forward_batch(const int32_t* tokens, int n, bool all_logits, float* logits);
    void attention(int layer, int n, float* qkv, float* out);

    Config cfg_;
    MappedFile file_;
    Weights w_;
    KVCache kv_;
    ThreadPool pool_;

    // activations for one batch of at most kMaxBatch tokens
    std::vector<float> x_, h_, qkv_, att_, ff_, tmp_;
    std::vector<uint8_t> act_scratch_;
};

}  // namespace phi2cpu
