#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/dispatch.h"
#include "model/errors.h"
#include "model/fault_guard.h"
#include "model/matmul.h"

namespace phi2cpu {
namespace {

constexpr int kMaxBatch = 256;  // tokens per internal batch: bounds activation memory on long prompts

}  // namespace

Model::Model(const std::string& path, const Config& cfg, const std::vector<TensorEntry>& entries, int n_ctx,
             int n_threads, const std::string& cache_dir)
    : cfg_(cfg),
      file_(path),
      w_(Weights::bind(file_, cfg, entries)),
      kv_(cfg.n_layer, n_ctx, cfg.n_head, cfg.head_dim()),
      pool_(n_threads) {
    if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
    kernels();  // choose the kernel path now, so a bad PHI2CPU_ISA fails at load
    repack_ = w_.repack(file_, pool_, cache_dir);
    check_files();
}

void Model::check_files() const {
    std::string why = file_.changed();
    if (why.empty() && mapping_faulted(w_.repacked.get()))
        why = repack_.cache_path + ": the repack cache shrank while in use: load the model again";
    if (!why.empty()) throw FileError(why);
}

void Model::truncate(int n) {
    if (n < 0 || n > kv_.n_past)
        throw std::invalid_argument("truncate: " + std::to_string(n) + " is outside 0.." + std::to_string(kv_.n_past));
    kv_.n_past = n;
}

// The cache as (n_layer, n_past, n_embd) arrays, each position's heads side by side.
void Model::read_state(float* k, float* v) const {
    const int n = kv_.n_past, hd = kv_.head_dim;
    const size_t d = size_t(kv_.n_head) * hd;
    for (int l = 0; l < kv_.n_layer; l++)
        for (int h = 0; h < kv_.n_head; h++)
            for (int p = 0; p < n; p++) {
                const size_t dst = (size_t(l) * n + p) * d + size_t(h) * hd, src = kv_.offset(l, h, p);
                std::copy(kv_.k.get() + src, kv_.k.get() + src + hd, k + dst);
                std::copy(kv_.v.get() + src, kv_.v.get() + src + hd, v + dst);
            }
}

void Model::write_state(int n, const float* k, const float* v) {
    if (n < 0 || n > kv_.n_ctx)
        throw ContextError("state holds " + std::to_string(n) + " positions; the context holds " +
                           std::to_string(kv_.n_ctx));
    const int hd = kv_.head_dim;
    const size_t d = size_t(kv_.n_head) * hd;
    for (int l = 0; l < kv_.n_layer; l++)
        for (int h = 0; h < kv_.n_head; h++)
            for (int p = 0; p < n; p++) {
                const size_t src = (size_t(l) * n + p) * d + size_t(h) * hd;
                std::copy(k + src, k + src + hd, kv_.k_at(l, h, p));
                std::copy(v + src, v + src + hd, kv_.v_at(l, h, p));
            }
    kv_.n_past = n;
}

void Model::forward(const int32_t* tokens, int n, bool all_logits, float* logits, const Hooks* captures,
                    const std::vector<int>* seq_lens) {
    if (n <= 0) throw std::invalid_argument("forward: no tokens");
    if (n > kv_.n_ctx - kv_.n_past)
        throw ContextError("context full: " + std::to_string(kv_.n_past) + " cached + " + std::to_string(n) +
                           " new tokens exceed the context of " + std::to_string(kv_.n_ctx) + " tokens");
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= cfg_.n_vocab)
            throw std::invalid_argument("token id " + std::to_string(tokens[i]) + " is outside the vocabulary (0.." +
                                        std::to_string(cfg_.n_vocab - 1) + ")");
    check_files();
    if (seq_lens) {
        if (kv_.n_past != 0) throw std::invalid_argument("forward: packed sequences need an empty cache");
        seq_start_.clear();
        for (int len : *seq_lens) {
            if (len <= 0) throw std::invalid_argument("forward: a packed sequence is empty");
            seq_start_.insert(seq_start_.end(), size_t(len), int(seq_start_.size()));
        }
        if (seq_start_.size() != size_t(n)) {
            seq_start_.clear();
            throw std::invalid_argument("forward: packed sequence lengths do not add up to the tokens");
        }
    }
    struct Reset {  // leaves no call state behind, also when a batch throws
        Model& m;
        bool packed;
        ~Reset() {
            m.captures_ = nullptr;
            m.seq_start_.clear();
            if (packed) m.kv_.n_past = 0;
        }
    } reset{*this, seq_lens != nullptr};
    captures_ = captures && !captures->empty() ? captures : nullptr;
    for (int done = 0; done < n;) {
        const int m = std::min(kMaxBatch, n - done);
        const bool last = done + m == n;
        float* out = !logits ? nullptr : all_logits ? logits + size_t(done) * cfg_.n_vocab : (last ? logits : nullptr);
        forward_batch(tokens + done, m, all_logits, out, done);
        check_files();
        done += m;
    }
}

