// The prefill integer-GEMM driver and panel helpers shared by the AVX2 and AVX-512 kernel files.
// The two files are compiled with different flags, so everything here has internal linkage: each
// file keeps its own copy, and no AVX-512 code can ever stand in for an AVX2 caller at link time.
//
// Weights arrive repacked (kernels/repack.h: scales first, rows in groups of 4). A kernel file packs
// Rows rows at a time into a panel, block by block (Rows f32 scales, then the quants in whatever
// order its tile wants), and a tile multiplies one panel by up to Tok activation rows.
#pragma once
#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/repack.h"
#include "kernels/x86/simd_x86.h"

namespace phi2cpu {
namespace x86 {
namespace {

// Per (token, block) of the activations: the f32 scale, and `bias` = -offset * (sum of the quants),
// what weights stored as unsigned q = value + offset owe each block's integer dot
// (sum (q - offset) x = sum q x - offset * sum x).
struct ActSide {
    std::vector<float> d;
    std::vector<int32_t> bias;
};

inline void fill_side(const block_q8_0* x, int64_t n, int32_t offset, ActSide& s) {
    s.d.resize(size_t(n));
    s.bias.resize(size_t(n));
    for (int64_t i = 0; i < n; i++) {
        s.bias[size_t(i)] = offset ? -offset * sum_q8(x[i].qs) : 0;
        s.d[size_t(i)] = half_to_float(x[i].d);
    }
}

// Block b of row i of repacked rows as 32 bytes of quants in block order (Q4_0: unsigned nibbles).
inline __m256i row_quants(const block_q4_0*, const uint8_t* w, const RepackedLayout& L, int i, int64_t b) {
    return unpack_q4_0(w + L.quants(i, b, 0));
}
inline __m256i row_quants(const block_q8_0*, const uint8_t* w, const RepackedLayout& L, int i, int64_t b) {
    return _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(w + L.quants(i, b, 1)),
                               reinterpret_cast<const __m128i*>(w + L.quants(i, b, 0)));
}

// Block b's 32 quants of rows [0, nr) of the repacked rows at w (rows past nr are zero), and their
// fp16 scales into dh[0..nr).
template <typename Block, int N>
inline void load_rows_block(const uint8_t* w, const RepackedLayout& L, int nr, int64_t b, __m256i (&r)[N],
                            uint16_t* dh) {
    for (int i = 0; i < N; i++) {
        if (i < nr) {
            std::memcpy(&dh[i], w + L.scale(i, b), 2);
            r[i] = row_quants(static_cast<const Block*>(nullptr), w, L, i, b);
        } else {
            dh[i] = 0;
            r[i] = _mm256_setzero_si256();
        }
    }
}

// The AVX2 tiles' helpers: 4 activation quants broadcast to every dword, and the y values of a
// tile's nr <= 8 rows (those past nr read as 0 and not written).
inline __m256i bcast4_epi32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

inline __m256 load_rows8(const float* y, int nr) {
    if (nr == 8) return _mm256_loadu_ps(y);
    alignas(32) float tmp[8] = {};
    for (int i = 0; i < nr; i++) tmp[i] = y[i];
    return _mm256_load_ps(tmp);
}

inline void store_rows8(float* y, __m256 v, int nr) {
    if (nr == 8) {
        _mm256_storeu_ps(y, v);
    } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        for (int i = 0; i < nr; i++) y[i] = tmp[i];
    }
}

// An 8 x 8 transpose of dwords: out[g] holds dword g of each row r[i] in its dword i.
inline void transpose_8x8_epi32(const __m256i* r, __m256i* out) {
    __m256i t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);      // dwords 0,1 | 4,5 of rows i, i+1
        t[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);  // dwords 2,3 | 6,7
    }
    for (int h = 0; h < 8; h += 4) {  // rows h..h+3: u[h + j] holds dword j | j + 4
        u[h] = _mm256_unpacklo_epi64(t[h], t[h + 2]);
        u[h + 1] = _mm256_unpackhi_epi64(t[h], t[h + 2]);
        u[h + 2] = _mm256_unpacklo_epi64(t[h + 1], t[h + 3]);
        u[h + 3] = _mm256_unpackhi_epi64(t[h + 1], t[h + 3]);
    }
    for (int j = 0; j < 4; j++) {
        out[j] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x20);
        out[j + 4] = _mm256_permute2x128_si256(u[j], u[4 + j], 0x31);
    }
}

