// Small NEON helpers shared by the AArch64 kernel files (each compiled with
// -march=armv8.2-a+dotprod). Internal linkage: every including file keeps its own copy.
#pragma once
#include <arm_neon.h>

#include "quant/blocks.h"

namespace phi2cpu {
namespace arm {
namespace {

// A Q4_0 block's 32 quants as signed bytes (q - 8): lo holds elements 0..15 (the low nibbles),
// hi elements 16..31 (the high nibbles).
inline void unpack_q4_0(const block_q4_0& blk, int8x16_t& lo, int8x16_t& hi) {
    const uint8x16_t q = vld1q_u8(blk.qs);
    lo = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0f))), vdupq_n_s8(8));
    hi = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(q, 4)), vdupq_n_s8(8));
}

}  // namespace
}  // namespace arm
}  // namespace phi2cpu
