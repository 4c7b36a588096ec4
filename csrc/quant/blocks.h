// On-disk block layouts, identical to GGUF's (see ggml's type table). Kernels read these directly.
#pragma once
#include <cstddef>
#include <cstdint>

namespace phi2cpu {

// GGML type ids as stored in GGUF tensor infos.
enum class GgmlType : uint32_t {
    F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ4_NL = 20,
    IQ4_XS = 23
};

constexpr int QK8_0 = 32;
constexpr int QK4_0 = 32;

struct block_q8_0 {
    uint16_t d;          // fp16 scale
    int8_t qs[QK8_0];    // value = d * qs[i]
};
static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");

struct block_q4_0 {
    uint16_t d;              // fp16 scale
    uint8_t qs[QK4_0 / 2];   // low nibbles hold elements 0..15, high nibbles 16..31; value = d*(q-8)
};
static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");

constexpr int QK5_0 = 32;

// As Q4_0 with a fifth bit per value: bit j of the little-endian 32-bit qh is the high bit of
// element j (qs nibbles as in Q4_0). value = d * (q - 16), q in 0..31.
struct block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[QK5_0 / 2];
};
static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");

// Q4_0 / Q5_0 with a per-block offset: value = d * q + m (q in 0..15, Q5_1: 0..31, laid out as
// in Q4_0 / Q5_0).
constexpr int QK4_1 = 32;
constexpr int QK5_1 = 32;

struct block_q4_1 {
    uint16_t d;  // fp16 scale
    uint16_t m;  // fp16 offset (the block's minimum)
    uint8_t qs[QK4_1 / 2];
};
static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");

struct block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[QK5_1 / 2];
};
static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");

// Non-linear 4-bit: value = d * kIQ4NLValues[q], nibbles laid out as in Q4_0.
constexpr int QK4_NL = 32;
constexpr int8_t kIQ4NLValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

struct block_iq4_nl {
    uint16_t d;
    uint8_t qs[QK4_NL / 2];
};
static_assert(sizeof(block_iq4_nl) == 18, "IQ4_NL block is 18 bytes");

// The 4-bit (Q4_0/Q4_1/IQ4_NL) or 5-bit (Q5_0/Q5_1) quant of element j (0..31) of a block.
inline int nibble_quant(const uint8_t* qs, int j) { return j < 16 ? qs[j] & 15 : qs[j - 16] >> 4; }
inline int q5_quant(const uint8_t* qh, const uint8_t* qs, int j) {
    return nibble_quant(qs, j) | (((qh[j / 8] >> (j % 8)) & 1) << 4);
}

// K-quants: 256-value super-blocks split into sub-blocks that each carry a small integer scale
// (and, for Q4_K/Q5_K, a min), themselves scaled by the super-block's fp16 d (and dmin).
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

// 8 sub-blocks of 32. scales[12] packs eight 6-bit scales sc[j] and eight 6-bit mins m[j]:
//   j < 4:  sc = scales[j] & 63,                           m = scales[j+4] & 63
//   j >= 4: sc = (scales[j+4] & 15) | (scales[j-4] >> 6) << 4, m = (scales[j+4] >> 4) | (scales[j] >> 6) << 4
// qs holds 4 chunks of 32 bytes; chunk c: low nibbles are sub-block 2c, high nibbles 2c+1.
// value = d * sc[j] * q - dmin * m[j]
struct block_q4_K {
    uint16_t d;                  // fp16 scale of the sub-block scales
    uint16_t dmin;               // fp16 scale of the sub-block mins
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q4_K) == 144, "Q4_K block is 144 bytes");

// As Q4_K with a fifth bit per value: bit j of qh[l] is the high bit of element l of sub-block j
// (element l of each sub-block j shares qh[l]). value = d * sc[j] * (q + 16 h) - dmin * m[j]
struct block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[K_SCALE_SIZE];
    uint8_t qh[QK_K / 8];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_q5_K) == 176, "Q5_K block is 176 bytes");

