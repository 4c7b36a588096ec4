#include "model/weights.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/dispatch.h"
#include "model/errors.h"
#include "model/fault_guard.h"
#include "model/pages.h"
#include "model/repack_cache.h"

namespace phi2cpu {

MappedFile::MappedFile(const std::string& path) : path_(path), file_(path, os::File::kRead) {
    if (!file_.is_open()) throw FileError(path + ": cannot open: " + std::strerror(errno));
    if (!file_.id(id_) || id_.size == 0) throw FileError(path + ": empty or unreadable file");
    size_ = size_t(id_.size);
    addr_ = os::map_file(file_, 0, size_);
    if (!addr_) throw FileError(path + ": mmap failed: " + std::strerror(errno));
    guard_mapping(addr_, size_);
}

std::string MappedFile::changed() const {
    Identity now;
    if (!file_.id(now)) return path_ + ": cannot stat the file in use: " + std::strerror(errno);
    if (mapping_faulted(addr_) || now.size < id_.size)
        return path_ + ": the file shrank while in use (truncated?): load it again";
    if (now.size != id_.size || now.mtime_ns != id_.mtime_ns)
        return path_ + ": the file was modified in place while in use: load it again";
    return "";
}

void MappedFile::release(const void* p, size_t n) const { drop_pages(p, n); }

MappedFile::~MappedFile() {
    unguard_mapping(addr_);
    os::unmap_file(addr_, size_);
}

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); i++) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
}

class Binder {
public:
    Binder(const MappedFile& f, const std::vector<TensorEntry>& entries) : file_(f) {
        for (const auto& e : entries) by_name_[e.name] = &e;
    }

    bool has(const std::string& name) const { return by_name_.count(name) != 0; }

    // shape is numpy order: {rows, cols} for matrices, {n} for vectors.
    Tensor get(const std::string& name, std::vector<int64_t> shape) const {
        auto it = by_name_.find(name);
        if (it == by_name_.end()) throw FileError(file_.path() + ": missing tensor " + name);
        const TensorEntry& e = *it->second;
        if (e.shape != shape)
            throw FileError(file_.path() + ": tensor " + name + " has shape " + shape_str(e.shape) +
                            ", expected " + shape_str(shape));
        const TypeTraits* tt = type_traits(e.type);
        if (!tt || (shape.size() == 2 && !kernels().of(tt->type).vec_dot))
            throw FileError(file_.path() + ": tensor " + name + " has unsupported type " +
                            (tt ? std::string(tt->name) : "id " + std::to_string(e.type)));
        Tensor t;
        t.tt = tt;
        t.rows = shape.size() == 2 ? shape[0] : 1;
        t.cols = shape.back();
        if (t.cols % tt->block_size != 0)
            throw FileError(file_.path() + ": tensor " + name + " row length " + std::to_string(t.cols) +
                            " is not a multiple of the " + tt->name + " block size");
        t.row_bytes = row_bytes(*tt, t.cols);
        const uint64_t nbytes = uint64_t(t.rows) * t.row_bytes;
        if (e.offset > file_.size() || nbytes > file_.size() - e.offset)
            throw FileError(file_.path() + ": tensor " + name + " runs past the end of the file (truncated?)");
        t.data = file_.data() + e.offset;
        return t;
    }

    Vec vec(const std::string& name, int64_t n) const {
        const Tensor t = get(name, {n});
        Vec out(static_cast<size_t>(n));
        t.tt->dequantize(t.data, out.data(), n);
        return out;
    }

private:
    const MappedFile& file_;
    std::map<std::string, const TensorEntry*> by_name_;
};

// A cache mapped on small pages (its filesystem keeps 4 KiB page-cache pages) would cost decoding
// the TLB misses the huge pages avoid: copy it to huge-page memory then, when the OS has THP.
void copy_if_small_pages(std::shared_ptr<uint8_t>& repacked, ThreadPool& pool, RepackReport& rep) {
    const int64_t huge = huge_page_bytes(repacked.get());
    if (huge < 0 || size_t(huge) >= rep.bytes / 2 || !anon_huge_pages_possible()) return;
    const std::shared_ptr<uint8_t> cache = repacked;
    std::shared_ptr<uint8_t> copy = alloc_huge(rep.bytes);
    const uint8_t* src = repacked.get();
    pool.parallel_for(int64_t((rep.bytes + kHugePage - 1) / kHugePage), 1, [&](int64_t c0, int64_t c1) {
        const size_t lo = size_t(c0) * kHugePage, hi = std::min(rep.bytes, size_t(c1) * kHugePage);
        std::memcpy(copy.get() + lo, src + lo, hi - lo);
        drop_pages(src + lo, hi - lo);  // so the copy does not double the resident size
    });
    if (mapping_faulted(cache.get())) throw FileError(rep.cache_path + ": the repack cache shrank while being read");
    repacked = copy;
    rep.note = "the cache's pages are not huge pages here: copied to huge-page memory";
}

}  // namespace

