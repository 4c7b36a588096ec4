// The Phi-2 network: mapped weights, KV cache, and one C++ forward per call.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/threadpool.h"
#include "model/config.h"
#include "model/hooks.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace phi2cpu {

class Model {
public:
    // cache_dir: where repack caches are kept ("" repacks into memory on every load).
    Model(const std::string& path, const Config& cfg, const std::vector<TensorEntry>& entries, int n_ctx,
          int n_threads, const std::string& cache_dir = "");

    // Appends n tokens at positions n_past()..n_past()+n-1 to the cache and writes float32 logits:
    // (n, n_vocab) when all_logits, else (1, n_vocab) for the last token. Throws ContextError when the
    // tokens do not fit, std::invalid_argument for ids outside the vocabulary; the cache is unchanged then.
    // `logits` may be null.
    // `captures` copies activations out (rows count from this call's first token). `seq_lens` packs
    // several sequences into one call: the cache must be empty, each sequence attends only to itself
    // from position 0, and the cache is emptied again afterwards.
    void forward(const int32_t* tokens, int n, bool all_logits, float* logits, const Hooks* captures = nullptr,
                 const std::vector<int>* seq_lens = nullptr);

    // Edits applied in every forward until replaced (nullptr: none).
    void set_edits(std::shared_ptr<const Hooks> edits) { edits_ = std::move(edits); }
    bool has_edits() const { return edits_ != nullptr; }
    // Final LayerNorm (when `norm`) and lm_head on n rows of residual stream x (n, n_embd) -> (n, n_vocab).
    void unembed(const float* x, int n, bool norm, float* logits);

    // The cached keys and values of positions 0..n_past()-1, as (n_layer, n_past, n_embd) arrays each.
    void read_state(float* k, float* v) const;
    // Replace the cache with n positions from arrays laid out as read_state writes them.
    void write_state(int n, const float* k, const float* v);

    void reset() { kv_.n_past = 0; }
    // Keep only the first n cached positions (n <= n_past()).
    void truncate(int n);
    int n_past() const { return kv_.n_past; }
    int n_ctx() const { return kv_.n_ctx; }
    int n_threads() const { return pool_.size(); }
    const Config& config() const { return cfg_; }
    const RepackReport& repack_report() const { return repack_; }
    // Throws FileError once the model file or its repack cache changed under the mapping (see
    // model/fault_guard.h); forward calls this before and after each batch, so no result computed
    // from a vanished page is returned. The model stays unusable after that: load it again.
    void check_files() const;

private:
    void forward_batch(const int32_t* tokens, int n, bool all_logits, float* logits, int row0);
    void attention(int layer, int n, float* qkv, float* out, int row0);
    // Edits, then captures, at one point; x holds the batch's n rows.
    void tap(Point p, int layer, float* x, int n, int row0) {
        if (edits_ && edits_->wants(p, layer)) edits_->apply(p, layer, x, n, pos_.data(), row0);
        if (captures_ && captures_->wants(p, layer)) captures_->apply(p, layer, x, n, pos_.data(), row0);
    }
    bool tapped(Point p, int layer) const {
        return (edits_ && edits_->wants(p, layer)) || (captures_ && captures_->wants(p, layer));
    }

    Config cfg_;
    MappedFile file_;
    Weights w_;
    KVCache kv_;
    ThreadPool pool_;
    RepackReport repack_;
    std::shared_ptr<const Hooks> edits_;
    const Hooks* captures_ = nullptr;  // during a forward only
    std::vector<int> seq_start_;        // packed calls: the first cache slot of each slot's sequence
    std::vector<int> pos_;              // the batch's positions within their sequences (for edits)

    // activations for one batch of at most kMaxBatch tokens
    std::vector<float> x_, h_, qkv_, att_, ff_, tmp_;
    std::vector<uint8_t> act_scratch_;
};

}  // namespace phi2cpu
