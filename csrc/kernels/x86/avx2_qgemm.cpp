// AVX2 integer GEMM for prefill: Q4_0 / Q8_0 weights times Q8_0 activation rows, with int8 dot
// products (maddubs) and the per-block scales applied in f32. Compiled with -mavx2 -mfma -mf16c.
//
// Eight rows are packed into a panel (driver: kernels/x86/qgemm_x86.h), block by block: 8 f32 row
// scales, then 8 groups of 32 bytes where bytes 4i..4i+3 of group g are quants 4g..4g+3 of row i. One maddubs of a group
// with a token's 4 activation quants broadcast gives the 8 rows' partial sums side by side, so the
// results need no horizontal reduction. Each packed group is reused for 6 tokens. Activation quants
// are in [-127, 127], as the Q8_0 quantizer makes them.
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/qgemm_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

struct Avx2 {
    static constexpr int kRows = 8;
    static constexpr int kTok = 6;
    static constexpr int kPanelBlock = kRows * 4 + kRows * QK8_0;  // bytes per block: scales + 8 groups
    // a 6-token activation tile of ~16 KiB stays in L1; 4 panels (~92 KiB of Q4_0) in L2
    static constexpr int64_t kKcBlocks = 80;
    static constexpr int kPanels = 4;

    // Blocks [b0, b0 + kb) of rows [0, nr) into the panel layout above (missing rows are zero).
    // Group g of a block is dword g of each row's 32 quants.
    template <typename Block>
    static void pack(const uint8_t* w, int nr, int64_t nb, int64_t b0, int64_t kb, uint8_t* panel) {
        const RepackedLayout L{nb, nr, sizeof(Block) - 2};
        for (int64_t b = b0; b < b0 + kb; b++) {
            uint8_t* pb = panel + (b - b0) * kPanelBlock;
            alignas(16) uint16_t dh[kRows];
            __m256i r[kRows], q[kRows];
            load_rows_block<Block>(w, L, nr, b, r, dh);
            _mm256_store_ps(reinterpret_cast<float*>(pb),
                            _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dh))));
            transpose_8x8_epi32(r, q);
            for (int g = 0; g < kRows; g++) _mm256_store_si256(reinterpret_cast<__m256i*>(pb + kRows * 4) + g, q[g]);
        }
    }
};
constexpr int kRows = Avx2::kRows;
constexpr int kPanelBlock = Avx2::kPanelBlock;

// T tokens x 8 rows. Q4_0: nibbles are unsigned, so maddubs takes them as they are and up to 8
// groups sum in 16 bits (8 * 2 * 15 * 127 < 2^15); the offset is removed per block in 32 bits.
template <int T>
void tile_q4_0(int64_t nb, const uint8_t* panel, const block_q8_0* x, int64_t ldx, const float* dx,
               const int32_t* bias, float* y, int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * kPanelBlock;
        __m256i s16[T];
        const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + kRows * 4));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s16[t] = _mm256_maddubs_epi16(w0, bcast4_epi32(x[t * ldx + b].qs));
#pragma GCC unroll 1
        for (int g = 1; g < QK8_0 / 4; g++) {
            const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + kRows * 4 + g * 32));
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, bcast4_epi32(x[t * ldx + b].qs + 4 * g)));
        }
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(s16[t], ones), _mm256_set1_epi32(bias[t * ldx + b]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(dx[t * ldx + b])), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

// Q8_0: signed weights, so maddubs gets |w| and x carrying w's sign; a 16-bit pair can reach
// 2 * 128 * 127, so every group widens to 32 bits at once.
template <int T>
void tile_q8_0(int64_t nb, const uint8_t* panel, const block_q8_0* x, int64_t ldx, const float* dx, const int32_t*,
               float* y, int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * kPanelBlock;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
        for (int g = 0; g < QK8_0 / 4; g++) {
            const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + kRows * 4 + g * 32));
            const __m256i aw = _mm256_sign_epi8(w, w);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) {
                const __m256i xs = _mm256_sign_epi8(bcast4_epi32(x[t * ldx + b].qs + 4 * g), w);
                s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, xs), ones));
            }
        }
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[t]), _mm256_mul_ps(dw, _mm256_set1_ps(dx[t * ldx + b])),
                                     acc[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

constexpr tile_fn kTilesQ4[Avx2::kTok + 1] = {nullptr,      tile_q4_0<1>, tile_q4_0<2>, tile_q4_0<3>,
                                       tile_q4_0<4>, tile_q4_0<5>, tile_q4_0<6>};
constexpr tile_fn kTilesQ8[Avx2::kTok + 1] = {nullptr,      tile_q8_0<1>, tile_q8_0<2>, tile_q8_0<3>,
                                       tile_q8_0<4>, tile_q8_0<5>, tile_q8_0<6>};

}  // namespace

void gemm_q4_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_packed<Avx2, block_q4_0>(kTilesQ4, 8, K, n_rows, w, row_bytes, n_tok, x, y, ldy);  // nibbles: value + 8
}

void gemm_q8_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_packed<Avx2, block_q8_0>(kTilesQ8, 0, K, n_rows, w, row_bytes, n_tok, x, y, ldy);  // signed, as stored
}

}  // namespace phi2cpu
