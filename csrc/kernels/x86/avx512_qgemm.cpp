// AVX-512 VNNI integer GEMM for prefill: Q4_0 / Q8_0 weights times Q8_0 activation rows. Compiled
// with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (plus AVX2/FMA/F16C).
//
// Sixteen rows are packed into a panel (driver: kernels/x86/qgemm_x86.h), block by block: 16 f32 row
// scales, then 8 groups of 64 bytes where bytes 4i..4i+3 of group g are quants 4g..4g+3 of row i,
// stored unsigned: Q4_0 nibbles as they are (value + 8), Q8_0 quants plus 128. One vpdpbusd of a
// group with a token's 4 activation quants broadcast adds 64 products into the 16 rows' 32-bit sums,
// so a block costs 8 instructions per token and row panel, and each group is reused for 8 tokens.
// The offsets come back per block through the activation side's bias (-offset * sum x).
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/qgemm_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

struct Avx512 {
    static constexpr int kRows = 16;
    static constexpr int kTok = 8;
    static constexpr int kPanelBlock = kRows * 4 + kRows * QK8_0;  // bytes per block: scales + 8 groups
    // an 8-token activation tile of ~22 KiB stays in L1; 2 panels (~92 KiB) in L2
    static constexpr int64_t kKcBlocks = 80;
    static constexpr int kPanels = 2;

    // Blocks [b0, b0 + kb) of rows [0, nr) into the panel layout above (missing rows are zero).
    template <typename Block>
    static void pack(const uint8_t* w, int nr, int64_t nb, int64_t b0, int64_t kb, uint8_t* panel) {
        const RepackedLayout L{nb, nr, sizeof(Block) - 2};
        // Q8_0: x ^ 0x80 turns a signed quant into the unsigned quant + 128
        const __m256i flip = _mm256_set1_epi8(sizeof(Block) == sizeof(block_q8_0) ? -128 : 0);
        for (int64_t b = b0; b < b0 + kb; b++) {
            uint8_t* pb = panel + (b - b0) * kPanelBlock;
            alignas(32) uint16_t dh[kRows];
            __m256i r[kRows], q[kRows];
            load_rows_block<Block>(w, L, nr, b, r, dh);
            _mm512_store_ps(pb, _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(dh))));
            transpose_8x8_epi32(r, q);          // rows 0..7: q[g] is group g's first 32 bytes
            transpose_8x8_epi32(r + 8, q + 8);  // rows 8..15: q[8 + g] its last 32
            __m256i* out = reinterpret_cast<__m256i*>(pb + kRows * 4);
            for (int g = 0; g < 8; g++) {
                _mm256_store_si256(out + 2 * g, _mm256_xor_si256(q[g], flip));
                _mm256_store_si256(out + 2 * g + 1, _mm256_xor_si256(q[8 + g], flip));
            }
        }
    }
};
constexpr int kRows = Avx512::kRows;
constexpr int kPanelBlock = Avx512::kPanelBlock;

inline __m512i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

// T tokens x 16 rows, for both weight types: the panel holds unsigned quants, and each token's
// block dot starts from its bias. Masked loads and stores cover a last panel of fewer rows.
template <int T>
void tile(int64_t nb, const uint8_t* panel, const block_q8_0* x, int64_t ldx, const float* dx, const int32_t* bias,
          float* y, int64_t ldy, int nr, bool accumulate) {
    const __mmask16 m = first_lanes16(nr);
    __m512 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? _mm512_maskz_loadu_ps(m, y + t * ldy) : _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * kPanelBlock;
        __m512i s[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s[t] = _mm512_set1_epi32(bias[t * ldx + b]);
#pragma GCC unroll 8
        for (int g = 0; g < QK8_0 / 4; g++) {
            const __m512i w = _mm512_load_si512(pb + kRows * 4 + g * 64);
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) s[t] = _mm512_dpbusd_epi32(s[t], w, bcast4(x[t * ldx + b].qs + 4 * g));
        }
        const __m512 dw = _mm512_load_ps(pb);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[t]), _mm512_mul_ps(dw, _mm512_set1_ps(dx[t * ldx + b])),
                                     acc[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
}

constexpr tile_fn kTiles[Avx512::kTok + 1] = {nullptr, tile<1>, tile<2>, tile<3>, tile<4>,
                                              tile<5>, tile<6>, tile<7>, tile<8>};

}  // namespace

void gemm_q4_0_q8_0_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy) {
    gemm_packed<Avx512, block_q4_0>(kTiles, 8, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q8_0_q8_0_avx512vnni(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy) {
    gemm_packed<Avx512, block_q8_0>(kTiles, 128, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
