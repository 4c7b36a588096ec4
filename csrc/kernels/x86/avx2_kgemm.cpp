// AVX2 integer GEMM for prefill over K-quant rows: Q4_K / Q5_K / Q6_K weights times Q8_K activation
// rows, with int8 dot products (maddubs) and each sub-block's integer scale applied in 32 bits, so a
// block's sum stays exact and each (row, token) output gets the bits of the type's dot
// (vec_dot_q4_K_q8_K_ref, vec_dot_q6_K_q8_K_ref: per block acc = fma(float(isum), d * x.d, acc), then
// for Q4_K / Q5_K acc = fma(float(-msum), dmin * x.d, acc)). Compiled with -mavx2 -mfma -mf16c.
//
// The rows stay in their GGUF blocks; eight at a time are unpacked into a panel (driver:
// kernels/x86/qgemm_x86.h), block by block: the rows' f32 scales, their sub-block scales as int16
// pairs, and the 256 quants as unsigned bytes in 64 groups of 32 bytes, where bytes 4i..4i+3 of group
// g are quants 4g..4g+3 of row i. One maddubs of a group with a token's 4 activation quants
// broadcast gives the 8 rows' partial sums side by side, as in the Q4_0 GEMM, and one madd with the
// scales' pairs takes them to int32 scaled by each row's own sub-block scale.
//
// 16-bit bounds (Q8_K quants are in [-128, 127]): a maddubs pair reaches 2*15*128 = 3840 for Q4_K,
// so a sub-block's 8 groups sum in 16 bits (30720); 2*31*128 = 7936 for Q5_K, 4 groups (31744);
// 2*63*128 = 16128 for Q6_K, 2 groups (32256).
#include "kernels/x86/kquants_x86.h"
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/qgemm_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

constexpr int kRows = 8;
constexpr int kTok = 6;
constexpr int kGroups = QK_K / 4;           // 4-quant groups per block
constexpr int kQuantBytes = kGroups * 32;  // a block's quants for the 8 rows

// Panel block of Q4_K / Q5_K rows: d[8], dmin[8] (f32), per sub-block j a vector of the rows' scales
// (lane i: sc_j of row i in both int16 halves), per sub-block pair p a vector of the rows' mins
// (lane i: m_2p, m_2p+1 of row i), then the quants.
struct K4Panel {
    static constexpr int kD = 0, kDmin = 32, kScales = 64, kMins = kScales + 8 * 32, kQuants = kMins + 4 * 32;
    static constexpr int kBytes = kQuants + kQuantBytes;
};
// Panel block of Q6_K rows: d[8] (f32), per 16-value sub-block j the rows' scales as above, per
// sub-block pair p the rows' (sc_2p, sc_2p+1) (for the -32 offset against the Q8_K sums), the quants
// (0..63).
struct Q6Panel {
    static constexpr int kD = 0, kScales = 32, kPairs = kScales + 16 * 32, kQuants = kPairs + 8 * 32;
    static constexpr int kBytes = kQuants + kQuantBytes;
};

template <typename Layout>
struct Cfg {
    static constexpr int kRows = 8;
    static constexpr int kTok = 6;
    static constexpr int kPanelBlock = Layout::kBytes;
    // a 6-token tile of 10 Q8_K blocks (17.5 KiB) stays in L1; 4 panels of 10 blocks (~100-112 KiB) in L2
    static constexpr int64_t kKcBlocks = 10;
    static constexpr int kPanels = 4;
};

inline int32_t pair16(int lo, int hi) { return int32_t(uint32_t(uint16_t(int16_t(lo))) | (uint32_t(uint16_t(int16_t(hi))) << 16)); }

// The 32 quants of chunk c (elements 32c..32c+31) of the 8 rows r[0..8) into groups 8c..8c+7.
inline void store_groups(uint8_t* quants, int c, const __m256i (&r)[kRows]) {
    __m256i q[kRows];
    transpose_8x8_epi32(r, q);
    for (int g = 0; g < kRows; g++) _mm256_store_si256(reinterpret_cast<__m256i*>(quants + (8 * c + g) * 32), q[g]);
}

