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

// One token of a batch: `token` goes to position `pos` of sequence `seq`; `logits` asks for its row.
struct BatchEntry {
    int32_t token = 0;
    int pos = 0;
    int seq = 0;
    bool logits = false;
};

class Model {
public:
    // cache_dir: where repack caches are kept ("" repacks into memory on every load). n_seq sequences
    // get a KV cache of n_ctx positions each, stored as kv_type.
    Model(const std::string& path, const Config& cfg, const std::vector<TensorEntry>& entries, int n_ctx,
          int n_threads, const std::string& cache_dir = "", int n_seq = 1, KVType kv_type = KVType::F16);

    // Runs a batch of entries of any sequences (decode tokens of several and prompt chunks of others)
    // and writes one float32 logits row (n_vocab) per entry that asks for it, in entry order.
    // Each sequence's entries must continue it: positions n_past(seq), n_past(seq)+1, ... in batch
    // order, below n_ctx. Attention of an entry reads only its own sequence's positions 0..pos.
    // Throws std::invalid_argument (unknown sequence, bad token, a position gap) or ContextError
    // (a sequence's context full) before touching the cache. `logits` may be null.
    void decode(const BatchEntry* entries, int n, float* logits, const Hooks* captures = nullptr);

    // The single-sequence API works on sequence 0.
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

    // The cached keys and values of sequence seq's positions 0..n_past(seq)-1, as (n_layer, n_past,
    // n_embd) arrays each of the cache's type (f32 or IEEE half).
    void read_state(int seq, void* k, void* v) const;
    // Replace sequence seq's cache with n positions from arrays laid out as read_state writes them,
    // of type `type` (converted to the cache's type).
    void write_state(int seq, int n, const void* k, const void* v, KVType type);

    void reset(int seq = 0);
    // Keep only the first n cached positions of seq (n <= n_past(seq)).
    void truncate(int n, int seq = 0);
    // Sequence dst gets the first n cached positions of src (a prompt forked for n > 1 samples).
    void copy_seq(int src, int dst, int n);
    int n_past(int seq = 0) const {
        kv_.check_seq(seq);
        return kv_.n_past[size_t(seq)];
    }
    int n_seq() const { return kv_.n_seq; }
    KVType kv_type() const { return kv_.type; }
    int n_ctx() const { return kv_.n_ctx; }
    int n_threads() const { return pool_.size(); }
    const Config& config() const { return cfg_; }
    const RepackReport& repack_report() const { return repack_; }
    // Throws FileError once the model file or its repack cache changed under the mapping (see
    // model/fault_guard.h); forward calls this before and after each batch, so no result computed
    // from a vanished page is returned. The model stays unusable after that: load it again.
    void check_files() const;

private:
    // A batch row: its entry, and the first cache slot of its sequence (packed research sequences share
    // sequence 0's region, one after another); the entry's keys go to slot slot0 + pos.
    struct Row {
        BatchEntry e;
        int slot0 = 0;
    };
    // packed: the rows are packed research sequences in sequence 0, emptied afterwards
    void run(const Row* rows, int n, float* logits, const Hooks* captures, bool packed);
    void check_token(int32_t t) const;
    void forward_batch(const Row* rows, int n, float* logits, int row0);
    void attention(int layer, const Row* rows, int n, float* qkv, float* out, int row0);
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
    std::vector<Row> rows_;             // the call's rows
    std::vector<int> pos_;              // the batch's positions within their sequences (for edits)

    // activations for one batch of at most kMaxBatch tokens
    std::vector<float> x_, h_, qkv_, att_, ff_, tmp_;
    std::vector<uint8_t> act_scratch_;
};

}  // namespace phi2cpu