void Model::unembed(const float* x, int n, bool norm, float* logits) {
    const Kernels& k = kernels();
    const int64_t d = cfg_.n_embd;
    std::vector<float> h;
    if (norm) {
        h.resize(size_t(n) * size_t(d));
        for (int t = 0; t < n; t++)
            k.layernorm_f32(d, x + size_t(t) * size_t(d), w_.output_norm_w.data(), w_.output_norm_b.data(),
                            cfg_.norm_eps, &h[size_t(t) * size_t(d)]);
    }
    check_files();
    matmul(w_.output_w, w_.output_b.data(), norm ? h.data() : x, n, logits, cfg_.n_vocab, pool_, act_scratch_);
    check_files();
}

// x = x + attn(LN(x)) + mlp(LN(x)) per layer; logits from the final LayerNorm.
void Model::forward_batch(const int32_t* tokens, int n, bool all_logits, float* logits, int row0) {
    const Kernels& k = kernels();
    const int64_t d = cfg_.n_embd, ff = cfg_.n_ff;
    x_.resize(size_t(n * d));
    h_.resize(size_t(n * d));
    qkv_.resize(size_t(n * 3 * d));
    att_.resize(size_t(n * d));
    ff_.resize(size_t(n * ff));
    tmp_.resize(size_t(n * d));
    pos_.resize(size_t(n));
    for (int t = 0; t < n; t++) {
        const int slot = kv_.n_past + t;
        pos_[size_t(t)] = seq_start_.empty() ? slot : slot - seq_start_[size_t(slot)];
    }

    for (int t = 0; t < n; t++) w_.token_embd.tt->dequantize(w_.token_embd.row(tokens[t]), &x_[size_t(t * d)], d);

    for (int l = 0; l < cfg_.n_layer; l++) {
        const LayerWeights& L = w_.layers[size_t(l)];
        tap(Point::ResidPre, l, x_.data(), n, row0);
        for (int t = 0; t < n; t++)
            k.layernorm_f32(d, &x_[size_t(t * d)], L.attn_norm_w.data(), L.attn_norm_b.data(), cfg_.norm_eps,
                            &h_[size_t(t * d)]);
        tap(Point::Ln, l, h_.data(), n, row0);

        if (L.qkv_w) {
            matmul(L.qkv_w, L.qkv_b.data(), h_.data(), n, qkv_.data(), 3 * d, pool_, act_scratch_);
        } else {
            matmul(L.q_w, L.q_b.data(), h_.data(), n, qkv_.data(), 3 * d, pool_, act_scratch_);
            matmul(L.k_w, L.k_b.data(), h_.data(), n, qkv_.data() + d, 3 * d, pool_, act_scratch_);
            matmul(L.v_w, L.v_b.data(), h_.data(), n, qkv_.data() + 2 * d, 3 * d, pool_, act_scratch_);
        }
        attention(l, n, qkv_.data(), att_.data(), row0);
        tap(Point::HeadOut, l, att_.data(), n, row0);
        matmul(L.out_w, L.out_b.data(), att_.data(), n, tmp_.data(), d, pool_, act_scratch_);
        tap(Point::AttnOut, l, tmp_.data(), n, row0);

        matmul(L.up_w, L.up_b.data(), h_.data(), n, ff_.data(), ff, pool_, act_scratch_);
        tap(Point::MlpPre, l, ff_.data(), n, row0);
        pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
            k.gelu_new_f32((t1 - t0) * ff, &ff_[size_t(t0 * ff)]);
        });
        tap(Point::MlpPost, l, ff_.data(), n, row0);
        matmul(L.down_w, L.down_b.data(), ff_.data(), n, h_.data(), d, pool_, act_scratch_);
        tap(Point::MlpOut, l, h_.data(), n, row0);

        for (int64_t i = 0; i < n * d; i++) x_[size_t(i)] += tmp_[size_t(i)] + h_[size_t(i)];
        tap(Point::ResidPost, l, x_.data(), n, row0);
    }
    kv_.n_past += n;

    const bool norm_all = tapped(Point::LnFinal, 0);
    if (!logits && !norm_all) return;
    // rows first..n-1 are normalised into h_ from row 0 (all rows when the final norm is tapped)
    const int first = all_logits || norm_all ? 0 : n - 1;
    for (int t = first; t < n; t++)
        k.layernorm_f32(d, &x_[size_t(t * d)], w_.output_norm_w.data(), w_.output_norm_b.data(), cfg_.norm_eps,
                        &h_[size_t((t - first) * d)]);
    if (norm_all) tap(Point::LnFinal, 0, h_.data(), n, row0);
    if (!logits) return;
    const int from = all_logits ? 0 : n - 1;
    matmul(w_.output_w, w_.output_b.data(), h_.data() + size_t(from - first) * size_t(d), n - from, logits,
           cfg_.n_vocab, pool_, act_scratch_);
}

