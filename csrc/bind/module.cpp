// pybind11 registration only: argument conversion, GIL release, error translation.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/threadpool.h"
#include "model/errors.h"
#include "model/model.h"
#include "model/repack_cache.h"
#include "quant/traits.h"

namespace py = pybind11;
using namespace phi2cpu;

namespace {

const TypeTraits& traits_or_throw(uint32_t type) {
    const TypeTraits* tt = type_traits(type);
    if (!tt) throw std::invalid_argument("unsupported tensor type id " + std::to_string(type));
    return *tt;
}

// f32 array of shape (..., n) -> uint8 array of shape (..., row_bytes(n)), the GGUF bytes. With
// importance (n weights, one per column) the type's weighted search runs instead. Rows are
// independent, so `threads` workers share them without changing a byte.
py::array_t<uint8_t> quantize(py::array_t<float, py::array::c_style | py::array::forcecast> x, uint32_t type,
                              std::optional<py::array_t<float, py::array::c_style | py::array::forcecast>> importance,
                              int threads) {
    const TypeTraits& tt = traits_or_throw(type);
    if (threads < 1) throw std::invalid_argument("quantize: threads must be at least 1");
    if (importance && !tt.quantize_weighted)
        throw std::invalid_argument(std::string("quantize: ") + tt.name + " has no importance-weighted quantizer");
    if (x.ndim() < 1) throw std::invalid_argument("quantize: need at least one dimension");
    const int64_t n = x.shape(x.ndim() - 1);
    if (n % tt.block_size != 0)
        throw std::invalid_argument(std::string("quantize: row length ") + std::to_string(n) +
                                    " is not a multiple of the " + tt.name + " block size " +
                                    std::to_string(tt.block_size));
    const int64_t rows = n ? x.size() / n : 0;
    const size_t rb = row_bytes(tt, n);
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    shape.back() = py::ssize_t(rb);
    py::array_t<uint8_t> out(shape);
    if (importance && (importance->ndim() != 1 || importance->shape(0) != n))
        throw std::invalid_argument("quantize: importance must hold one weight per column (" + std::to_string(n) + ")");
    const float* src = x.data();
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        const float* imp = importance ? importance->data() : nullptr;
        const auto rows_of = [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; r++) {
                if (imp)
                    tt.quantize_weighted(src + r * n, dst + r * rb, n, imp);
                else
                    tt.quantize(src + r * n, dst + r * rb, n);
            }
        };
        const int workers = int(std::min<int64_t>(threads, rows));
        if (workers <= 1) {
            rows_of(0, rows);
        } else {
            try {
                ThreadPool pool(workers);
                pool.parallel_for(rows, std::max<int64_t>(1, rows / (8 * int64_t(workers))), rows_of);
            } catch (const std::system_error&) {  // no workers could start: the same rows on this thread
                rows_of(0, rows);
            }
        }
    }
    return out;
}

py::array_t<float> dequantize(py::array_t<uint8_t, py::array::c_style | py::array::forcecast> q, uint32_t type, int64_t n) {
    const TypeTraits& tt = traits_or_throw(type);
    if (n <= 0 || n % tt.block_size != 0) throw std::invalid_argument("dequantize: bad row length");
    const size_t rb = row_bytes(tt, n);
    if (size_t(q.size()) % rb != 0) throw std::invalid_argument("dequantize: byte count is not a whole number of rows");
    const int64_t rows = int64_t(size_t(q.size()) / rb);
    py::array_t<float> out({py::ssize_t(rows), py::ssize_t(n)});
    const uint8_t* src = q.data();
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < rows; r++) tt.dequantize(src + r * rb, dst + r * n, n);
    }
    return out;
}

// n GGUF strings (u64 length, UTF-8 bytes) from byte `pos` of buf -> (list of str, end position), or
// (None, -1) when they run past the end. A vocabulary is 100k of them: too many for a Python loop.
py::tuple gguf_strings(const py::buffer& buf, size_t pos, uint64_t n) {
    const py::buffer_info info = buf.request();
    const auto* p = static_cast<const uint8_t*>(info.ptr);
    const size_t size = size_t(info.size * info.itemsize);
    if (n > size / 8) return py::make_tuple(py::none(), -1);  // each string takes 8 bytes at least
    py::list out(n);
    for (uint64_t i = 0; i < n; i++) {
        uint64_t len = 0;
        if (pos > size || size - pos < 8) return py::make_tuple(py::none(), -1);
        std::memcpy(&len, p + pos, 8);
        pos += 8;
        if (len > size - pos) return py::make_tuple(py::none(), -1);
        PyObject* s = PyUnicode_DecodeUTF8(reinterpret_cast<const char*>(p + pos), py::ssize_t(len), nullptr);
        if (!s) throw py::error_already_set();
        PyList_SET_ITEM(out.ptr(), py::ssize_t(i), s);
        pos += len;
    }
    return py::make_tuple(out, py::int_(pos));
}

