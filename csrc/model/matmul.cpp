#include "model/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "kernels/dispatch.h"
#include "kernels/ref/ops_ref.h"
#include "platform/platform.h"

namespace phi2cpu {
namespace {

constexpr int kGemmMinTokens = 4;  // below this a batch runs as GEMVs
constexpr int64_t kKChunk = 2048;  // a 16 x 2048 f32 panel (128 KiB) stays in L2
// Decode splits a weight into this many row ranges per thread: each range is one long sequential
// stream for the hardware prefetcher (32-row items left 2-thread decoding 20% slower), and a few
// ranges per thread still even out a thread that falls behind.
constexpr int64_t kGemvItemsPerThread = 4;
constexpr int64_t kGemvRowAlign = 4;    // the multi-row GEMV kernels take rows in fours
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

struct AlignedFree {
    void operator()(float* p) const { os::free_aligned(p); }
};

// A per-thread f32 buffer of at least n floats, 64-byte aligned.
float* thread_buffer(int which, size_t n) {
    thread_local std::unique_ptr<float, AlignedFree> bufs[2];
    thread_local size_t caps[2] = {0, 0};
    if (caps[which] < n) {
        const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
        bufs[which].reset(static_cast<float*>(os::alloc_aligned(64, bytes)));
        caps[which] = n;
    }
    return bufs[which].get();
}

// Weight rows [r0, r0+16) x columns [k0, k0+kc) dequantized to rows[16][kc], then transposed to
// panel[k][16] writing the panel sequentially; rows past the end of W are zero.
void load_panel(const Tensor& W, int64_t r0, int64_t k0, int64_t kc, float* rows, float* panel) {
    const size_t col_offset = size_t(k0 / W.tt->block_size) * W.tt->type_size;
    for (int i = 0; i < kPanelRows; i++) {
        float* row = rows + i * kc;
        if (r0 + i < W.rows)
            W.tt->dequantize(W.row(r0 + i) + col_offset, row, kc);
        else
            std::fill(row, row + kc, 0.0f);
    }
    for (int64_t k = 0; k < kc; k++)
        for (int i = 0; i < kPanelRows; i++) panel[k * kPanelRows + i] = rows[i * kc + k];
}

// Prefill with the type's GEMM kernel: activations are quantized once, exactly as decoding
// quantizes them, and each thread takes a few large row ranges (a kernel may pack its rows into
// panels and prepare per-block activation sums once per call).
void matmul_qgemm(gemm_fn gemm, const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y,
                  int64_t y_stride, ThreadPool& pool, std::vector<uint8_t>& scratch) {
    const Kernels& k = kernels();
    const int64_t K = W.cols;
    const GgmlType act = W.tt->vec_dot_type;
    const size_t qrow = row_bytes(*type_traits(act), K);
    scratch.resize(size_t(n_tok) * qrow);
    uint8_t* xq = scratch.data();
    pool.parallel_for(n_tok, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; t++) k.quantize_activations(act, x + t * K, xq + size_t(t) * qrow, K);
    });
    const int64_t grain = row_grain(W.rows, kQGemmItemsPerThread * pool.size(), kQGemmRowAlign);
    pool.parallel_for(W.rows, grain, [&](int64_t r0, int64_t r1) {
        gemm(K, r1 - r0, W.row(r0), W.row_bytes, n_tok, xq, y + r0, y_stride);
        if (bias)
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t r = r0; r < r1; r++) y[t * y_stride + r] += bias[r];
    });
}

