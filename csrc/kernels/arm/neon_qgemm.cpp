// NEON + dot-product integer GEMM for prefill: Q4_0 / Q8_0 weights (GGUF blocks as stored) times
// Q8_0 activation rows. Compiled with -march=armv8.2-a+dotprod.
//
// A tile is 4 weight rows x 4 tokens. Per block, each row's quants are loaded (Q4_0: and unpacked to
// signed bytes) once and meet the 4 tokens, and each token's quants meet the 4 rows: 32 SDOTs for 8
// weight and 8 activation loads, where a row-by-row loop of dots loads both sides for every pair.
// Three pairwise adds fold a row's 4 SDOT sums into one vector, lane t for token t, scaled there by
// d_w * d_x[t] with one fma per block: the order of every Q4_0 / Q8_0 kernel (dispatch.h), so rows
// and tokens past the last whole tile, which go through the one-row dot, get the same bits as a tile.
#include <arm_neon.h>

#include "kernels/arm/ops_arm.h"
#include "kernels/arm/simd_neon.h"
#include "quant/fp16.h"

namespace phi2cpu {
namespace {

constexpr int kRows = 4, kTok = 4;

// Block b of a weight row as two signed 16-byte halves (quants 0..15 and 16..31) and its scale.
inline void weight_block(const block_q8_0* row, int64_t b, int8x16_t& lo, int8x16_t& hi, float& d) {
    lo = vld1q_s8(row[b].qs);
    hi = vld1q_s8(row[b].qs + 16);
    d = fp16_to_fp32(row[b].d);
}
inline void weight_block(const block_q4_0* row, int64_t b, int8x16_t& lo, int8x16_t& hi, float& d) {
    arm::unpack_q4_0(row[b], lo, hi);
    d = fp16_to_fp32(row[b].d);
}

// y[t*ldy + i] = dot(row i, token t) for 4 rows (row_bytes apart) and 4 tokens (nb blocks apart).
template <typename Block>
void tile(int64_t nb, const uint8_t* w, size_t row_bytes, const block_q8_0* x, float* y, int64_t ldy) {
    float32x4_t acc[kRows];
    for (int i = 0; i < kRows; i++) acc[i] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t xl[kTok], xh[kTok];
        float dx[kTok];
        for (int t = 0; t < kTok; t++) {
            const block_q8_0& xb = x[t * nb + b];
            xl[t] = vld1q_s8(xb.qs);
            xh[t] = vld1q_s8(xb.qs + 16);
            dx[t] = fp16_to_fp32(xb.d);
        }
        const float32x4_t vdx = vld1q_f32(dx);
        for (int i = 0; i < kRows; i++) {
            int8x16_t wl, wh;
            float dw;
            weight_block(reinterpret_cast<const Block*>(w + size_t(i) * row_bytes), b, wl, wh, dw);
            int32x4_t s[kTok];
            for (int t = 0; t < kTok; t++) s[t] = vdotq_s32(vdotq_s32(vdupq_n_s32(0), wl, xl[t]), wh, xh[t]);
            const int32x4_t sums = vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
            acc[i] = vfmaq_f32(acc[i], vcvtq_f32_s32(sums), vmulq_n_f32(vdx, dw));
        }
    }
    for (int i = 0; i < kRows; i++) {
        float out[kTok];
        vst1q_f32(out, acc[i]);
        for (int t = 0; t < kTok; t++) y[t * ldy + i] = out[t];
    }
}

template <typename Block, float (*Dot)(int64_t, const void*, const void*)>
void gemm_tiles(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
                int64_t ldy) {
    const int64_t nb = K / QK8_0;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    const int64_t r4 = n_rows / kRows * kRows, t4 = n_tok / kTok * kTok;
    for (int64_t r = 0; r < r4; r += kRows)  // a 4-row panel stays in cache while the tokens pass
        for (int64_t t = 0; t < t4; t += kTok)
            tile<Block>(nb, wb + size_t(r) * row_bytes, row_bytes, xb + t * nb, y + t * ldy + r, ldy);
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = t < t4 ? r4 : 0; r < n_rows; r++)
            y[t * ldy + r] = Dot(K, wb + size_t(r) * row_bytes, xb + t * nb);
}

}  // namespace

void gemm_q8_0_q8_0_neon(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_tiles<block_q8_0, vec_dot_q8_0_q8_0_neon>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q4_0_q8_0_neon(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_tiles<block_q4_0, vec_dot_q4_0_q8_0_neon>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