Config config_from_dict(const py::dict& d) {
    auto get = [&](const char* key) -> py::object {
        if (!d.contains(key)) throw std::invalid_argument(std::string("config is missing ") + key);
        return d[key];
    };
    Config c;
    c.n_vocab = get("n_vocab").cast<int>();
    c.n_embd = get("n_embd").cast<int>();
    c.n_ff = get("n_ff").cast<int>();
    c.n_layer = get("n_layer").cast<int>();
    c.n_head = get("n_head").cast<int>();
    c.n_rot = get("n_rot").cast<int>();
    c.rope_theta = get("rope_theta").cast<float>();
    c.norm_eps = get("norm_eps").cast<float>();
    c.n_ctx_train = get("n_ctx_train").cast<int>();
    return c;
}

KVType kv_type_of(const std::string& name) {
    if (name == "f16") return KVType::F16;
    if (name == "f32") return KVType::F32;
    throw std::invalid_argument("kv_type must be \"f16\" or \"f32\", got \"" + name + "\"");
}

std::unique_ptr<Model> make_model(const std::string& path, const py::dict& config, const py::list& tensors,
                                  int n_ctx, int n_threads, const std::string& repack_cache, int n_seq,
                                  const std::string& kv_type) {
    const Config cfg = config_from_dict(config);
    const KVType kv = kv_type_of(kv_type);
    if (n_seq < 1) throw std::invalid_argument("n_seq must be a positive integer, got " + std::to_string(n_seq));
    std::vector<TensorEntry> entries;
    for (const auto& item : tensors) {
        const auto tup = item.cast<py::tuple>();
        TensorEntry e;
        e.name = tup[0].cast<std::string>();
        e.type = tup[1].cast<uint32_t>();
        e.shape = tup[2].cast<std::vector<int64_t>>();
        e.offset = tup[3].cast<uint64_t>();
        entries.push_back(std::move(e));
    }
    py::gil_scoped_release release;
    try {
        return std::make_unique<Model>(path, cfg, entries, n_ctx, n_threads, repack_cache, n_seq, kv);
    } catch (const std::system_error& e) {  // the thread pool could not start its workers
        throw SetupError(std::string(e.what()) + " (fewer --threads may fit this process's limits)");
    }
}

py::array_t<float> forward(Model& m, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                           bool all_logits) {
    if (tokens.ndim() != 1) throw std::invalid_argument("forward: tokens must be a 1-D sequence");
    const int n = int(tokens.shape(0));
    py::array_t<float> out({py::ssize_t(all_logits ? n : 1), py::ssize_t(m.config().n_vocab)});
    const int32_t* ids = tokens.data();
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        m.forward(ids, n, all_logits, dst);
    }
    return out;
}

using IntArray = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// A batch of entries as four equal-length 1-D arrays -> logits (rows asked for, n_vocab).
py::array_t<float> decode(Model& m, IntArray tokens, IntArray positions, IntArray seqs,
                          py::array_t<bool, py::array::c_style | py::array::forcecast> logits) {
    const py::ssize_t n = tokens.ndim() == 1 ? tokens.shape(0) : -1;
    for (const py::array* a : {static_cast<const py::array*>(&positions), static_cast<const py::array*>(&seqs),
                               static_cast<const py::array*>(&logits)})
        if (n < 0 || a->ndim() != 1 || a->shape(0) != n)
            throw std::invalid_argument("decode: tokens, positions, seqs and logits must be 1-D of one length");
    std::vector<BatchEntry> batch(static_cast<size_t>(n));
    py::ssize_t n_out = 0;
    for (py::ssize_t i = 0; i < n; i++) {
        batch[size_t(i)] = BatchEntry{tokens.data()[i], positions.data()[i], seqs.data()[i], logits.data()[i]};
        n_out += logits.data()[i];
    }
    py::array_t<float> out({n_out, py::ssize_t(m.config().n_vocab)});
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        m.decode(batch.data(), int(n), dst);
    }
    return out;
}