// The 6-bit scale and min of sub-block j (0..7) of a Q4_K/Q5_K block, from its 12 packed bytes.
inline void k4_scale_min(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Element l (0..31) of sub-block j (0..7): the nibble, plus the fifth bit in Q5_K.
inline int k4_quant(const block_q4_K& b, int j, int l) { return (b.qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15; }
inline int k4_quant(const block_q5_K& b, int j, int l) {
    return ((b.qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15) | (((b.qh[l] >> j) & 1) << 4);
}

// 16 sub-blocks of 16 with int8 scales; 6-bit values q in 0..63, value = d * scales[j] * (q - 32).
// Two halves of 128 values; half h uses ql[64h..64h+64), qh[32h..32h+32), scales[8h..8h+8). In a half,
// for l < 32 (element index within the half):
//   e = l      : low nibble of ql[l]    | bits 0-1 of qh[l] << 4
//   e = l + 32 : low nibble of ql[l+32] | bits 2-3 of qh[l] << 4
//   e = l + 64 : high nibble of ql[l]   | bits 4-5 of qh[l] << 4
//   e = l + 96 : high nibble of ql[l+32]| bits 6-7 of qh[l] << 4
// and element e of the half uses scales[8h + e/16].
struct block_q6_K {
    uint8_t ql[QK_K / 2];
    uint8_t qh[QK_K / 4];
    int8_t scales[QK_K / 16];
    uint16_t d;                  // fp16 super-block scale
};
static_assert(sizeof(block_q6_K) == 210, "Q6_K block is 210 bytes");

// 16 sub-blocks of 16 with 4-bit scales and mins, 2-bit values q in 0..3:
//   value = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4)   for element e, j = e / 16.
// qs holds two halves of 32 bytes; in half h, bits 2k..2k+1 of qs[32h + l] are element 128h + 32k + l.
struct block_q2_K {
    uint8_t scales[QK_K / 16];
    uint8_t qs[QK_K / 4];
    uint16_t d;                  // fp16 scale of the sub-block scales
    uint16_t dmin;               // fp16 scale of the sub-block mins
};
static_assert(sizeof(block_q2_K) == 84, "Q2_K block is 84 bytes");

// The 2-bit field of element e (0..255) of a Q2_K or Q3_K block's qs.
inline int k2_low_bits(const uint8_t* qs, int e) { return (qs[32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3; }

// 16 sub-blocks of 16 with signed 6-bit scales, 3-bit values q in -4..3: value = d * sc[j] * q, j = e / 16.
// q = (2-bit field of e, laid out as in Q2_K) - (bit e / 32 of hmask[e % 32] ? 0 : 4).
// scales[12]: sc[j] = (low | high << 4) - 32 with low = j < 8 ? scales[j] & 15 : scales[j - 8] >> 4 and
// high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3.
struct block_q3_K {
    uint8_t hmask[QK_K / 8];
    uint8_t qs[QK_K / 4];
    uint8_t scales[K_SCALE_SIZE];
    uint16_t d;                  // fp16 super-block scale
};
static_assert(sizeof(block_q3_K) == 110, "Q3_K block is 110 bytes");

inline int q3_scale(const uint8_t* scales, int j) {
    const int low = j < 8 ? scales[j] & 15 : scales[j - 8] >> 4;
    const int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (low | (high << 4)) - 32;
}
inline int q3_quant(const block_q3_K& b, int e) {
    return k2_low_bits(b.qs, e) - (((b.hmask[e % 32] >> (e / 32)) & 1) ? 0 : 4);
}

// IQ4_NL's values in 256-value super-blocks of eight sub-blocks of 32, each with a 6-bit scale
// ls in 0..63 (low 4 bits in nibble j%2 of scales_l[j/2], high 2 bits in bits 2j..2j+1 of scales_h).
// Sub-block j's nibbles are qs[16j..16j+16), laid out as in IQ4_NL.
// value = d * (ls - 32) * kIQ4NLValues[q]
struct block_iq4_xs {
    uint16_t d;                  // fp16 super-block scale
    uint16_t scales_h;
    uint8_t scales_l[QK_K / 64];
    uint8_t qs[QK_K / 2];
};
static_assert(sizeof(block_iq4_xs) == 136, "IQ4_XS block is 136 bytes");

// The signed scale (ls - 32, in -32..31) of sub-block j (0..7) of an IQ4_XS block.
inline int iq4xs_scale(const block_iq4_xs& b, int j) {
    return (((b.scales_l[j / 2] >> (4 * (j % 2))) & 15) | (((b.scales_h >> (2 * j)) & 3) << 4)) - 32;
}

// Activations for the K-quant dot products: value = d * qs[i] (qs in -128..127), with the sums of
// each 16 consecutive qs precomputed (they carry the min / offset terms of the weight formats).
struct block_q8_K {
    float d;
    int8_t qs[QK_K];
    int16_t bsums[QK_K / 16];
};
static_assert(sizeof(block_q8_K) == 292, "Q8_K block is 292 bytes");

}  // namespace phi2cpu
