// NEON GEMM micro-kernel for prefill. Compiled with -march=armv8.2-a+dotprod.
#include <arm_neon.h>

#include "kernels/arm/ops_arm.h"
#include "kernels/ref/ops_ref.h"

namespace phi2cpu {
namespace {

// C tokens x 16 outputs in 4C accumulators (20 + 4 weight + 5 scalar registers for C = 5, of 32;
// C = 6 would spill): the four
// weight vectors loaded per k are used C times. The loops over tokens are fully unrolled so the
// accumulator array lives in registers.
template <int C>
void tile(int64_t K, const float* panel, const float* x, int64_t ldx, float* y, int64_t ldy, bool accumulate) {
    float32x4_t acc[C][4];
#pragma GCC unroll 8
    for (int c = 0; c < C; c++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) acc[c][j] = accumulate ? vld1q_f32(y + c * ldy + 4 * j) : vdupq_n_f32(0.0f);
    for (int64_t k = 0; k < K; k++) {
        const float* wk = panel + k * kPanelRows;
        const float32x4_t w0 = vld1q_f32(wk), w1 = vld1q_f32(wk + 4), w2 = vld1q_f32(wk + 8), w3 = vld1q_f32(wk + 12);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++) {
            const float xv = x[c * ldx + k];
            acc[c][0] = vfmaq_n_f32(acc[c][0], w0, xv);
            acc[c][1] = vfmaq_n_f32(acc[c][1], w1, xv);
            acc[c][2] = vfmaq_n_f32(acc[c][2], w2, xv);
            acc[c][3] = vfmaq_n_f32(acc[c][3], w3, xv);
        }
    }
#pragma GCC unroll 8
    for (int c = 0; c < C; c++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) vst1q_f32(y + c * ldy + 4 * j, acc[c][j]);
}

}  // namespace

void gemm_f32_panel16_neon(int64_t K, const float* panel, const float* x, int64_t ldx, int n_tok, float* y,
                           int64_t ldy, bool accumulate) {
    int c = 0;
    for (; c + 5 <= n_tok; c += 5) tile<5>(K, panel, x + c * ldx, ldx, y + c * ldy, ldy, accumulate);
    const float* xr = x + c * ldx;
    float* yr = y + c * ldy;
    switch (n_tok - c) {
        case 4: tile<4>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        case 3: tile<3>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        case 2: tile<2>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        case 1: tile<1>(K, panel, xr, ldx, yr, ldy, accumulate); break;
        default: break;
    }
}

}  // namespace phi2cpu