template <typename Block>
void pack_k4(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    for (int64_t b = b0; b < b0 + kb; b++) {
        uint8_t* pb = panel + (b - b0) * K4Panel::kBytes;
        float* d = reinterpret_cast<float*>(pb + K4Panel::kD);
        float* dmin = reinterpret_cast<float*>(pb + K4Panel::kDmin);
        int32_t* scales = reinterpret_cast<int32_t*>(pb + K4Panel::kScales);
        int32_t* mins = reinterpret_cast<int32_t*>(pb + K4Panel::kMins);
        __m256i chunks[8][kRows];  // sub-block j of row i
        for (int i = 0; i < kRows; i++) {
            if (i >= nr) {
                d[i] = dmin[i] = 0.0f;
                for (int j = 0; j < 8; j++) scales[8 * j + i] = 0, chunks[j][i] = _mm256_setzero_si256();
                for (int p = 0; p < 4; p++) mins[8 * p + i] = 0;
                continue;
            }
            const Block& a = reinterpret_cast<const Block*>(w + size_t(i) * row_bytes)[b];
            d[i] = half_to_float(a.d);
            dmin[i] = half_to_float(a.dmin);
            const K4Scales s = unpack_scales_k4(a.scales);
            const auto sc = [&](int j) { return int((s.sc >> (8 * j)) & 0xff); };
            const auto m = [&](int j) { return int((s.m >> (8 * j)) & 0xff); };
            for (int j = 0; j < 8; j++) scales[8 * j + i] = pair16(sc(j), sc(j));
            for (int p = 0; p < 4; p++) mins[8 * p + i] = pair16(m(2 * p), m(2 * p + 1));
            __m256i qh = k4_high_bits(a);
            for (int c = 0; c < 4; c++) k4_chunk(a.qs, c, qh, chunks[2 * c][i], chunks[2 * c + 1][i]);
        }
        for (int j = 0; j < 8; j++) store_groups(pb + K4Panel::kQuants, j, chunks[j]);
    }
}

void pack_q6(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    for (int64_t b = b0; b < b0 + kb; b++) {
        uint8_t* pb = panel + (b - b0) * Q6Panel::kBytes;
        float* d = reinterpret_cast<float*>(pb + Q6Panel::kD);
        int32_t* scales = reinterpret_cast<int32_t*>(pb + Q6Panel::kScales);
        int32_t* pairs = reinterpret_cast<int32_t*>(pb + Q6Panel::kPairs);
        __m256i chunks[8][kRows];  // elements 32c..32c+31 of row i
        for (int i = 0; i < kRows; i++) {
            if (i >= nr) {
                d[i] = 0.0f;
                for (int j = 0; j < 16; j++) scales[8 * j + i] = 0;
                for (int p = 0; p < 8; p++) pairs[8 * p + i] = 0;
                for (int c = 0; c < 8; c++) chunks[c][i] = _mm256_setzero_si256();
                continue;
            }
            const block_q6_K& a = reinterpret_cast<const block_q6_K*>(w + size_t(i) * row_bytes)[b];
            d[i] = half_to_float(a.d);
            for (int j = 0; j < 16; j++) scales[8 * j + i] = pair16(a.scales[j], a.scales[j]);
            for (int p = 0; p < 8; p++) pairs[8 * p + i] = pair16(a.scales[2 * p], a.scales[2 * p + 1]);
            for (int h = 0; h < 2; h++) {
                __m256i v[4];
                unpack_q6_half(a.ql + 64 * h, a.qh + 32 * h, v);
                for (int g = 0; g < 4; g++) chunks[4 * h + g][i] = v[g];
            }
        }
        for (int c = 0; c < 8; c++) store_groups(pb + Q6Panel::kQuants, c, chunks[c]);
    }
}

inline __m256i bcast4(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

inline __m256i load_v(const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

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

// Per (token, block): the Q8_K sums of each sub-block pair of 32, as int16 pairs (lane p: sub-blocks
// 2p, 2p+1), the activations' side of the Q4_K / Q5_K mins.
struct MinSums {
    int32_t pair[4];
};

inline void fill_min_sums(const block_q8_K* x, int64_t n, std::vector<MinSums>& s) {
    s.resize(size_t(n));
    for (int64_t i = 0; i < n; i++)
        for (int p = 0; p < 4; p++) {
            const int16_t* bs = x[i].bsums + 4 * p;
            s[size_t(i)].pair[p] = pair16(bs[0] + bs[1], bs[2] + bs[3]);
        }
}

// T tokens x 8 rows of Q4_K (G = 8: a sub-block's groups sum in 16 bits) or Q5_K (G = 4).
template <int T, int G>
void tile_k4(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums* ms, float* y,
             int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * K4Panel::kBytes;
        const uint8_t* quants = pb + K4Panel::kQuants;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
        for (int j = 0; j < 8; j++) {
            const __m256i sc = load_v(pb + K4Panel::kScales + 32 * j);
#pragma GCC unroll 2
            for (int h = 0; h < 8; h += G) {
                __m256i s16[T];
                const __m256i w0 = load_v(quants + (8 * j + h) * 32);
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) s16[t] = _mm256_maddubs_epi16(w0, bcast4(x[t * ldx + b].qs + 32 * j + 4 * h));
#pragma GCC unroll 8
                for (int g = h + 1; g < h + G; g++) {
                    const __m256i w = load_v(quants + (8 * j + g) * 32);
#pragma GCC unroll 8
                    for (int t = 0; t < T; t++)
                        s16[t] = _mm256_add_epi16(s16[t], _mm256_maddubs_epi16(w, bcast4(x[t * ldx + b].qs + 32 * j + 4 * g)));
                }
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(s16[t], sc));
            }
        }
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb + K4Panel::kD));
        const __m256 dmin = _mm256_load_ps(reinterpret_cast<const float*>(pb + K4Panel::kDmin));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const MinSums& m = ms[t * ldx + b];
            __m256i msum = _mm256_madd_epi16(load_v(pb + K4Panel::kMins), _mm256_set1_epi32(m.pair[0]));
            for (int p = 1; p < 4; p++)
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(load_v(pb + K4Panel::kMins + 32 * p), _mm256_set1_epi32(m.pair[p])));
            const __m256 dx = _mm256_set1_ps(x[t * ldx + b].d);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[t]), _mm256_mul_ps(dw, dx), acc[t]);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_setzero_si256(), msum)),
                                     _mm256_mul_ps(dmin, dx), acc[t]);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows(y + t * ldy, acc[t], nr);
}

