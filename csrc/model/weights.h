// The model file mapped into memory and typed views of its tensors. Matrices are read in place,
// unless their type's kernel row has a load-time repack: then they are read from a
// repack cache file (model/repack_cache.h) or move to owned memory in the kernels' layout, and the
// file pages they came from are released.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/threadpool.h"
#include "model/config.h"
#include "platform/platform.h"
#include "quant/traits.h"

namespace phi2cpu {

// Where a tensor lies in the file (given by the Python GGUF reader).
struct TensorEntry {
    std::string name;
    uint32_t type;
    std::vector<int64_t> shape;  // numpy order: rows first
    uint64_t offset;             // absolute byte offset in the file
};

// A weight of shape (rows, cols): `rows` rows of `cols` elements, row r at data + r*row_bytes.
struct Tensor {
    const TypeTraits* tt = nullptr;
    int64_t rows = 0, cols = 0;
    size_t row_bytes = 0;
    const uint8_t* data = nullptr;

    const uint8_t* row(int64_t r) const { return data + size_t(r) * row_bytes; }
    explicit operator bool() const { return data != nullptr; }
};

class MappedFile {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }
    // What the file was when it was mapped: a repack cache is valid only for this exact file.
    using Identity = os::FileId;
    const Identity& identity() const { return id_; }
    // Drops the resident pages lying wholly inside [p, p + n) (a later read maps them in again).
    void release(const void* p, size_t n) const;
    // "" while the file is as it was mapped; else why its mapped bytes can no longer be trusted (a
    // read found a page gone, or the file's size or modification time changed: truncated or
    // rewritten in place). Replacing the file by a rename leaves this mapping intact.
    std::string changed() const;

private:
    std::string path_;
    os::File file_;  // kept open: its id tells whether the mapped file changed
    void* addr_ = nullptr;
    size_t size_ = 0;
    Identity id_;
};

// Matrices stay in the mapped file (or move to owned memory when repacked); norms and biases are
// small and copied out as f32.
using Vec = std::vector<float>;

struct LayerWeights {
    Vec attn_norm_w, attn_norm_b;     // (n_embd)
    Tensor qkv_w; Vec qkv_b;          // (3 n_embd, n_embd), (3 n_embd): rows q, k, v  -- or, when
    Tensor q_w, k_w, v_w;             //   the file keeps them apart, (n_embd, n_embd) each, with
    Vec q_b, k_b, v_b;                //   (n_embd) biases
    Tensor out_w; Vec out_b;          // (n_embd, n_embd), (n_embd)
    Tensor up_w; Vec up_b;            // (n_ff, n_embd), (n_ff)
    Tensor down_w; Vec down_b;        // (n_embd, n_ff), (n_embd)
};

// Writes matrix t (read from file) in its type's repacked layout (its kernel row's repack) to dst, in
// parallel, then releases the file pages it came from.
void repack_matrix(const Tensor& t, uint8_t* dst, const MappedFile& file, ThreadPool& pool);

// How Weights::repack placed the matrices.
struct RepackReport {
    std::string weights = "file";  // "file": read in place (nothing to repack); "memory": repacked into
                                   // owned memory; "cache": mapped from a valid repack cache;
                                   // "cache-written": repacked into a new cache file, then mapped
    std::string cache_path;        // the cache file used, or "" when none
    std::string note;              // why the cache was not used or was (re)written, or that it was
                                   // copied to owned memory; "" when a valid cache served as it is
    size_t bytes = 0;              // repacked bytes
    int64_t huge_bytes = -1;       // of those, bytes on huge pages (-1: the OS does not say)
};

struct Weights {
    Tensor token_embd;                // (n_vocab, n_embd)
    std::vector<LayerWeights> layers; // n_layer
    Vec output_norm_w, output_norm_b; // (n_embd)
    Tensor output_w; Vec output_b;    // (n_vocab, n_embd), (n_vocab)
    std::shared_ptr<uint8_t> repacked;  // the repacked matrices: one owned buffer, or a cache mapping

    // Resolves every tensor Phi-2 needs, checking type, shape and bounds; throws FileError.
    static Weights bind(const MappedFile& file, const Config& cfg, const std::vector<TensorEntry>& entries);
    // Moves every matrix whose type the kernel path repacks (all but token_embd, which is read by
    // row for lookups) into that layout, releasing the file pages behind it. With a cache folder, the
    // matrices come from a valid cache file there, or one is written; any failure to read or write
    // the cache falls back to repacking into owned memory.
    RepackReport repack(const MappedFile& file, ThreadPool& pool, const std::string& cache_dir = "");
};

}  // namespace phi2cpu