Weights Weights::bind(const MappedFile& file, const Config& c, const std::vector<TensorEntry>& entries) {
    const Binder b(file, entries);
    const int64_t d = c.n_embd, ff = c.n_ff, nv = c.n_vocab;
    Weights w;
    w.token_embd = b.get("token_embd.weight", {nv, d});
    w.output_norm_w = b.vec("output_norm.weight", d);
    w.output_norm_b = b.vec("output_norm.bias", d);
    w.output_w = b.get("output.weight", {nv, d});
    w.output_b = b.vec("output.bias", nv);
    w.layers.resize(size_t(c.n_layer));
    for (int i = 0; i < c.n_layer; i++) {
        const std::string p = "blk." + std::to_string(i) + ".";
        LayerWeights& L = w.layers[size_t(i)];
        L.attn_norm_w = b.vec(p + "attn_norm.weight", d);
        L.attn_norm_b = b.vec(p + "attn_norm.bias", d);
        if (b.has(p + "attn_qkv.weight")) {
            L.qkv_w = b.get(p + "attn_qkv.weight", {3 * d, d});
            L.qkv_b = b.vec(p + "attn_qkv.bias", 3 * d);
        } else {
            L.q_w = b.get(p + "attn_q.weight", {d, d});
            L.q_b = b.vec(p + "attn_q.bias", d);
            L.k_w = b.get(p + "attn_k.weight", {d, d});
            L.k_b = b.vec(p + "attn_k.bias", d);
            L.v_w = b.get(p + "attn_v.weight", {d, d});
            L.v_b = b.vec(p + "attn_v.bias", d);
        }
        L.out_w = b.get(p + "attn_output.weight", {d, d});
        L.out_b = b.vec(p + "attn_output.bias", d);
        L.up_w = b.get(p + "ffn_up.weight", {ff, d});
        L.up_b = b.vec(p + "ffn_up.bias", ff);
        L.down_w = b.get(p + "ffn_down.weight", {d, ff});
        L.down_b = b.vec(p + "ffn_down.bias", d);
    }
    return w;
}

void repack_matrix(const Tensor& t, uint8_t* dst, const MappedFile& file, ThreadPool& pool) {
    const repack_fn fn = kernels().of(t.tt->type).repack;
    pool.parallel_for(t.rows, 64, [&](int64_t r0, int64_t r1) {  // 64 rows: whole 4- and 8-row groups
        fn(t.cols, r1 - r0, t.data + size_t(r0) * t.row_bytes, dst + size_t(r0) * t.row_bytes);
    });
    file.release(t.data, size_t(t.rows) * t.row_bytes);
}

RepackReport Weights::repack(const MappedFile& file, ThreadPool& pool, const std::string& cache_dir) {
    const Kernels& k = kernels();
    std::vector<Tensor*> todo;
    for (LayerWeights& L : layers)
        for (Tensor* t : {&L.qkv_w, &L.q_w, &L.k_w, &L.v_w, &L.out_w, &L.up_w, &L.down_w}) todo.push_back(t);
    todo.push_back(&output_w);
    todo.erase(std::remove_if(todo.begin(), todo.end(), [&](Tensor* t) { return !*t || !k.of(t->tt->type).repack; }),
               todo.end());
    RepackReport rep;
    if (todo.empty()) return rep;
    // One buffer for all matrices (or one cache mapping): at most one partial huge page is wasted.
    std::vector<size_t> offsets;
    if (!cache_dir.empty()) {
        const RepackCache cache(cache_dir, file, todo);
        std::string why;
        repacked = cache.open(pool, why);
        rep.weights = "cache";
        if (!repacked) {
            rep.weights = "cache-written";
            rep.note = why;  // why it is written: none yet, or the old one was not valid
            if (cache.write(pool, why)) {
                repacked = cache.open(pool, why);
                RepackCache::prune(cache_dir, cache.path());
            }
        }
        if (repacked) {
            if (rep.weights == "cache") rep.note = why;
            rep.cache_path = cache.path();
            for (size_t i = 0; i < todo.size(); i++) offsets.push_back(cache.offset(i));
            rep.bytes = cache.data_bytes();
            copy_if_small_pages(repacked, pool, rep);
        } else {
            rep.note = why;
        }
    }
    if (!repacked) {
        rep.weights = "memory";
        rep.bytes = 0;
        for (const Tensor* t : todo) {
            offsets.push_back(rep.bytes);
            rep.bytes += round_up(size_t(t->rows) * t->row_bytes, 64);
        }
        repacked = alloc_huge(rep.bytes);
        for (size_t i = 0; i < todo.size(); i++) repack_matrix(*todo[i], repacked.get() + offsets[i], file, pool);
    }
    for (size_t i = 0; i < todo.size(); i++) todo[i]->data = repacked.get() + offsets[i];
    rep.huge_bytes = huge_page_bytes(repacked.get());
    return rep;
}

}  // namespace phi2cpu
