// What the AVX2 and AVX-512 K-quant / IQ4_XS kernels over rows in lanes (kernels/repack.h) share:
// the GEMV driver (whole 8-row groups through a group kernel, then the GGUF rows after them), and
// the prefill GEMM's panel layouts and tile type. The GEMM's packers and driver are AVX2 code
// (avx2_kgemm.cpp); gemm_k_avx2_panels runs them with another path's tiles.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/repack.h"
#include "kernels/x86/simd_x86.h"
#include "quant/blocks.h"

namespace phi2cpu {
namespace x86 {

// Types only (no code) outside the anonymous namespace, so both ISAs' files name the same ones.

enum class KGroup { Q2K, Q3K, Q4K, Q5K, Q6K, Xs };

// Per (token, block): the Q8_K sums of each sub-block pair of 32, as int16 pairs (lane p: sub-blocks
// 2p, 2p+1), the activations' side of the Q4_K / Q5_K mins.
struct MinSums {
    int32_t pair[4];
};

constexpr int kPanelGroups = QK_K / 4;               // 4-quant groups per block
constexpr int kPanelQuantBytes = kPanelGroups * 32;  // a block's quants for the 8 rows

// Panel block of Q4_K / Q5_K rows: d[8], dmin[8] (f32), per sub-block j a vector of the rows' scales
// (lane i: sc_j of row i in both int16 halves), per sub-block pair p a vector of the rows' mins
// (lane i: m_2p, m_2p+1 of row i), then the quants.
struct K4Panel {
    static constexpr int kD = 0, kDmin = 32, kScales = 64, kMins = kScales + 8 * 32, kQuants = kMins + 4 * 32;
    static constexpr int kBytes = kQuants + kPanelQuantBytes;
};
// Panel block of rows with 16 sub-blocks of 16 (Q2_K, Q3_K, Q6_K): d[8], dmin[8] (f32; dmin for
// Q2_K), per sub-block j the rows' scales as above, per sub-block pair p the rows' (c_2p, c_2p+1),
// the coefficients of the Q8_K sums of 16 (Q6_K: -32 sc_j for its 0..63 values' offset; Q3_K: -4 sc_j
// for its values kept as q + 4; Q2_K: its mins m_j, which have their own scale dmin), then the
// quants (0..63).
struct K16Panel {
    static constexpr int kD = 0, kDmin = 32, kScales = 64, kCoef = kScales + 16 * 32, kQuants = kCoef + 8 * 32;
    static constexpr int kBytes = kQuants + kPanelQuantBytes;
};

// Panel block of IQ4_XS rows: d[8] (f32), per sub-block j of 32 the rows' scales ls_j - 32 as above,
// then the quants as the signed table values (-127..113).
struct XsPanel {
    static constexpr int kD = 0, kScales = 32, kQuants = kScales + 8 * 32;
    static constexpr int kBytes = kQuants + kPanelQuantBytes;
};

// One GEMM tile: T <= 6 tokens x (ldx blocks apart) times a panel of 8 rows (nr of them real) over
// nb blocks, into y (ldy apart), adding to y where `accumulate`; ms: the tokens' MinSums (Q4_K, Q5_K).
using ktile_fn = void (*)(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums* ms,
                          float* y, int64_t ldy, int nr, bool accumulate);
constexpr int kTileTokens = 6;

// The prefill GEMM of `kind` (avx2_kgemm.cpp: its AVX2 panel packers and cache blocking) with
// tiles[nt] multiplying a panel by nt = 1..kTileTokens tokens.
void gemm_k_avx2_panels(KGroup kind, const ktile_fn* tiles, int64_t K, int64_t n_rows, const void* w, size_t row_bytes,
                        int64_t n_tok, const void* x, float* y, int64_t ldy);

// Internal linkage, as in kquants_x86.h: each ISA's file keeps its own copy.
namespace {

inline int32_t pair16(int lo, int hi) {
    return int32_t(uint32_t(uint16_t(int16_t(lo))) | (uint32_t(uint16_t(int16_t(hi))) << 16));
}

// A block's float steps for 8 rows, in the order of the dots (vec_dot_q4_K_q8_K_ref): acc = fma(float(isum),
// d * x.d, acc), and for the types with mins then acc = fma(float(-msum), dmin * x.d, acc).
inline __m256 block_fma(__m256 acc, __m256i isum, __m256 dw, __m256 dx) {
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx), acc);
}
inline __m256 block_fma(__m256 acc, __m256i isum, __m256i msum, __m256 dw, __m256 dmin, __m256 dx) {
    return block_fma(block_fma(acc, isum, dw, dx), _mm256_sub_epi32(_mm256_setzero_si256(), msum), dmin, dx);
}

// The rest of a K16Panel block (pb) for one token after its isum s32: the term of the Q8_K sums of 16
// (coefficients c_j: Q2_K's mins, with their own step, or Q3_K's / Q6_K's offsets, into isum), then
// the float steps.
template <bool Mins>
inline __m256 k16_panel_step(__m256 acc, __m256i s32, const uint8_t* pb, const block_q8_K& xb) {
    __m256i o = _mm256_setzero_si256();
    for (int p = 0; p < 8; p++) {
        int32_t pr;
        std::memcpy(&pr, xb.bsums + 2 * p, 4);
        o = _mm256_add_epi32(
            o, _mm256_madd_epi16(_mm256_load_si256(reinterpret_cast<const __m256i*>(pb + K16Panel::kCoef + 32 * p)),
                                 _mm256_set1_epi32(pr)));
    }
    const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb + K16Panel::kD));
    const __m256 dx = _mm256_set1_ps(xb.d);
    if constexpr (Mins)
        return block_fma(acc, s32, o, dw, _mm256_load_ps(reinterpret_cast<const float*>(pb + K16Panel::kDmin)), dx);
    else
        return block_fma(acc, _mm256_add_epi32(s32, o), dw, dx);
}