// Appends tokens like forward and returns (residual streams (len(layers), n, n_embd), logits (n, n_vocab) or
// None). Layer 0 is resid_pre.0 (the embeddings), l > 0 resid_post.(l-1).
// An (n, n_vocab) float32 array put in `out`; returns its data.
float* new_logits(int n, int n_vocab, py::object& out) {
    py::array_t<float> l({py::ssize_t(n), py::ssize_t(n_vocab)});
    out = l;
    return l.mutable_data();
}

py::tuple forward_hidden(Model& m, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                         const std::vector<int>& layers, bool want_logits) {
    if (tokens.ndim() != 1) throw std::invalid_argument("forward: tokens must be a 1-D sequence");
    const Config& c = m.config();
    const int n = int(tokens.shape(0));
    py::array_t<float> hidden({py::ssize_t(layers.size()), py::ssize_t(n), py::ssize_t(c.n_embd)});
    Hooks hooks(c);
    for (size_t j = 0; j < layers.size(); j++) {
        const int l = layers[j];
        if (l < 0 || l > c.n_layer)
            throw std::invalid_argument("hidden layer " + std::to_string(l) + " is outside 0.." +
                                        std::to_string(c.n_layer));
        float* dst = hidden.mutable_data() + j * size_t(n) * size_t(c.n_embd);
        hooks.add_capture(l == 0 ? Capture{Point::ResidPre, 0, dst, n, 0} : Capture{Point::ResidPost, l - 1, dst, n, 0});
    }
    py::object logits = py::none();
    float* lp = want_logits ? new_logits(n, c.n_vocab, logits) : nullptr;
    const int32_t* ids = tokens.data();
    {
        py::gil_scoped_release release;
        m.forward(ids, n, true, lp, &hooks);
    }
    return py::make_tuple(hidden, logits);
}

// (point, layer) pairs -> (arrays in that order, logits (n, n_vocab) or None). Each array is
// (n, width), AttnProbs (n_head, n, n_keys). seq_lens packs several sequences into one call.
py::tuple run_with_cache(Model& m, py::array_t<int32_t, py::array::c_style | py::array::forcecast> tokens,
                         const std::vector<std::pair<int, int>>& points, bool want_logits,
                         std::optional<std::vector<int>> seq_lens) {
    if (tokens.ndim() != 1) throw std::invalid_argument("forward: tokens must be a 1-D sequence");
    const Config& c = m.config();
    const int n = int(tokens.shape(0));
    int n_keys = m.n_past() + n;
    if (seq_lens) n_keys = seq_lens->empty() ? 0 : *std::max_element(seq_lens->begin(), seq_lens->end());
    Hooks hooks(c);
    py::list arrays;
    for (const auto& [p, layer] : points) {
        const Point point = Point(p);
        std::vector<py::ssize_t> shape{n, point == Point::MlpPre || point == Point::MlpPost ? c.n_ff : c.n_embd};
        if (point == Point::AttnProbs) shape = {c.n_head, n, std::max(n_keys, 1)};
        py::array_t<float> a(shape);
        std::fill(a.mutable_data(), a.mutable_data() + a.size(), 0.0f);
        hooks.add_capture(Capture{point, layer, a.mutable_data(), n, n_keys});
        arrays.append(a);
    }
    py::object logits = py::none();
    float* lp = want_logits ? new_logits(n, c.n_vocab, logits) : nullptr;
    const int32_t* ids = tokens.data();
    {
        py::gil_scoped_release release;
        m.forward(ids, n, true, lp, &hooks, seq_lens ? &*seq_lens : nullptr);
    }
    return py::make_tuple(arrays, logits);
}

// edits: [(point, layer, op, rows (n_rows, width), positions, column mask or None)]; an empty list clears them.
void set_edits(Model& m, const py::list& edits) {
    if (edits.empty()) return m.set_edits(nullptr);
    auto hooks = std::make_shared<Hooks>(m.config());
    for (const auto& item : edits) {
        const auto t = item.cast<py::tuple>();
        if (t.size() != 6) throw std::invalid_argument("an edit is (point, layer, op, rows, positions, cols)");
        Edit e;
        e.point = Point(t[0].cast<int>());
        e.layer = t[1].cast<int>();
        const int op = t[2].cast<int>();
        if (op < Edit::Add || op > Edit::Set) throw std::invalid_argument("unknown edit op " + std::to_string(op));
        e.op = Edit::Op(op);
        const auto rows = t[3].cast<py::array_t<float, py::array::c_style | py::array::forcecast>>();
        if (rows.ndim() != 2) throw std::invalid_argument("edit rows must be 2-D (n_rows, width)");
        e.n_rows = int(rows.shape(0));
        e.rows.assign(rows.data(), rows.data() + rows.size());
        e.positions = t[4].cast<std::vector<int>>();
        if (!t[5].is_none()) e.cols = t[5].cast<std::vector<uint8_t>>();
        hooks->add_edit(std::move(e));
    }
    m.set_edits(std::move(hooks));
}