// Rotary on q and k, append k and v to the cache, then causal attention of every new token over
// positions 0..its own, in fp32.
void Model::attention(int layer, int n, float* qkv, float* out, int row0) {
    const Kernels& k = kernels();
    const int64_t d = cfg_.n_embd;
    const int hd = cfg_.head_dim(), n_head = cfg_.n_head;
    const int pos0 = kv_.n_past;

    pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; t++) {
            float* q = qkv + t * 3 * d;  // q and k rotated in place
            float* kk = q + d;
            const float* vv = q + 2 * d;
            const int slot = pos0 + int(t), pos = pos_[size_t(t)];
            k.rope_neox_f32(n_head, hd, cfg_.n_rot, pos, cfg_.rope_theta, q);
            k.rope_neox_f32(n_head, hd, cfg_.n_rot, pos, cfg_.rope_theta, kk);
            for (int h = 0; h < n_head; h++) {
                std::copy(kk + h * hd, kk + (h + 1) * hd, kv_.k_at(layer, h, slot));
                std::copy(vv + h * hd, vv + (h + 1) * hd, kv_.v_at(layer, h, slot));
            }
        }
    });

    const float scale = 1.0f / std::sqrt(float(hd));
    const bool probs = captures_ && captures_->wants(Point::AttnProbs, layer);
    pool_.parallel_for(int64_t(n) * n_head, 1, [&](int64_t i0, int64_t i1) {
        std::vector<float> scores(size_t(pos0 + n));
        for (int64_t i = i0; i < i1; i++) {
            const int64_t h = i / n, t = i % n;
            const int slot = pos0 + int(t), first = slot - pos_[size_t(t)];  // the sequence's first slot
            const int n_kv = slot - first + 1;
            k.attn_head_f32(hd, n_kv, qkv + t * 3 * d + h * hd, kv_.k_at(layer, int(h), first),
                            kv_.v_at(layer, int(h), first), hd, scale, scores.data(), out + t * d + h * hd);
            // every kernel leaves the scores proportional to the probabilities it used
            if (probs) captures_->capture_probs(layer, int(h), row0 + int(t), scores.data(), n_kv);
        }
    });
}

}  // namespace phi2cpu