inline void fill_min_sums(const block_q8_K* x, int64_t n, std::vector<MinSums>& s) {
    s.resize(size_t(n));
    for (int64_t i = 0; i < n; i++)
        for (int p = 0; p < 4; p++) {
            const int16_t* bs = x[i].bsums + 4 * p;
            s[size_t(i)].pair[p] = pair16(bs[0] + bs[1], bs[2] + bs[3]);
        }
}

// One 8-row group g (nb blocks) times n_tok = T tokens x: y[t * ldy + i] for its rows i.
using kgroup_fn = void (*)(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums* ms, float* y, int64_t ldy);

// [T]: Group::run<T>, the group kernel for T = 1..kGemvMaxTokens tokens
template <typename Group>
constexpr kgroup_fn kGroupFns[kGemvMaxTokens + 1] = {nullptr,
                                                     Group::template run<1>,
                                                     Group::template run<2>,
                                                     Group::template run<3>,
                                                     Group::template run<4>,
                                                     Group::template run<5>,
                                                     Group::template run<6>,
                                                     Group::template run<7>,
                                                     Group::template run<8>};
static_assert(kGemvMaxTokens == 8, "kGroupFns lists 1..8 tokens");

// The rows-in-lanes GEMV: whole 8-row groups, then the GGUF rows after them through the row dot.
inline void gemv_rows8(const kgroup_fn* groups, float (*dot)(int64_t, const void*, const void*), bool mins, int64_t K,
                       int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x, float* y,
                       int64_t ldy) {
    const int64_t nb = K / QK_K;
    const block_q8_K* xb = static_cast<const block_q8_K*>(x);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    thread_local std::vector<MinSums> ms;
    if (mins) fill_min_sums(xb, n_tok * nb, ms);
    const int64_t grouped = n_rows / kK4GroupRows * kK4GroupRows;
    for (int64_t r = 0; r < grouped; r += kK4GroupRows)
        groups[n_tok](nb, wb + size_t(r) * row_bytes, xb, mins ? ms.data() : nullptr, y + r, ldy);
    for (int64_t r = grouped; r < n_rows; r++)  // the GGUF rows after the groups
        for (int64_t t = 0; t < n_tok; t++) y[t * ldy + r] = dot(K, wb + size_t(r) * row_bytes, xb + t * nb);
}

}  // namespace
}  // namespace x86
}  // namespace phi2cpu
