// AVX-512 VNNI kernels over K-quant / IQ4_XS rows in lanes (kernels/repack.h, the AVX2 path's layout).
// Compiled with the AVX-512 flags of avx512.cpp; called only when the CPU and OS support them.
//
// Decoding (Q4_K, Q5_K): one 512-bit register holds two neighbouring 4-quant groups of a group of
// 8 rows: the 64 bytes at (8c + 2p) * 32 of a Q4_K block are groups 2p and 2p + 1 of chunk c, row i's
// four quants in dwords i and 8 + i. The activations' dwords are placed to match by one vpermd from
// a 64-byte load, so one maddubs does the work of two AVX2 ones. A lane of the 16-bit sums gets at
// most 4 groups (4 * 7936 = 31744 for Q5_K), vpdpwssd scales them into 32 bits, and the two halves
// are added per block.
//
// Prefill (every K-quant and IQ4_XS): the AVX2 path's panels and cache blocking
// (gemm_k_avx2_panels), with tiles where one vpdpbusd takes 4 quants per row straight to 32 bits, so
// a sub-block's groups need no 16-bit sums and its scale is one 32-bit multiply per token.
//
// Every sum is an exact integer and the float steps are the AVX2 kernels' (avx2_kgemm.cpp), so each
// output has the bits of the type's dot (vec_dot_q4_K_q8_K_ref and the others).
#include "kernels/dispatch.h"
#include "kernels/repack.h"
#include "kernels/x86/kquants_x86.h"
#include "kernels/x86/krows_x86.h"
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/qgemm_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

inline __m512i load512(const void* p) { return _mm512_loadu_si512(p); }

// vpermd indices putting dword a in lanes 0..7 and dword b in lanes 8..15.
inline __m512i dword_pair(int a, int b) { return _mm512_inserti64x4(_mm512_set1_epi32(a), _mm256_set1_epi32(b), 1); }

// The eight int32 sums of rows 0..7: lanes i and 8 + i.
inline __m256i fold_halves(__m512i s) {
    return _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
}

inline __m512i byte_bit_to512(__m512i v, int j, int p) {
    return _mm512_and_si512(j < p ? _mm512_slli_epi16(v, unsigned(p - j)) : _mm512_srli_epi16(v, unsigned(j - p)),
                            _mm512_set1_epi8(char(1 << p)));
}

// Q4_K / Q5_K: per chunk c, pair p = groups 2p, 2p + 1, lo (sub-block 2c) and hi (2c + 1).
template <int T, bool Q5>
void gemv_group_k4(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums* ms, float* y, int64_t ldy) {
    constexpr size_t kBlock = Q5 ? kQ5GroupBlockBytes : kK4GroupBlockBytes;
    constexpr int kQuantsAt = Q5 ? 384 : 128;
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    __m512i idx[8];  // [p]: x dwords 2p, 2p + 1 (values of sub-block 2c); [4 + p]: 8 + 2p, 9 + 2p (2c + 1)
    for (int p = 0; p < 4; p++) idx[p] = dword_pair(2 * p, 2 * p + 1), idx[4 + p] = dword_pair(8 + 2 * p, 9 + 2 * p);
    __m256 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += kBlock) {
        uint64_t sc8[8], m8[8];
        unpack_scales_k4_rows8(g + 32, sc8, m8);
        __m512i sc[8];
        __m256i mins[4];
        for (int j = 0; j < 8; j++) sc[j] = _mm512_broadcast_i64x4(lanes_pair16(sc8[j]));
        for (int p = 0; p < 4; p++) mins[p] = lanes_pair16(m8[2 * p], m8[2 * p + 1]);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16)));
        for (int t = 0; t < T; t++) {
            const block_q8_K& xt = x[t * nb + b];
            __m512i s32 = _mm512_setzero_si512();
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                const __m512i xc = load512(xt.qs + 64 * c);
                __m512i lo16 = _mm512_setzero_si512(), hi16 = _mm512_setzero_si512();
#pragma GCC unroll 4
                for (int p = 0; p < 4; p++) {
                    const __m512i v = load512(g + kQuantsAt + (8 * c + 2 * p) * 32);
                    __m512i lo = _mm512_and_si512(v, m4), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                    if constexpr (Q5) {
                        const __m512i hv = load512(g + 128 + 64 * p);  // the fifth bits of groups 2p, 2p + 1
                        lo = _mm512_or_si512(lo, byte_bit_to512(hv, 2 * c, 4));
                        hi = _mm512_or_si512(hi, byte_bit_to512(hv, 2 * c + 1, 4));
                    }
                    const __m512i pl = _mm512_maddubs_epi16(lo, _mm512_permutexvar_epi32(idx[p], xc));
                    const __m512i ph = _mm512_maddubs_epi16(hi, _mm512_permutexvar_epi32(idx[4 + p], xc));
                    lo16 = p == 0 ? pl : _mm512_add_epi16(lo16, pl);
                    hi16 = p == 0 ? ph : _mm512_add_epi16(hi16, ph);
                }
                s32 = _mm512_dpwssd_epi32(s32, lo16, sc[2 * c]);
                s32 = _mm512_dpwssd_epi32(s32, hi16, sc[2 * c + 1]);
            }
            const MinSums& m = ms[t * nb + b];
            __m256i msum = _mm256_setzero_si256();
            for (int p = 0; p < 4; p++) msum = _mm256_dpwssd_epi32(msum, mins[p], _mm256_set1_epi32(m.pair[p]));
            const __m256 dx = _mm256_set1_ps(xt.d);
            acc[t] = block_fma(acc[t], fold_halves(s32), msum, dw, dmin, dx);
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}

