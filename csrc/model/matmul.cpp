#include "model/matmul.h"

#include "kernels/dispatch.h"

namespace phi2cpu {

void matmul(const Tensor& W, const float* bias, const float* x, int64_t n_tok, float* y, int64_t y_stride,
            ThreadPool& pool, std::vector<uint8_t>& scratch) {
    const Kernels& k = kernels();
    const vec_dot_fn dot = k.vec_dot_for(W.tt->type);
    const int64_t n = W.cols;

    const void* act = x;
    size_t act_row_bytes = size_t(n) * sizeof(float);
    if (W.tt->vec_dot_type == GgmlType::Q8_0) {
        act_row_bytes = size_t(n / QK8_0) * sizeof(block_q8_0);
        scratch.resize(act_row_bytes * size_t(n_tok));
        uint8_t* q = scratch.data();
        pool.parallel_for(n_tok, 1, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; t++)
                k.quantize_row_q8_0(x + t * n, reinterpret_cast<block_q8_0*>(q + size_t(t) * act_row_bytes), n);
        });
        act = q;
    }
    const uint8_t* a = static_cast<const uint8_t*>(act);

    // Rows in chunks: each weight row is read once per chunk and reused for every token.
    pool.parallel_for(W.rows, 16, [&](int64_t r0, int64_t r1) {
        for (int64_t t = 0; t < n_tok; t++) {
            const void* xt = a + size_t(t) * act_row_bytes;
            float* yt = y + t * y_stride;
            for (int64_t r = r0; r < r1; r++) yt[r] = dot(n, W.row(r), xt) + (bias ? bias[r] : 0.0f);
        }
    });
}

}  // namespace phi2cpu