// T tokens x 8 rows of Q6_K: isum = sum_j sc_j (q . x)_j - 32 sum_j sc_j bsums_j, exact in 32 bits.
template <int T>
void tile_q6(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums*, float* y,
             int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * Q6Panel::kBytes;
        const uint8_t* quants = pb + Q6Panel::kQuants;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const int16_t* bs = x[t * ldx + b].bsums;
            __m256i off = _mm256_setzero_si256();
            for (int p = 0; p < 8; p++) {
                int32_t pr;
                std::memcpy(&pr, bs + 2 * p, 4);
                off = _mm256_add_epi32(off, _mm256_madd_epi16(load_v(pb + Q6Panel::kPairs + 32 * p), _mm256_set1_epi32(pr)));
            }
            s32[t] = _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_slli_epi32(off, 5));
        }
#pragma GCC unroll 1
        for (int j = 0; j < 16; j++) {
            const __m256i sc = load_v(pb + Q6Panel::kScales + 32 * j);
#pragma GCC unroll 2
            for (int h = 0; h < 4; h += 2) {
                const __m256i w0 = load_v(quants + (4 * j + h) * 32), w1 = load_v(quants + (4 * j + h + 1) * 32);
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const int8_t* xq = x[t * ldx + b].qs + 16 * j + 4 * h;
                    const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(w0, bcast4(xq)),
                                                         _mm256_maddubs_epi16(w1, bcast4(xq + 4)));
                    s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(s16, sc));
                }
            }
        }
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb + Q6Panel::kD));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[t]), _mm256_mul_ps(dw, _mm256_set1_ps(x[t * ldx + b].d)),
                                     acc[t]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows(y + t * ldy, acc[t], nr);
}

using ktile_fn = void (*)(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums* ms,
                          float* y, int64_t ldy, int nr, bool accumulate);

template <int G>
constexpr ktile_fn kTilesK4[kTok + 1] = {nullptr,         tile_k4<1, G>, tile_k4<2, G>, tile_k4<3, G>,
                                         tile_k4<4, G>, tile_k4<5, G>, tile_k4<6, G>};
constexpr ktile_fn kTilesQ6[kTok + 1] = {nullptr, tile_q6<1>, tile_q6<2>, tile_q6<3>, tile_q6<4>, tile_q6<5>, tile_q6<6>};

template <typename Layout, typename Pack>
void gemm_k(const ktile_fn* tiles, Pack pack, bool mins, int64_t K, int64_t n_rows, const void* w, size_t row_bytes,
            int64_t n_tok, const void* x, float* y, int64_t ldy) {
    static_assert(Cfg<Layout>::kRows == kRows && Cfg<Layout>::kTok == kTok, "the tiles' shape");
    const int64_t nb = K / QK_K;
    const block_q8_K* xb = static_cast<const block_q8_K*>(x);
    thread_local std::vector<MinSums> ms;
    if (mins) fill_min_sums(xb, n_tok * nb, ms);
    const uint8_t* wb = static_cast<const uint8_t*>(w);
    gemm_blocked<Cfg<Layout>>(
        nb, n_rows, n_tok,
        [&](int64_t rp, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
            pack(wb + size_t(rp) * row_bytes, row_bytes, nr, b0, kb, panel);
        },
        [&](int nt, int64_t kb, const uint8_t* panel, int64_t t0, int64_t b0, int64_t rp, int nr) {
            const size_t o = size_t(t0 * nb + b0);
            tiles[nt](kb, panel, xb + o, nb, mins ? ms.data() + o : nullptr, y + t0 * ldy + rp, ldy, nr, b0 > 0);
        });
}

}  // namespace

void gemm_q4_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k<K4Panel>(kTilesK4<8>, pack_k4<block_q4_K>, true, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q5_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k<K4Panel>(kTilesK4<4>, pack_k4<block_q5_K>, true, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q6_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k<Q6Panel>(kTilesQ6, pack_q6, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
