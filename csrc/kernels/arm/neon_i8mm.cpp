// NEON + i8mm integer GEMM for prefill: Q4_0 / Q8_0 weights (GGUF blocks as stored) times Q8_0
// activation rows. Compiled with -march=armv8.2-a+dotprod+i8mm; picked only where the OS reports
// FEAT_I8MM (the neon_i8mm path).
//
// One SMMLA multiplies a 2x8 matrix of signed bytes by the transpose of another: each of its four
// int32 lanes gains an exact 8-product dot, lane 2i+j for row i of the first operand and row j of
// the second. The operands hold 8 quants of 2 weight rows and the same 8 quants of 2 tokens, so
// four SMMLAs over a 32-quant block leave a 2-row x 2-token tile's exact block sums
// (r0t0, r0t1, r1t0, r1t1), which is then scaled by d_w * d_x with one fma per lane: the order of
// every Q4_0 / Q8_0 kernel (dispatch.h). The 8-byte interleave is made in registers by 64-bit zips
// of the 16-byte block halves (no repack: gemv and vec_dot keep reading the GGUF blocks).
//
// A tile is 8 weight rows x 4 tokens (4 x 2 SMMLA tiles, 8 float accumulators). Per 32-quant block:
//   this kernel     32 SMMLA, 8 activation + 16 (Q8_0) or 8 (Q4_0) weight loads, 24 (16) zips
//   dotprod kernel  64 SDOT, 16 activation + 16 (Q8_0) or 8 (Q4_0) weight loads, 24 pairwise adds
//                   (twice its 4x4 tile, for the same 32 outputs)
// docs/how-it-works.md gives the compiled instruction counts and the speed-up they predict.
#include <arm_neon.h>

#include <utility>

#include "kernels/arm/ops_arm.h"

namespace phi2cpu {
namespace {

inline int8x16_t zip_lo64(int8x16_t a, int8x16_t b) {
    return vreinterpretq_s8_s64(vzip1q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}
inline int8x16_t zip_hi64(int8x16_t a, int8x16_t b) {
    return vreinterpretq_s8_s64(vzip2q_s64(vreinterpretq_s64_s8(a), vreinterpretq_s64_s8(b)));
}

// The 32 quants of two blocks a and c (two rows' or two tokens') as SMMLA operands: m[k] holds
// quants 8k..8k+7 of a, then the same of c.
inline void operands(const block_q8_0& a, const block_q8_0& c, int8x16_t m[4]) {
    const int8x16_t al = vld1q_s8(a.qs), ah = vld1q_s8(a.qs + 16), cl = vld1q_s8(c.qs), ch = vld1q_s8(c.qs + 16);
    m[0] = zip_lo64(al, cl);
    m[1] = zip_hi64(al, cl);
    m[2] = zip_lo64(ah, ch);
    m[3] = zip_hi64(ah, ch);
}
// Q4_0: byte j holds quant j (low nibble) and quant j + 16 (high nibble), so one zip of the raw
// bytes interleaves two chunks at once; the nibbles become signed (q - 8) after it.
inline void operands(const block_q4_0& a, const block_q4_0& c, int8x16_t m[4]) {
    const uint8x16_t qa = vld1q_u8(a.qs), qc = vld1q_u8(c.qs);
    const uint8x16_t z0 = vreinterpretq_u8_u64(vzip1q_u64(vreinterpretq_u64_u8(qa), vreinterpretq_u64_u8(qc)));
    const uint8x16_t z1 = vreinterpretq_u8_u64(vzip2q_u64(vreinterpretq_u64_u8(qa), vreinterpretq_u64_u8(qc)));
    const uint8x16_t lo = vdupq_n_u8(0x0f);
    const int8x16_t eight = vdupq_n_s8(8);
    m[0] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(z0, lo)), eight);
    m[1] = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(z1, lo)), eight);
    m[2] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(z0, 4)), eight);
    m[3] = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(z1, 4)), eight);
}

// The fp16 scales of the blocks at p[0..N) in lanes 0..N-1. The caller widens them with FCVTL,
// exact and equal to fp16_to_fp32 for every number (the scalar dots' conversion).
template <int L>
inline uint16x8_t load_lane(const uint16_t* p, uint16x8_t v) {
    return vld1q_lane_u16(p, v, L);
}
template <typename Block, size_t... I>
inline uint16x8_t gather_scales(const Block* const* p, std::index_sequence<I...>) {
    uint16x8_t v = vdupq_n_u16(0);
    ((v = load_lane<int(I)>(&p[I]->d, v)), ...);
    return v;
}

// (s[2i], s[2i], s[2i+1], s[2i+1]) and (s[2j], s[2j+1], s[2j], s[2j+1]): a tile's row and token
// scales in its lane order.
inline float32x4_t row_pair_scales(float32x4_t s_lo, float32x4_t s_hi, int i) {
    const float32x4_t s = i < 2 ? s_lo : s_hi;
    return (i & 1) ? vzip2q_f32(s, s) : vzip1q_f32(s, s);
}
inline float32x4_t tok_pair_scales(float32x4_t s, int j) {
    return j == 0 ? vcombine_f32(vget_low_f32(s), vget_low_f32(s)) : vcombine_f32(vget_high_f32(s), vget_high_f32(s));
}