// Batched prefill: every 16-row weight panel is dequantized once and reused for all tokens by the
// register-blocked kernel. Activations are the values the dot kernels would see (Q8_0 or Q8_K
// round trip for quantized weights), so a batch gives the same logits as token-by-token decoding.
void matmul_gemm(const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y, int64_t y_stride,
                 ThreadPool& pool, std::vector<uint8_t>& scratch) {
    const Kernels& k = kernels();
    if (const gemm_fn gemm = k.of(W.tt->type).gemm) {
        matmul_qgemm(gemm, W, bias, x, n_tok, y, y_stride, pool, scratch);
        return;
    }
    const int64_t K = W.cols;
    const float* xa = x;
    if (W.tt->vec_dot_type != GgmlType::F32) {
        const TypeTraits* at = type_traits(W.tt->vec_dot_type);
        const size_t qrow = row_bytes(*at, K);
        scratch.resize(size_t(n_tok) * (qrow + size_t(K) * sizeof(float)));
        float* xf = reinterpret_cast<float*>(scratch.data() + size_t(n_tok) * qrow);
        uint8_t* xq = scratch.data();
        pool.parallel_for(n_tok, 1, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; t++) {
                uint8_t* blocks = xq + size_t(t) * qrow;
                k.quantize_activations(at->type, x + t * K, blocks, K);
                at->dequantize(blocks, xf + t * K, K);
            }
        });
        xa = xf;
    }

    const int64_t n_panels = (W.rows + kPanelRows - 1) / kPanelRows;
    pool.parallel_for(n_panels, 1, [&](int64_t p0, int64_t p1) {
        const int64_t kc_max = std::min(K, kKChunk);
        float* panel = thread_buffer(0, size_t(kc_max) * kPanelRows);
        float* tmp = thread_buffer(1, size_t(kc_max) * kPanelRows + size_t(n_tok) * kPanelRows);
        float* rows = tmp;                                   // (16, kc)
        float* out = tmp + size_t(kc_max) * kPanelRows;      // (n_tok, 16)
        for (int64_t p = p0; p < p1; p++) {
            const int64_t r0 = p * kPanelRows;
            for (int64_t k0 = 0; k0 < K; k0 += kKChunk) {
                const int64_t kc = std::min(kKChunk, K - k0);
                load_panel(W, r0, k0, kc, rows, panel);
                k.gemm_f32_panel16(kc, panel, xa + k0, K, int(n_tok), out, kPanelRows, k0 > 0);
            }
            const int64_t nr = std::min<int64_t>(kPanelRows, W.rows - r0);
            for (int64_t t = 0; t < n_tok; t++)
                for (int64_t i = 0; i < nr; i++)
                    y[t * y_stride + r0 + i] = out[t * kPanelRows + i] + (bias ? bias[r0 + i] : 0.0f);
        }
    });
}

void matmul_gemv(const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y, int64_t y_stride,
                 ThreadPool& pool, std::vector<uint8_t>& scratch) {
    const Kernels& k = kernels();
    const vec_dot_fn dot = k.of(W.tt->type).vec_dot;
    const int64_t n = W.cols;

    const void* act = x;
    size_t act_row_bytes = size_t(n) * sizeof(float);
    if (W.tt->vec_dot_type != GgmlType::F32) {
        act_row_bytes = row_bytes(*type_traits(W.tt->vec_dot_type), n);
        scratch.resize(act_row_bytes * size_t(n_tok));
        uint8_t* q = scratch.data();
        for (int64_t t = 0; t < n_tok; t++)
            k.quantize_activations(W.tt->vec_dot_type, x + t * n, q + size_t(t) * act_row_bytes, n);
        act = q;
    }
    const uint8_t* a = static_cast<const uint8_t*>(act);

    if (const gemv_fn gemv = k.of(W.tt->type).gemv) {
        const int64_t grain = row_grain(W.rows, kGemvItemsPerThread * pool.size(), kGemvRowAlign);
        pool.parallel_for(W.rows, grain, [&](int64_t r0, int64_t r1) {
            for (int64_t t = 0; t < n_tok; t++) {
                float* yt = y + t * y_stride;
                gemv(n, r1 - r0, W.row(r0), W.row_bytes, a + size_t(t) * act_row_bytes, yt + r0);
                if (bias)
                    for (int64_t r = r0; r < r1; r++) yt[r] += bias[r];
            }
        });
        return;
    }
    pool.parallel_for(W.rows, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t t = 0; t < n_tok; t++) {
            const void* xt = a + size_t(t) * act_row_bytes;
            float* yt = y + t * y_stride;
            for (int64_t r = r0; r < r1; r++) yt[r] = dot(n, W.row(r), xt) + (bias ? bias[r] : 0.0f);
        }
    });
}

}  // namespace

void matmul(const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y, int64_t y_stride,
            ThreadPool& pool, std::vector<uint8_t>& scratch) {
    if (n_tok >= kGemmMinTokens)
        matmul_gemm(W, bias, x, n_tok, y, y_stride, pool, scratch);
    else
        matmul_gemv(W, bias, x, n_tok, y, y_stride, pool, scratch);
}

}  // namespace phi2cpu