py::array_t<float> unembed(Model& m, py::array_t<float, py::array::c_style | py::array::forcecast> x, bool norm) {
    const Config& c = m.config();
    if (x.ndim() != 2 || x.shape(1) != c.n_embd)
        throw std::invalid_argument("unembed: x must be (n, n_embd=" + std::to_string(c.n_embd) + ")");
    const int n = int(x.shape(0));
    py::array_t<float> out({py::ssize_t(n), py::ssize_t(c.n_vocab)});
    if (n == 0) return out;
    const float* src = x.data();
    float* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        m.unembed(src, n, norm, dst);
    }
    return out;
}

py::tuple get_state(const Model& m, int seq) {
    const auto shape = std::vector<py::ssize_t>{m.config().n_layer, m.n_past(seq), m.config().n_embd};
    const py::dtype dt(m.kv_type() == KVType::F16 ? "float16" : "float32");
    py::array k(dt, shape), v(dt, shape);
    m.read_state(seq, k.mutable_data(), v.mutable_data());
    return py::make_tuple(k, v);
}

// k, v: float16 arrays (taken as they are) or anything castable to float32.
void set_state(Model& m, const py::array& k_in, const py::array& v_in, int seq) {
    const Config& c = m.config();
    const bool half = k_in.dtype().kind() == 'f' && k_in.itemsize() == 2;
    if (half != (v_in.dtype().kind() == 'f' && v_in.itemsize() == 2))
        throw std::invalid_argument("state arrays k and v must have one dtype");
    auto contiguous = [&](const py::array& a) -> py::array {
        if (half) return py::array::ensure(a, py::array::c_style);
        return py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(a);
    };
    const py::array k = contiguous(k_in), v = contiguous(v_in);
    for (const auto* a : {&k, &v})
        if (a->ndim() != 3 || a->shape(0) != c.n_layer || a->shape(2) != c.n_embd || a->shape(1) != k.shape(1))
            throw std::invalid_argument("state arrays must both be (n_layer=" + std::to_string(c.n_layer) +
                                        ", n_past, n_embd=" + std::to_string(c.n_embd) + ")");
    m.write_state(seq, int(k.shape(1)), k.data(), v.data(), half ? KVType::F16 : KVType::F32);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "phi2cpu C++ engine";
    m.def("quantize", &quantize, py::arg("x"), py::arg("type"), py::arg("importance") = py::none(),
          py::arg("threads") = 1,
          "Quantize float32 rows (last axis) to GGUF block bytes of the given GGML type id; with importance "
          "(one non-negative weight per column) by the type's importance-weighted search. The rows are "
          "shared by `threads` threads (the bytes do not depend on it).");
    m.def("dequantize", &dequantize, py::arg("data"), py::arg("type"), py::arg("n"),
          "Dequantize GGUF block bytes to float32 rows of length n.");

    // Engine errors become the package's own exception classes.
    const py::module_ errors = py::module_::import("phi2cpu.errors");
    py::register_exception<FileError>(m, "FileError", errors.attr("ModelFileError"));
    py::register_exception<ContextError>(m, "ContextError", errors.attr("ContextFullError"));
    py::register_exception<SetupError>(m, "SetupError", errors.attr("Phi2Error"));

    m.def("gguf_strings", &gguf_strings, py::arg("buf"), py::arg("pos"), py::arg("n"),
          "n GGUF strings from byte pos of buf: (list of str, end position), or (None, -1) past the end.");

    m.def("prune_repack_cache", [](const std::string& dir) {
              py::gil_scoped_release release;
              RepackCache::prune(dir, "");
          }, py::arg("dir"),
          "Delete the repack caches in dir whose model file is gone or changed, and dead writers' temporary files.");

    m.def("isa", [] { return py::make_tuple(kernels().isa, kernels().reason); },
          "The kernel path in use and why it was chosen.");
    m.def("available_isas", &available_isas, "Kernel paths this build has and this CPU runs.");
    m.def("types", [] {
              py::list out;
              for (const TypeTraits& tt : all_type_traits()) {
                  py::dict d;
                  d["id"] = uint32_t(tt.type);
                  d["name"] = tt.name;
                  d["block_size"] = tt.block_size;
                  d["type_size"] = tt.type_size;
                  d["weight"] = kernels().of(tt.type).vec_dot != nullptr;
                  d["activations"] = type_traits(tt.vec_dot_type)->name;
                  d["weighted"] = tt.quantize_weighted != nullptr;
                  out.append(d);
              }
              return out;
          }, "The tensor types the engine knows, in id order: id, name, block_size, type_size, weight (matrices may "
             "have it), activations (the type a matrix's input is quantized to), weighted (it has an importance-weighted "
             "quantizer).");

    py::class_<Model>(m, "Model")
        .def(py::init(&make_model), py::arg("path"), py::arg("config"), py::arg("tensors"), py::arg("n_ctx"),
             py::arg("n_threads"), py::arg("repack_cache") = "", py::arg("n_seq") = 1, py::arg("kv_type") = "f16",
             "Map a GGUF file. tensors: [(name, ggml_type, numpy_shape, absolute_offset)]. repack_cache: "
             "the folder of repack cache files (\"\": repack into memory). n_seq sequences get a KV cache of "
             "n_ctx positions each, stored as kv_type (\"f16\" or \"f32\").")
        .def("decode", &decode, py::arg("tokens"), py::arg("positions"), py::arg("seqs"), py::arg("logits"),
             "Run a batch of entries (token, position, sequence, wants logits) of any sequences; each sequence's "
             "positions continue it without gaps. float32 logits (entries with logits, n_vocab).")
        .def("forward", &forward, py::arg("tokens"), py::arg("all_logits") = false,
             "Append tokens to the KV cache; float32 logits (n or 1, n_vocab).")
        .def("forward_hidden", &forward_hidden, py::arg("tokens"), py::arg("layers"), py::arg("logits") = false,
             "Append tokens; (residual streams (len(layers), n, n_embd), logits (n, n_vocab) or None). "
             "Layer 0 is the token embeddings, l the residual stream after layer l.")
        .def("run_with_cache", &run_with_cache, py::arg("tokens"), py::arg("points"), py::arg("logits") = true,
             py::arg("seq_lens") = py::none(),
             "Append tokens (or, with seq_lens, run packed sequences from an empty cache and empty it again); "
             "(captured arrays in the order of points [(point, layer)], logits (n, n_vocab) or None).")
        .def("set_edits", &set_edits, py::arg("edits"),
             "Edits applied in every forward until replaced: [(point, layer, op, rows, positions, cols)]; "
             "[] clears them.")
        .def_property_readonly("has_edits", &Model::has_edits)
        .def("unembed", &unembed, py::arg("x"), py::arg("norm") = true,
             "Final LayerNorm (when norm) and lm_head on residual rows (n, n_embd) -> logits (n, n_vocab).")
        .def("get_state", &get_state, py::arg("seq") = 0,
             "The KV cache of a sequence's cached positions: (k, v), each (n_layer, n_past, n_embd), float16 or "
             "float32 as the cache stores them.")
        .def("set_state", &set_state, py::arg("k"), py::arg("v"), py::arg("seq") = 0,
             "Replace a sequence's KV cache with get_state's arrays (float16 or float32; converted to the cache type).")
        .def("reset", &Model::reset, py::arg("seq") = 0)
        .def("truncate", &Model::truncate, py::arg("n"), py::arg("seq") = 0)
        .def("copy_seq", &Model::copy_seq, py::arg("src"), py::arg("dst"), py::arg("n"),
             "Sequence dst gets the first n cached positions of src.")
        .def("seq_n_past", &Model::n_past, py::arg("seq"))
        .def_property_readonly("n_seq", &Model::n_seq)
        .def_property_readonly("kv_type", [](const Model& m) { return m.kv_type() == KVType::F16 ? "f16" : "f32"; })
        .def("check_files", &Model::check_files,
             "Raises FileError once the model file or its repack cache changed under the mapping.")
        .def_property_readonly("n_past", [](const Model& m) { return m.n_past(0); })
        .def_property_readonly("n_ctx", &Model::n_ctx)
        .def_property_readonly("n_threads", &Model::n_threads)
        .def_property_readonly("repack_report", [](const Model& m) {
            const RepackReport& r = m.repack_report();
            py::dict d;
            d["weights"] = r.weights;
            d["cache_path"] = r.cache_path;
            d["note"] = r.note;
            d["bytes"] = r.bytes;
            d["huge_bytes"] = r.huge_bytes;
            return d;
        }, "How the load placed the repacked matrices: weights (file | memory | cache | cache-written), "
           "cache_path, note (why no cache was used), bytes, huge_bytes (on huge pages; -1 unknown).");
}
