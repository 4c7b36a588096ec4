// AVX2 integer GEMM for prefill: Q4_0 / Q8_0 weights times Q8_0 activation rows, with int8 dot
// products (maddubs) and the per-block scales applied in f32. Compiled with -mavx2 -mfma -mf16c.
//
// Weights arrive repacked (kernels/repack.h: scales first, rows in groups of 4). Eight rows are packed into a panel, block by block: 8 f32 row scales, then 8 groups of
// 32 bytes where bytes 4i..4i+3 of group g are quants 4g..4g+3 of row i. One maddubs of a group
// with a token's 4 activation quants broadcast gives the 8 rows' partial sums side by side, so the
// results need no horizontal reduction. Each packed group is reused for 6 tokens. Activation quants
// are in [-127, 127], as the Q8_0 quantizer makes them.
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/repack.h"
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/simd_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

constexpr int kRows = 8;
constexpr int kTok = 6;
constexpr int kPanelBlock = kRows * 4 + kRows * QK8_0;  // bytes per block: scales + 8 groups

// Per (token, block) of the activations: the f32 scale and 8 * the sum of the quants (Q4_0
// weights are stored as unsigned nibbles q = value/d + 8, so their dot owes 8 * sum x back).
struct ActSide {
    std::vector<float> d;
    std::vector<int32_t> sum8;
};

void fill_side(const block_q8_0* x, int64_t n, ActSide& s) {
    s.d.resize(size_t(n));
    s.sum8.resize(size_t(n));
    for (int64_t i = 0; i < n; i++) {
        s.sum8[size_t(i)] = 8 * sum_q8(x[i].qs);
        s.d[size_t(i)] = half_to_float(x[i].d);
    }
}

// Block b of row i of repacked rows (kernels/repack.h) as 32 bytes of quants in block order.
inline __m256i row_quants(const block_q4_0*, const uint8_t* w, const RepackedLayout& L, int i, int64_t b) {
    return unpack_q4_0(w + L.quants(i, b, 0));
}
inline __m256i row_quants(const block_q8_0*, const uint8_t* w, const RepackedLayout& L, int i, int64_t b) {
    return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(w + L.quants(i, b, 1)),
                               reinterpret_cast<const __m128i*>(w + L.quants(i, b, 0)));
}

// Blocks [b0, b0 + kb) of rows [0, nr) of w, repacked rows of nb blocks starting at a 4-row group
// (nr < 8 only for the last rows of the tensor), into the panel layout above (missing rows are
// zero). Group g of a block is dword g of each row's 32 quants: an 8 x 8 transpose of dwords.
template <typename Block>
void pack_panel(const uint8_t* w, int nr, int64_t nb, int64_t b0, int64_t kb, uint8_t* panel) {
    const RepackedLayout L{nb, nr, sizeof(Block) - 2};
    for (int64_t b = b0; b < b0 + kb; b++) {
        uint8_t* pb = panel + (b - b0) * kPanelBlock;
        alignas(16) uint16_t dh[kRows] = {};
        __m256i r[kRows];
        for (int i = 0; i < kRows; i++) {
            if (i < nr) {
                std::memcpy(&dh[i], w + L.scale(i, b), 2);
                r[i] = row_quants(static_cast<const Block*>(nullptr), w, L, i, b);
            } else {
                r[i] = _mm256_setzero_si256();
            }
        }
        _mm256_store_ps(reinterpret_cast<float*>(pb), _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(dh))));
        __m256i t[kRows], u[kRows];
        for (int i = 0; i < kRows; i += 2) {
            t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);      // dwords 0,1 | 4,5 of rows i, i+1
            t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);  // dwords 2,3 | 6,7
        }
        for (int h = 0; h < kRows; h += 4) {  // rows h..h+3: u[h + j] holds dword j | j + 4
            u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);
            u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
            u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);
            u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
        }
        __m256i* q = reinterpret_cast<__m256i*>(pb + kRows * 4);
        for (int j = 0; j < 4; j++) {
            _mm256_store_si256(q + j, _mm256_permute2x128_si256(u[j], u[4 + j], 0x20));
            _mm256_store_si256(q + j + 4, _mm256_permute2x128_si256(u[j], u[4 + j], 0x31));
        }
    }
}

inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

inline __m256 load_rows(const float* y, int nr) {
    if (nr == kRows) return _mm256_loadu_ps(y);
    alignas(32) float tmp[kRows] = {};
    for (int i = 0; i < nr; i++) tmp[i] = y[i];
    return _mm256_load_ps(tmp);
}

inline void store_rows(float* y, __m256 v, int nr) {
    if (nr == kRows) {
        _mm256_storeu_ps(y, v);
    } else {
        alignas(32) float tmp[kRows];
        _mm256_store_ps(tmp, v);
        for (int i = 0; i < nr; i++) y[i] = tmp[i];
    }
}