// The isum part of a panel block for T tokens: kSub sub-blocks of kSubGroups 4-quant groups, each
// sub-block's 32-bit sums times its scale (the panel's int16 pair (sc, sc): the high half,
// sign-extended). Signed (IQ4_XS, 32-value sub-blocks) weights are read as w + 128 (the sign bit
// flipped: unsigned 1..241), and the sub-block's 128 * sum(x) (its two Q8_K sums of 16) is taken off
// again: the same integer, with no per-token sign trick.
template <int T, int kSub, int kSubGroups, bool Signed = false>
inline void panel_block_sums_vnni(const uint8_t* scales, const uint8_t* quants, const block_q8_K* x, int64_t ldx,
                                  int64_t b, __m256i (&s32)[T]) {
#pragma GCC unroll 1
    for (int j = 0; j < kSub; j++) {
        const __m256i sc = _mm256_srai_epi32(load256(scales + 32 * j), 16);
        __m256i d[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) d[t] = _mm256_setzero_si256();
#pragma GCC unroll 8
        for (int g = 0; g < kSubGroups; g++) {
            __m256i w = load256(quants + (kSubGroups * j + g) * 32);
            if constexpr (Signed) w = _mm256_xor_si256(w, _mm256_set1_epi8(char(0x80)));
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                d[t] = _mm256_dpbusd_epi32(d[t], w, bcast4_epi32(x[t * ldx + b].qs + 4 * (kSubGroups * j + g)));
        }
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            if constexpr (Signed) {
                static_assert(kSubGroups == 8, "two Q8_K sums of 16 per sub-block");
                const int16_t* bs = x[t * ldx + b].bsums + 2 * j;
                d[t] = _mm256_sub_epi32(d[t], _mm256_set1_epi32(128 * (bs[0] + bs[1])));
            }
            s32[t] = _mm256_add_epi32(s32[t], _mm256_mullo_epi32(d[t], sc));
        }
    }
}

// T tokens x 8 rows of a K4Panel (Q4_K, Q5_K), in the order of tile_k4 (avx2_kgemm.cpp).
template <int T>
void tile_k4(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums* ms, float* y,
             int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * K4Panel::kBytes;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
        panel_block_sums_vnni<T, 8, 8>(pb + K4Panel::kScales, pb + K4Panel::kQuants, x, ldx, b, s32);
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb + K4Panel::kD));
        const __m256 dmin = _mm256_load_ps(reinterpret_cast<const float*>(pb + K4Panel::kDmin));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const MinSums& m = ms[t * ldx + b];
            __m256i msum = _mm256_setzero_si256();
            for (int p = 0; p < 4; p++)
                msum = _mm256_dpwssd_epi32(msum, load256(pb + K4Panel::kMins + 32 * p), _mm256_set1_epi32(m.pair[p]));
            const __m256 dx = _mm256_set1_ps(x[t * ldx + b].d);
            acc[t] = block_fma(acc[t], s32[t], msum, dw, dmin, dx);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

// T tokens x 8 rows of a K16Panel (Q2_K with Mins, Q3_K, Q6_K), in the order of tile_k16.
template <int T, bool Mins>
void tile_k16(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums*, float* y, int64_t ldy,
              int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * K16Panel::kBytes;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
        panel_block_sums_vnni<T, 16, 4>(pb + K16Panel::kScales, pb + K16Panel::kQuants, x, ldx, b, s32);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) acc[t] = k16_panel_step<Mins>(acc[t], s32[t], pb, x[t * ldx + b]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

// T tokens x 8 rows of an XsPanel (IQ4_XS), in the order of tile_iq4_xs.
template <int T>
void tile_iq4_xs(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums*, float* y,
                 int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * XsPanel::kBytes;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
        panel_block_sums_vnni<T, 8, 8, true>(pb + XsPanel::kScales, pb + XsPanel::kQuants, x, ldx, b, s32);
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb + XsPanel::kD));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) acc[t] = block_fma(acc[t], s32[t], dw, _mm256_set1_ps(x[t * ldx + b].d));
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

static_assert(kTileTokens == 6, "the tile tables list 1..6 tokens");
constexpr ktile_fn kTilesK4[] = {nullptr, tile_k4<1>, tile_k4<2>, tile_k4<3>, tile_k4<4>, tile_k4<5>, tile_k4<6>};
template <bool Mins>
constexpr ktile_fn kTilesK16[] = {nullptr,           tile_k16<1, Mins>, tile_k16<2, Mins>, tile_k16<3, Mins>,
                                  tile_k16<4, Mins>, tile_k16<5, Mins>, tile_k16<6, Mins>};
constexpr ktile_fn kTilesXs[] = {nullptr,        tile_iq4_xs<1>, tile_iq4_xs<2>, tile_iq4_xs<3>,
                                 tile_iq4_xs<4>, tile_iq4_xs<5>, tile_iq4_xs<6>};

template <bool Q5>
struct GroupK4 {
    template <int T>
    static void run(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums* ms, float* y, int64_t ldy) {
        gemv_group_k4<T, Q5>(nb, g, x, ms, y, ldy);
    }
};
}  // namespace

void gemv_q4_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                               float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<GroupK4<false>>, vec_dot_q4_K_q8_K_avx512vnni, true, K, n_rows, w, row_bytes, n_tok, x, y,
               ldy);
}

void gemv_q5_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                               float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<GroupK4<true>>, vec_dot_q5_K_q8_K_avx512vnni, true, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q2_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                               float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q2K, kTilesK16<true>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q3_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                               float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q3K, kTilesK16<false>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q4_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                               float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q4K, kTilesK4, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q5_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                               float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q5K, kTilesK4, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q6_K_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                               float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q6K, kTilesK16<false>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_iq4_xs_q8_K_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                                 const void* x, float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Xs, kTilesXs, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
