#include "model/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/dispatch.h"

namespace phi2cpu {
namespace {

// Decode splits a weight into this many row ranges per thread: each range is one long sequential
// stream for the hardware prefetcher (32-row items left 2-thread decoding 20% slower), and a few
// ranges per thread still even out a thread that falls behind.
constexpr int64_t kGemvItemsPerThread = 4;
constexpr int64_t kGemvRowAlign = 8;    // the multi-row GEMV kernels take rows in fours (Q4_K: eights)
constexpr int64_t kQGemmRowAlign = 32;  // integer GEMM row ranges: whole packed panel groups
// Prefill splits an integer GEMM into this many row ranges per thread. With 2, a 2-thread Q8_0
// prefill kept the cores busy 1.82-1.94x of its wall time, and when one core ran slow the other
// idled at the end of every matmul; with 8, 1.92-1.96x. Each range prepares its own per-block
// activation sums (0.3 ms for a 512 x 10240 input), so the ranges stay coarse.
constexpr int64_t kQGemmItemsPerThread = 8;

// Rows per work item when `rows` are split into about `items` ranges of whole `align`-row groups.
int64_t row_grain(int64_t rows, int64_t items, int64_t align) {
    const int64_t per_item = (rows + items - 1) / items;
    return (per_item + align - 1) / align * align;
}

// Prefill with the type's GEMM kernel: activations are quantized once, exactly as decoding
// quantizes them (F16 / F32 weights take the f32 rows as they are), and each thread takes a few
// large row ranges (a kernel may pack its rows into panels and prepare per-block activation sums
// once per call).
void matmul_qgemm(gemm_fn gemm, const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y,
                  int64_t y_stride, ThreadPool& pool, std::vector<uint8_t>& scratch) {
    const Kernels& k = kernels();
    const int64_t K = W.cols;
    const GgmlType act = W.tt->vec_dot_type;
    const void* xq = x;
    if (act != GgmlType::F32) {
        const size_t qrow = row_bytes(*type_traits(act), K);
        scratch.resize(size_t(n_tok) * qrow);
        uint8_t* q = scratch.data();
        pool.parallel_for(n_tok, 1, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; t++) k.quantize_activations(act, x + t * K, q + size_t(t) * qrow, K);
        });
        xq = q;
    }
    const int64_t grain = row_grain(W.rows, kQGemmItemsPerThread * pool.size(), kQGemmRowAlign);
    pool.parallel_for(W.rows, grain, [&](int64_t r0, int64_t r1) {
        gemm(K, r1 - r0, W.row(r0), W.row_bytes, n_tok, xq, y + r0, y_stride);
        if (bias)
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t r = r0; r < r1; r++) y[t * y_stride + r] += bias[r];
    });
}

// Decoding: up to kGemvMaxTokens tokens through the type's small-batch GEMV, which reads each
// weight block once for all of them. It gives every (row, token) the bits the GEMM would
// (dispatch.h), so where a batch crosses from one kernel to the other changes no output.
void matmul_gemv(gemv_fn gemv, const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y,
                 int64_t y_stride, ThreadPool& pool, std::vector<uint8_t>& scratch) {
    const Kernels& k = kernels();
    const int64_t n = W.cols;
    const void* act = x;
    if (W.tt->vec_dot_type != GgmlType::F32) {
        const size_t qrow = row_bytes(*type_traits(W.tt->vec_dot_type), n);
        scratch.resize(qrow * size_t(n_tok));
        for (int64_t t = 0; t < n_tok; t++)
            k.quantize_activations(W.tt->vec_dot_type, x + t * n, scratch.data() + size_t(t) * qrow, n);
        act = scratch.data();
    }
    const int64_t grain = row_grain(W.rows, kGemvItemsPerThread * pool.size(), kGemvRowAlign);
    pool.parallel_for(W.rows, grain, [&](int64_t r0, int64_t r1) {
        gemv(n, r1 - r0, W.row(r0), W.row_bytes, n_tok, act, y + r0, y_stride);
        if (bias)
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t r = r0; r < r1; r++) y[t * y_stride + r] += bias[r];
    });
}

}  // namespace

void matmul(const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y, int64_t y_stride,
            ThreadPool& pool, std::vector<uint8_t>& scratch) {
    const TypeKernels& row = kernels().of(W.tt->type);
    if (!row.gemv || !row.gemm) throw std::logic_error(std::string("no GEMV/GEMM kernels for ") + W.tt->name);
    if (n_tok <= kGemvMaxTokens)
        matmul_gemv(row.gemv, W, bias, x, n_tok, y, y_stride, pool, scratch);
    else
        matmul_qgemm(row.gemm, W, bias, x, n_tok, y, y_stride, pool, scratch);
}

}  // namespace phi2cpu