// One tile: panel (nb blocks) times nt activation rows x (ldx blocks apart) with their scales dx and
// biases, into y (ldy apart) for nr rows, adding to y where `accumulate`.
using tile_fn = void (*)(int64_t nb, const uint8_t* panel, const block_q8_0* x, int64_t ldx, const float* dx,
                         const int32_t* bias, float* y, int64_t ldy, int nr, bool accumulate);

// Cache blocking: Cfg::kKcBlocks blocks of K (a token tile of activations stays in L1) times
// Cfg::kPanels panels (in L2) are packed once and every token tile runs over all of them, so the
// activations stream from L3 once per kPanels * kRows rows. pack(rp, nr, b0, kb, panel) packs blocks
// [b0, b0 + kb) of the nr rows from row rp; tile(nt, kb, panel, t0, b0, rp, nr) multiplies such a
// panel by the nt <= Cfg::kTok tokens from t0 (adding to y where b0 > 0).
template <typename Cfg, typename Pack, typename Tile>
void gemm_blocked(int64_t nb, int64_t n_rows, int64_t n_tok, Pack&& pack, Tile&& tile) {
    struct alignas(64) Line {
        uint8_t b[64];
    };
    thread_local std::vector<Line> panel_buf;
    const int64_t panel_bytes = std::min(nb, Cfg::kKcBlocks) * Cfg::kPanelBlock;
    static_assert(Cfg::kPanelBlock % 32 == 0, "panel blocks keep the 32-byte alignment of the buffer");
    panel_buf.resize(size_t((Cfg::kPanels * panel_bytes + 63) / 64));
    uint8_t* panels = reinterpret_cast<uint8_t*>(panel_buf.data());
    for (int64_t b0 = 0; b0 < nb; b0 += Cfg::kKcBlocks) {
        const int64_t kb = std::min(Cfg::kKcBlocks, nb - b0);
        for (int64_t r0 = 0; r0 < n_rows; r0 += Cfg::kRows * Cfg::kPanels) {
            const int np = int(std::min<int64_t>(Cfg::kPanels, (n_rows - r0 + Cfg::kRows - 1) / Cfg::kRows));
            for (int p = 0; p < np; p++) {
                const int64_t rp = r0 + p * Cfg::kRows;
                pack(rp, int(std::min<int64_t>(Cfg::kRows, n_rows - rp)), b0, kb, panels + p * panel_bytes);
            }
            for (int64_t t0 = 0; t0 < n_tok; t0 += Cfg::kTok) {
                const int nt = int(std::min<int64_t>(Cfg::kTok, n_tok - t0));
                for (int p = 0; p < np; p++) {
                    const int64_t rp = r0 + p * Cfg::kRows;
                    tile(nt, kb, panels + p * panel_bytes, t0, b0, rp, int(std::min<int64_t>(Cfg::kRows, n_rows - rp)));
                }
            }
        }
    }
}

// The Q8_0-activation GEMM over repacked Q4_0 / Q8_0 rows: tiles[nt] handles nt <= Cfg::kTok tokens;
// Cfg::pack<Block>(w, nr, nb, b0, kb, panel) packs blocks [b0, b0 + kb) of nr rows starting at w.
template <typename Cfg, typename Block>
void gemm_packed(const tile_fn* tiles, int32_t offset, int64_t K, int64_t n_rows, const void* w, size_t row_bytes,
                 int64_t n_tok, const void* x, float* y, int64_t ldy) {
    const int64_t nb = K / QK8_0;
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    thread_local ActSide side;
    fill_side(xb, n_tok * nb, offset, side);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    gemm_blocked<Cfg>(
        nb, n_rows, n_tok,
        [&](int64_t rp, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
            Cfg::template pack<Block>(wb + size_t(rp) * row_bytes, nr, nb, b0, kb, panel);
        },
        [&](int nt, int64_t kb, const uint8_t* panel, int64_t t0, int64_t b0, int64_t rp, int nr) {
            const size_t o = size_t(t0 * nb + b0);
            tiles[nt](kb, panel, xb + o, nb, side.d.data() + o, side.bias.data() + o, y + t0 * ldy + rp, ldy, nr,
                      b0 > 0);
        });
}

}  // namespace
}  // namespace x86
}  // namespace phi2cpu
