#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
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
             int n_threads, const std::string& cache_dir, int n_seq, KVType kv_type)
    : cfg_(cfg),
      file_(path),
      w_(Weights::bind(file_, cfg, entries)),
      kv_(n_seq, cfg.n_layer, n_ctx, cfg.n_head, cfg.head_dim(), kv_type),
      pool_(n_threads) {
    if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive");
    if (n_seq <= 0) throw std::invalid_argument("n_seq must be positive");
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

void Model::reset(int seq) {
    kv_.check_seq(seq);
    kv_.n_past[size_t(seq)] = 0;
}

void Model::truncate(int n, int seq) {
    const int have = n_past(seq);
    if (n < 0 || n > have)
        throw std::invalid_argument("truncate: " + std::to_string(n) + " is outside 0.." + std::to_string(have));
    kv_.n_past[size_t(seq)] = n;
}

void Model::copy_seq(int src, int dst, int n) {
    const int have = n_past(src);
    kv_.check_seq(dst);
    if (src == dst) throw std::invalid_argument("copy: source and destination are both sequence " + std::to_string(src));
    if (n < 0 || n > have)
        throw std::invalid_argument("copy: " + std::to_string(n) + " positions asked; sequence " + std::to_string(src) +
                                    " holds " + std::to_string(have));
    kv_.ensure(dst);
    const size_t bytes = size_t(n) * size_t(kv_.head_dim) * kv_.elem_bytes();
    for (int l = 0; l < kv_.n_layer && n > 0; l++)
        for (int h = 0; h < kv_.n_head; h++) {
            std::memcpy(kv_.k_at(dst, l, h, 0), kv_.k_at(src, l, h, 0), bytes);
            std::memcpy(kv_.v_at(dst, l, h, 0), kv_.v_at(src, l, h, 0), bytes);
        }
    kv_.n_past[size_t(dst)] = n;
}

// The cache as (n_layer, n_past, n_embd) arrays, each position's heads side by side.
void Model::read_state(int seq, void* k, void* v) const {
    const int n = n_past(seq), hd = kv_.head_dim;
    if (n == 0) return;
    const size_t eb = kv_.elem_bytes(), d = size_t(kv_.n_head) * hd;
    for (int l = 0; l < kv_.n_layer; l++)
        for (int h = 0; h < kv_.n_head; h++)
            for (int p = 0; p < n; p++) {
                const size_t dst = ((size_t(l) * n + p) * d + size_t(h) * hd) * eb;
                std::memcpy(static_cast<uint8_t*>(k) + dst, kv_.k_at(seq, l, h, p), hd * eb);
                std::memcpy(static_cast<uint8_t*>(v) + dst, kv_.v_at(seq, l, h, p), hd * eb);
            }
}

void Model::write_state(int seq, int n, const void* k, const void* v, KVType type) {
    kv_.check_seq(seq);
    if (n < 0 || n > kv_.n_ctx)
        throw ContextError("state holds " + std::to_string(n) + " positions; the context holds " +
                           std::to_string(kv_.n_ctx));
    kv_.ensure(seq);
    const int hd = kv_.head_dim;
    const size_t d = size_t(kv_.n_head) * hd, sb = type == KVType::F16 ? 2 : 4;
    std::vector<float> row(static_cast<size_t>(hd));
    // one row of hd elements of `type` at src into the cache at dst
    auto put = [&](const void* base, size_t at, uint8_t* dst) {
        const uint8_t* src = static_cast<const uint8_t*>(base) + at * sb;
        if (type == kv_.type) return void(std::memcpy(dst, src, hd * sb));
        if (type == KVType::F16)  // widening: exact
            for (int i = 0; i < hd; i++) row[size_t(i)] = fp16_to_fp32(reinterpret_cast<const uint16_t*>(src)[i]);
        else
            std::memcpy(row.data(), src, hd * sb);
        kv_.put(row.data(), dst, hd);
    };
    for (int l = 0; l < kv_.n_layer; l++)
        for (int h = 0; h < kv_.n_head; h++)
            for (int p = 0; p < n; p++) {
                const size_t at = (size_t(l) * n + p) * d + size_t(h) * hd;
                put(k, at, kv_.k_at(seq, l, h, p));
                put(v, at, kv_.v_at(seq, l, h, p));
            }
    kv_.n_past[size_t(seq)] = n;
}

void Model::check_token(int32_t t) const {
    if (t < 0 || t >= cfg_.n_vocab)
        throw std::invalid_argument("token id " + std::to_string(t) + " is outside the vocabulary (0.." +
                                    std::to_string(cfg_.n_vocab - 1) + ")");
}

void Model::decode(const BatchEntry* e, int n, float* logits, const Hooks* captures) {
    if (n <= 0) throw std::invalid_argument("decode: no entries");
    std::vector<int> next(kv_.n_past);  // each sequence's next position
    for (int i = 0; i < n; i++) {
        kv_.check_seq(e[i].seq);
        int& want = next[size_t(e[i].seq)];
        const std::string seq = "sequence " + std::to_string(e[i].seq);
        if (e[i].pos != want)
            throw std::invalid_argument(seq + ": entry " + std::to_string(i) + " has position " + std::to_string(e[i].pos) +
                                        "; the sequence continues at position " + std::to_string(want) +
                                        " (positions follow on without gaps, in batch order)");
        if (want >= kv_.n_ctx)
            throw ContextError(seq + ": context full: position " + std::to_string(want) + " is past the context of " +
                               std::to_string(kv_.n_ctx) + " tokens");
        want++;
    }
    for (int i = 0; i < n; i++) check_token(e[i].token);
    rows_.resize(size_t(n));
    for (int i = 0; i < n; i++) rows_[size_t(i)] = Row{e[i], 0};
    run(rows_.data(), n, logits, captures, false);
}

void Model::forward(const int32_t* tokens, int n, bool all_logits, float* logits, const Hooks* captures,
                    const std::vector<int>* seq_lens) {
    if (n <= 0) throw std::invalid_argument("forward: no tokens");
    const int past = kv_.n_past[0];
    if (n > kv_.n_ctx - past)
        throw ContextError("context full: " + std::to_string(past) + " cached + " + std::to_string(n) +
                           " new tokens exceed the context of " + std::to_string(kv_.n_ctx) + " tokens");
    rows_.resize(size_t(n));
    for (int i = 0; i < n; i++)
        rows_[size_t(i)] = Row{BatchEntry{tokens[i], past + i, 0, logits && (all_logits || i == n - 1)}, 0};
    if (seq_lens) {  // each packed sequence from position 0, in sequence 0's region after the one before
        if (past != 0) throw std::invalid_argument("forward: packed sequences need an empty cache");
        int start = 0;
        for (int len : *seq_lens) {
            if (len <= 0) throw std::invalid_argument("forward: a packed sequence is empty");
            if (len > n - start) break;
            for (int i = start; i < start + len; i++) rows_[size_t(i)].e.pos = i - start, rows_[size_t(i)].slot0 = start;
            start += len;
        }
        if (start != n || std::accumulate(seq_lens->begin(), seq_lens->end(), int64_t(0)) != n)
            throw std::invalid_argument("forward: packed sequence lengths do not add up to the tokens");
    }
    for (int i = 0; i < n; i++) check_token(tokens[i]);
    run(rows_.data(), n, logits, captures, seq_lens != nullptr);
}

// Batches of at most kMaxBatch rows; logits rows follow the rows that ask for them.
void Model::run(const Row* rows, int n, float* logits, const Hooks* captures, bool packed) {
    for (int i = 0; i < n; i++) kv_.ensure(rows[i].e.seq);
    check_files();
    struct Reset {  // leaves no call state behind, also when a batch throws
        Model& m;
        bool packed;
        ~Reset() {
            m.captures_ = nullptr;
            if (packed) m.kv_.n_past[0] = 0;
        }
    } reset{*this, packed};
    captures_ = captures && !captures->empty() ? captures : nullptr;
    for (int done = 0; done < n;) {
        const int m = std::min(kMaxBatch, n - done);
        int n_out = 0;
        for (int t = done; t < done + m; t++) n_out += rows[t].e.logits;
        forward_batch(rows + done, m, logits, done);
        check_files();
        if (logits) logits += size_t(n_out) * size_t(cfg_.n_vocab);
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

// x = x + attn(LN(x)) + mlp(LN(x)) per layer; logits from the final LayerNorm of the rows that ask.
void Model::forward_batch(const Row* rows, int n, float* logits, int row0) {
    const Kernels& k = kernels();
    const int64_t d = cfg_.n_embd, ff = cfg_.n_ff;
    x_.resize(size_t(n * d));
    h_.resize(size_t(n * d));
    qkv_.resize(size_t(n * 3 * d));
    att_.resize(size_t(n * d));
    ff_.resize(size_t(n * ff));
    tmp_.resize(size_t(n * d));
    pos_.resize(size_t(n));
    for (int t = 0; t < n; t++) pos_[size_t(t)] = rows[t].e.pos;

    for (int t = 0; t < n; t++) w_.token_embd.tt->dequantize(w_.token_embd.row(rows[t].e.token), &x_[size_t(t * d)], d);

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
        attention(l, rows, n, qkv_.data(), att_.data(), row0);
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
    for (int t = 0; t < n; t++) {
        int& past = kv_.n_past[size_t(rows[t].e.seq)];
        past = std::max(past, rows[t].slot0 + rows[t].e.pos + 1);
    }

    const bool norm_all = tapped(Point::LnFinal, 0);
    int n_out = 0;
    for (int t = 0; t < n; t++) n_out += rows[t].e.logits;
    if (!logits) n_out = 0;
    if (!n_out && !norm_all) return;
    // the final norm of every row when it is tapped, else only of the rows that ask for logits; then
    // those rows' norms are packed from row 0 of h_ (a row moves only down, so in place is safe)
    for (int t = 0, i = 0; t < n; t++) {
        if (!norm_all && !(n_out && rows[t].e.logits)) continue;
        k.layernorm_f32(d, &x_[size_t(t * d)], w_.output_norm_w.data(), w_.output_norm_b.data(), cfg_.norm_eps,
                        &h_[size_t((norm_all ? t : i++) * d)]);
    }
    if (norm_all) {
        tap(Point::LnFinal, 0, h_.data(), n, row0);
        for (int t = 0, i = 0; t < n && n_out; t++)
            if (rows[t].e.logits) {
                if (i != t) std::copy(&h_[size_t(t * d)], &h_[size_t((t + 1) * d)], &h_[size_t(i * d)]);
                i++;
            }
    }
    if (!n_out) return;
    matmul(w_.output_w, w_.output_b.data(), h_.data(), n_out, logits, cfg_.n_vocab, pool_, act_scratch_);
}

// Rotary on q and k, append k and v to each row's sequence, then causal attention of every row over
// its own sequence's positions 0..pos, in fp32. Each (row, head) is one kernel call over that
// sequence's keys in position order: its result does not depend on the other rows of the batch, nor
// on whether its prefix was cached by this call or an earlier one.
void Model::attention(int layer, const Row* rows, int n, float* qkv, float* out, int row0) {
    const Kernels& k = kernels();
    const int64_t d = cfg_.n_embd;
    const int hd = cfg_.head_dim(), n_head = cfg_.n_head;

    int n_kv_max = 0;
    for (int t = 0; t < n; t++) n_kv_max = std::max(n_kv_max, rows[t].e.pos + 1);
    pool_.parallel_for(n, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; t++) {
            float* q = qkv + t * 3 * d;  // q and k rotated in place
            float* kk = q + d;
            const float* vv = q + 2 * d;
            const Row& r = rows[t];
            k.rope_neox_f32(n_head, hd, cfg_.n_rot, r.e.pos, cfg_.rope_theta, q);
            k.rope_neox_f32(n_head, hd, cfg_.n_rot, r.e.pos, cfg_.rope_theta, kk);
            for (int h = 0; h < n_head; h++) {
                kv_.put(kk + h * hd, kv_.k_at(r.e.seq, layer, h, r.slot0 + r.e.pos), hd);
                kv_.put(vv + h * hd, kv_.v_at(r.e.seq, layer, h, r.slot0 + r.e.pos), hd);
            }
        }
    });

    const float scale = 1.0f / std::sqrt(float(hd));
    const bool probs = captures_ && captures_->wants(Point::AttnProbs, layer);
    const bool half = kv_.type == KVType::F16;
    pool_.parallel_for(int64_t(n) * n_head, 1, [&](int64_t i0, int64_t i1) {
        std::vector<float> scores(static_cast<size_t>(n_kv_max));
        for (int64_t i = i0; i < i1; i++) {
            const int h = int(i / n), t = int(i % n);
            const Row& r = rows[t];
            const int n_kv = r.e.pos + 1;
            const uint8_t* kp = kv_.k_at(r.e.seq, layer, h, r.slot0);
            const uint8_t* vp = kv_.v_at(r.e.seq, layer, h, r.slot0);
            const float* q = qkv + int64_t(t) * 3 * d + h * hd;
            float* o = out + int64_t(t) * d + h * hd;
            if (half)
                k.attn_head_f16(hd, n_kv, q, reinterpret_cast<const uint16_t*>(kp), reinterpret_cast<const uint16_t*>(vp),
                                hd, scale, scores.data(), o);
            else
                k.attn_head_f32(hd, n_kv, q, reinterpret_cast<const float*>(kp), reinterpret_cast<const float*>(vp), hd,
                                scale, scores.data(), o);
            // every kernel leaves the scores proportional to the probabilities it used
            if (probs) captures_->capture_probs(layer, h, row0 + t, scores.data(), n_kv);
        }
    });
}

}  // namespace phi2cpu