// y[t*ldy + r] = dot(row r, token t) for 2P rows (row_bytes apart) and 2Q tokens (nb blocks apart).
template <typename Block, int P, int Q>
void tile(int64_t nb, const uint8_t* w, size_t row_bytes, const block_q8_0* x, float* y, int64_t ldy) {
    // one pointer per row and token, each stepping one block (keeps the addressing in registers)
    const Block* wr[2 * P];
    const block_q8_0* xr[2 * Q];
    for (int i = 0; i < 2 * P; i++) wr[i] = reinterpret_cast<const Block*>(w + size_t(i) * row_bytes);
    for (int j = 0; j < 2 * Q; j++) xr[j] = x + j * nb;
    float32x4_t acc[P][Q];
#pragma GCC unroll 4
    for (int i = 0; i < P; i++)
#pragma GCC unroll 2
        for (int j = 0; j < Q; j++) acc[i][j] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t xm[Q][4];
#pragma GCC unroll 2
        for (int j = 0; j < Q; j++) operands(*xr[2 * j], *xr[2 * j + 1], xm[j]);
        const float32x4_t dx =
            vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(gather_scales(xr, std::make_index_sequence<2 * Q>()))));
        const uint16x8_t hw = gather_scales(wr, std::make_index_sequence<2 * P>());
        const float32x4_t dw_lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(hw)));
        const float32x4_t dw_hi = vcvt_high_f32_f16(vreinterpretq_f16_u16(hw));
#pragma GCC unroll 4
        for (int i = 0; i < P; i++) {
            int8x16_t wm[4];
            operands(*wr[2 * i], *wr[2 * i + 1], wm);
            const float32x4_t dwi = row_pair_scales(dw_lo, dw_hi, i);
#pragma GCC unroll 2
            for (int j = 0; j < Q; j++) {
                int32x4_t s = vmmlaq_s32(vdupq_n_s32(0), wm[0], xm[j][0]);
                s = vmmlaq_s32(s, wm[1], xm[j][1]);
                s = vmmlaq_s32(s, wm[2], xm[j][2]);
                s = vmmlaq_s32(s, wm[3], xm[j][3]);
                acc[i][j] = vfmaq_f32(acc[i][j], vcvtq_f32_s32(s), vmulq_f32(dwi, tok_pair_scales(dx, j)));
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < 2 * P; i++) wr[i]++;
#pragma GCC unroll 4
        for (int j = 0; j < 2 * Q; j++) xr[j]++;
    }
#pragma GCC unroll 4
    for (int i = 0; i < P; i++)
#pragma GCC unroll 2
        for (int j = 0; j < Q; j++) {
            float out[4];
            vst1q_f32(out, acc[i][j]);
            y[(2 * j) * ldy + 2 * i] = out[0];
            y[(2 * j + 1) * ldy + 2 * i] = out[1];
            y[(2 * j) * ldy + 2 * i + 1] = out[2];
            y[(2 * j + 1) * ldy + 2 * i + 1] = out[3];
        }
}

// Rows in 8-row panels, then pairs; tokens in fours, then a pair; an odd last row or token goes
// through the one-row dot, which gives the same bits (dispatch.h).
template <typename Block, float (*Dot)(int64_t, const void*, const void*)>
void gemm_tiles(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
                int64_t ldy) {
    const int64_t nb = K / QK8_0;
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    const int64_t r8 = n_rows / 8 * 8, r2 = n_rows / 2 * 2, t4 = n_tok / 4 * 4, t2 = n_tok / 2 * 2;
    for (int64_t r = 0; r < r2; r += r < r8 ? 8 : 2) {  // a panel stays in cache while the tokens pass
        const uint8_t* wr = wb + size_t(r) * row_bytes;
        for (int64_t t = 0; t < t4; t += 4) {
            if (r < r8) tile<Block, 4, 2>(nb, wr, row_bytes, xb + t * nb, y + t * ldy + r, ldy);
            else tile<Block, 1, 2>(nb, wr, row_bytes, xb + t * nb, y + t * ldy + r, ldy);
        }
        if (t4 < t2) {
            if (r < r8) tile<Block, 4, 1>(nb, wr, row_bytes, xb + t4 * nb, y + t4 * ldy + r, ldy);
            else tile<Block, 1, 1>(nb, wr, row_bytes, xb + t4 * nb, y + t4 * ldy + r, ldy);
        }
    }
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t r = t < t2 ? r2 : 0; r < n_rows; r++)
            y[t * ldy + r] = Dot(K, wb + size_t(r) * row_bytes, xb + t * nb);
}

}  // namespace

void gemm_q8_0_q8_0_i8mm(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_tiles<block_q8_0, vec_dot_q8_0_q8_0_neon>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q4_0_q8_0_i8mm(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_tiles<block_q4_0, vec_dot_q4_0_q8_0_neon>(K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
