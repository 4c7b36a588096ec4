// AVX2 + FMA GEMM micro-kernel for prefill. Compiled with -mavx2 -mfma.
#include <immintrin.h>

#include "kernels/ref/ops_ref.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {
namespace {

// 6 tokens x 16 outputs in 12 named accumulators (+ 2 weight + 1 broadcast = 15 of 16 registers):
// each pair of weight vectors loaded per k is used 6 times. Named variables, because GCC keeps an
// accumulator array in memory and spills every iteration.
void tile6(int64_t K, const float* panel, const float* x, int64_t ldx, float* y, int64_t ldy, bool accumulate) {
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx, *x4 = x + 4 * ldx, *x5 = x + 5 * ldx;
    __m256 a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51;
    if (accumulate) {
        a00 = _mm256_loadu_ps(y), a01 = _mm256_loadu_ps(y + 8);
        a10 = _mm256_loadu_ps(y + ldy), a11 = _mm256_loadu_ps(y + ldy + 8);
        a20 = _mm256_loadu_ps(y + 2 * ldy), a21 = _mm256_loadu_ps(y + 2 * ldy + 8);
        a30 = _mm256_loadu_ps(y + 3 * ldy), a31 = _mm256_loadu_ps(y + 3 * ldy + 8);
        a40 = _mm256_loadu_ps(y + 4 * ldy), a41 = _mm256_loadu_ps(y + 4 * ldy + 8);
        a50 = _mm256_loadu_ps(y + 5 * ldy), a51 = _mm256_loadu_ps(y + 5 * ldy + 8);
    } else {
        a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = a40 = a41 = a50 = a51 = _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        const __m256 w0 = _mm256_load_ps(panel + k * kPanelRows);
        const __m256 w1 = _mm256_load_ps(panel + k * kPanelRows + 8);
        __m256 b = _mm256_broadcast_ss(x0 + k);
        a00 = _mm256_fmadd_ps(w0, b, a00), a01 = _mm256_fmadd_ps(w1, b, a01);
        b = _mm256_broadcast_ss(x1 + k);
        a10 = _mm256_fmadd_ps(w0, b, a10), a11 = _mm256_fmadd_ps(w1, b, a11);
        b = _mm256_broadcast_ss(x2 + k);
        a20 = _mm256_fmadd_ps(w0, b, a20), a21 = _mm256_fmadd_ps(w1, b, a21);
        b = _mm256_broadcast_ss(x3 + k);
        a30 = _mm256_fmadd_ps(w0, b, a30), a31 = _mm256_fmadd_ps(w1, b, a31);
        b = _mm256_broadcast_ss(x4 + k);
        a40 = _mm256_fmadd_ps(w0, b, a40), a41 = _mm256_fmadd_ps(w1, b, a41);
        b = _mm256_broadcast_ss(x5 + k);
        a50 = _mm256_fmadd_ps(w0, b, a50), a51 = _mm256_fmadd_ps(w1, b, a51);
    }
    _mm256_storeu_ps(y, a00), _mm256_storeu_ps(y + 8, a01);
    _mm256_storeu_ps(y + ldy, a10), _mm256_storeu_ps(y + ldy + 8, a11);
    _mm256_storeu_ps(y + 2 * ldy, a20), _mm256_storeu_ps(y + 2 * ldy + 8, a21);
    _mm256_storeu_ps(y + 3 * ldy, a30), _mm256_storeu_ps(y + 3 * ldy + 8, a31);
    _mm256_storeu_ps(y + 4 * ldy, a40), _mm256_storeu_ps(y + 4 * ldy + 8, a41);
    _mm256_storeu_ps(y + 5 * ldy, a50), _mm256_storeu_ps(y + 5 * ldy + 8, a51);
}

// The last 1..5 tokens of a batch.
template <int C>
void tile(int64_t K, const float* panel, const float* x, int64_t ldx, float* y, int64_t ldy, bool accumulate) {
    __m256 acc[C][2];
    for (int c = 0; c < C; c++) {
        acc[c][0] = accumulate ? _mm256_loadu_ps(y + c * ldy) : _mm256_setzero_ps();
        acc[c][1] = accumulate ? _mm256_loadu_ps(y + c * ldy + 8) : _mm256_setzero_ps();
    }
    for (int64_t k = 0; k < K; k++) {
        const __m256 w0 = _mm256_load_ps(panel + k * kPanelRows);
        const __m256 w1 = _mm256_load_ps(panel + k * kPanelRows + 8);
        for (int c = 0; c < C; c++) {
            const __m256 xb = _mm256_broadcast_ss(x + c * ldx + k);
            acc[c][0] = _mm256_fmadd_ps(w0, xb, acc[c][0]);
            acc[c][1] = _mm256_fmadd_ps(w1, xb, acc[c][1]);
        }
    }
    for (int c = 0; c < C; c++) {
        _mm256_storeu_ps(y + c * ldy, acc[c][0]);
        _mm256_storeu_ps(y + c * ldy + 8, acc[c][1]);
    }
}

}  // namespace

// panel must be 32-byte aligned.
void gemm_f32_panel16_avx2(int64_t K, const float* panel, const float* x, int64_t ldx, int n_tok, float* y,
                           int64_t ldy, bool accumulate) {
    int c = 0;
    for (; c + 6 <= n_tok; c += 6) tile6(K, panel, x + c * ldx, ldx, y + c * ldy, ldy, accumulate);
    const float* xr = x + c * ldx;
    float* yr = y + c * ldy;
    switch (n_tok - c) {
        case 5: tile<5>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        case 4: tile<4>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        case 3: tile<3>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        case 2: tile<2>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        case 1: tile<1>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        default: break;
    }
}

}  // namespace phi2cpu
