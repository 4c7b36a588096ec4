#include "model/weights.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>

#include "kernels/dispatch.h"
#include "model/errors.h"

namespace phi2cpu {

MappedFile::MappedFile(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw FileError(path + ": cannot open: " + std::strerror(errno));
    struct stat st;
    if (::fstat(fd, &st) != 0 || st.st_size <= 0) {
        ::close(fd);
        throw FileError(path + ": empty or unreadable file");
    }
    size_ = size_t(st.st_size);
    addr_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (addr_ == MAP_FAILED) {
        addr_ = nullptr;
        throw FileError(path + ": mmap failed: " + std::strerror(errno));
    }
}

void MappedFile::release(const void* p, size_t n) const {
    const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (uintptr_t(p) + page - 1) / page * page, hi = (uintptr_t(p) + n) / page * page;
    if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
    if (addr_) ::munmap(addr_, size_);
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
        if (!tt || (shape.size() == 2 && !kernels().vec_dot_for(tt->type)))
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

// One buffer for all repacked matrices, asking for transparent huge pages: decoding streams every
// weight once per token, and with 4 KiB pages the TLB misses cost a fifth of the 2-thread GEMV
// speed. One buffer wastes at most one partial huge page, not one per matrix.
uint8_t* alloc_huge(size_t bytes) {
    constexpr size_t kHuge = size_t(2) << 20;
    const size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
    void* p = std::aligned_alloc(kHuge, size);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    ::madvise(p, size, MADV_HUGEPAGE);  // a hint: without THP the pages stay small
#endif
    return static_cast<uint8_t*>(p);
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

void Weights::repack(const MappedFile& file, ThreadPool& pool) {
    const Kernels& k = kernels();
    std::vector<Tensor*> todo;
    for (LayerWeights& L : layers)
        for (Tensor* t : {&L.qkv_w, &L.q_w, &L.k_w, &L.v_w, &L.out_w, &L.up_w, &L.down_w}) todo.push_back(t);
    todo.push_back(&output_w);
    todo.erase(std::remove_if(todo.begin(), todo.end(), [&](Tensor* t) { return !*t || !k.repack_for(t->tt->type); }),
               todo.end());
    auto padded = [](const Tensor& t) { return (size_t(t.rows) * t.row_bytes + 63) / 64 * 64; };
    size_t total = 0;
    for (const Tensor* t : todo) total += padded(*t);
    if (total == 0) return;
    uint8_t* dst = alloc_huge(total);
    repacked.reset(dst, std::free);
    for (Tensor* t : todo) {
        const repack_fn fn = k.repack_for(t->tt->type);
        const uint8_t* src = t->data;
        pool.parallel_for(t->rows, 64, [&](int64_t r0, int64_t r1) {
            fn(t->cols, r1 - r0, src + size_t(r0) * t->row_bytes, dst + size_t(r0) * t->row_bytes);
        });
        file.release(src, size_t(t->rows) * t->row_bytes);
        t->data = dst;
        dst += padded(*t);
    }
}

}  // namespace phi2cpu