// T tokens x 8 rows. Q4_0: nibbles are unsigned, so maddubs takes them as they are and up to 8
// groups sum in 16 bits (8 * 2 * 15 * 127 < 2^15); the offset is removed per block in 32 bits.
template <int T>
void tile_q4_0(int64_t nb, const uint8_t* panel, const block_q8_0* x, int64_t ldx, const float* dx,
               const int32_t* sum8, float* y, int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows(y + t * ldy, nr) : _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * kPanelBlock;
        __m256i s16[T];
        const __m256i w0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + kRows * 4));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s16[t] = _mm256_maddubs_epi16(w0, bcast4(x[t * ldx + b].qs));
#pragma GCC unroll 1
        for (int g = 1; g < QK8_0 / 4; g++) {
            const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(pb + kRows * 4 + g * 32));
#pragma GCC unroll 8
            for (int t = 0; t < T; t++)
                s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, bcast4(x[t * ldx + b].qs + 4 * g)));
        }
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const __m256i s = _mm256_sub_epi32(_mm256_madd_epi16(s16[t], ones), _mm256_set1_epi32(sum8[t * ldx + b]));
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dw, _mm256_set1_ps(dx[t * ldx + b])), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows(y + t * ldy, acc[t], nr);
}

// Q8_0: signed weights, so maddubs gets |w| and x carrying w's sign; a 16-bit pair can reach
// 2 * 128 * 127, so every group widens to 32 bits at once.
template <int T>
void tile_q8_0(int64_t nb, const uint8_t* panel, const block_q8_0* x, int64_t ldx, const float* dx, const int32_t*,
               float* y, int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows(y + t * ldy, nr) : _mm256_setzero_ps();
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
                const __m256i xs = _mm256_sign_epi8(bcast4(x[t * ldx + b].qs + 4 * g), w);
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
    for (int t = 0; t < T; t++) store_rows(y + t * ldy, acc[t], nr);
}

using tile_fn = void (*)(int64_t, const uint8_t*, const block_q8_0*, int64_t, const float*, const int32_t*, float*,
                         int64_t, int, bool);

constexpr tile_fn kTilesQ4[kTok + 1] = {nullptr,      tile_q4_0<1>, tile_q4_0<2>, tile_q4_0<3>,
                                       tile_q4_0<4>, tile_q4_0<5>, tile_q4_0<6>};
constexpr tile_fn kTilesQ8[kTok + 1] = {nullptr,      tile_q8_0<1>, tile_q8_0<2>, tile_q8_0<3>,
                                       tile_q8_0<4>, tile_q8_0<5>, tile_q8_0<6>};

// Cache blocking: kKcBlocks blocks of K (a 6-token activation tile of ~16 KiB stays in L1) times
// kPanels panels of 8 rows (~92 KiB of Q4_0 panels in L2) are packed once and every token tile
// runs over all of them, so activations stream from L3 once per 32 rows.
constexpr int64_t kKcBlocks = 80;
constexpr int kPanels = 4;

template <typename Block>
void gemm_packed(const tile_fn* tiles, int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                 const void* x, float* y, int64_t ldy) {
    const int64_t nb = K / QK8_0;
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    thread_local ActSide side;
    struct alignas(32) Line { uint8_t b[32]; };
    thread_local std::vector<Line> panel_buf;
    fill_side(xb, n_tok * nb, side);
    const int64_t panel_bytes = std::min(nb, kKcBlocks) * kPanelBlock;
    panel_buf.resize(size_t(kPanels * panel_bytes / 32));
    uint8_t* panels = reinterpret_cast<uint8_t*>(panel_buf.data());
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    for (int64_t b0 = 0; b0 < nb; b0 += kKcBlocks) {
        const int64_t kb = std::min(kKcBlocks, nb - b0);
        for (int64_t r0 = 0; r0 < n_rows; r0 += kRows * kPanels) {
            const int np = int(std::min<int64_t>(kPanels, (n_rows - r0 + kRows - 1) / kRows));
            for (int p = 0; p < np; p++) {
                const int64_t rp = r0 + p * kRows;
                const int nr = int(std::min<int64_t>(kRows, n_rows - rp));
                pack_panel<Block>(wb + size_t(rp) * row_bytes, nr, nb, b0, kb, panels + p * panel_bytes);
            }
            for (int64_t t0 = 0; t0 < n_tok; t0 += kTok) {
                const int nt = int(std::min<int64_t>(kTok, n_tok - t0));
                const size_t o = size_t(t0 * nb + b0);
                for (int p = 0; p < np; p++) {
                    const int64_t rp = r0 + p * kRows;
                    const int nr = int(std::min<int64_t>(kRows, n_rows - rp));
                    tiles[nt](kb, panels + p * panel_bytes, xb + o, nb, side.d.data() + o, side.sum8.data() + o,
                              y + t0 * ldy + rp, ldy, nr, b0 > 0);
                }
            }
        }
    }
}

}  // namespace

void gemm_q4_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_packed<block_q4_0>(kTilesQ4, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q8_0_q8_0_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_packed<block_q8_0>(kTilesQ8, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
