// AVX2 integer GEMM for prefill over K-quant rows: Q2_K / Q3_K / Q4_K / Q5_K / Q6_K / IQ4_XS weights
// times Q8_K activation rows, with int8 dot products (maddubs) and each sub-block's integer scale applied
// in 32 bits, so a block's sum stays exact and each (row, token) output gets the bits of the type's
// dot (vec_dot_q4_K_q8_K_ref and the others: per block acc = fma(float(isum), d * x.d, acc), then
// for the types with mins acc = fma(float(-msum), dmin * x.d, acc)). Compiled with -mavx2 -mfma -mf16c.
//
// The rows stay in the rows-in-lanes groups of kernels/repack.h (their last n_rows % 8 rows in
// GGUF blocks); eight at a time are unpacked into a panel (driver:
// kernels/x86/qgemm_x86.h), block by block: the rows' f32 scales, their sub-block scales as int16
// pairs, and the 256 quants as unsigned bytes in 64 groups of 32 bytes, where bytes 4i..4i+3 of group
// g are quants 4g..4g+3 of row i. One maddubs of a group with a token's 4 activation quants
// broadcast gives the 8 rows' partial sums side by side, as in the Q4_0 GEMM, and one madd with the
// scales' pairs takes them to int32 scaled by each row's own sub-block scale.
//
// 16-bit bounds (Q8_K quants are in [-128, 127]): a maddubs pair reaches 2*15*128 = 3840 for Q4_K,
// so a sub-block's 8 groups sum in 16 bits (30720); 2*31*128 = 7936 for Q5_K, 4 groups (31744);
// 2*63*128 = 16128 for Q6_K, 2 groups (32256); Q3_K (q + 4 <= 7) and Q2_K (<= 3) sum a 16-value
// sub-block's 4 groups (7168, 3072). IQ4_XS's signed values go through the sign trick (tile_iq4_xs).
#include "kernels/dispatch.h"
#include "kernels/repack.h"
#include "kernels/x86/kquants_x86.h"
#include "kernels/x86/krows_x86.h"
#include "kernels/x86/lowk_x86.h"
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/qgemm_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

constexpr int kRows = 8;
constexpr int kTok = kTileTokens;

template <typename Layout>
struct Cfg {
    static constexpr int kRows = 8;
    static constexpr int kTok = kTileTokens;
    static constexpr int kPanelBlock = Layout::kBytes;
    // a 6-token tile of 10 Q8_K blocks (17.5 KiB) stays in L1; 4 panels of 10 blocks (~100-112 KiB) in L2
    static constexpr int64_t kKcBlocks = 10;
    static constexpr int kPanels = 4;
};

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

// Q4_K / Q5_K rows in lanes (repack_q4_K_rows8, repack_q5_K_rows8): the group block's size and
// where its quants start.
template <bool Q5>
struct K4Rows8 {
    static constexpr size_t kBlock = Q5 ? kQ5GroupBlockBytes : kK4GroupBlockBytes;
    static constexpr int kQuantsAt = Q5 ? 384 : 128;
};

// Quant vector (c, g) of a Q4_K / Q5_K group block as unsigned bytes: values 4g..4g+3 of sub-block 2c
// of each row in lo, of sub-block 2c + 1 in hi (Q5_K: with their fifth bits).
template <bool Q5>
inline void k4_rows8_values(const uint8_t* grp, int c, int gr, __m256i& lo, __m256i& hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i v = load256(grp + K4Rows8<Q5>::kQuantsAt + (8 * c + gr) * 32);
    lo = _mm256_and_si256(v, m4);
    hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    if constexpr (Q5) {
        const __m256i hv = load256(grp + 128 + 32 * gr);
        lo = _mm256_or_si256(lo, byte_bit_to(hv, 2 * c, 4));  // the fifth bits: bit j of qh vector g
        hi = _mm256_or_si256(hi, byte_bit_to(hv, 2 * c + 1, 4));
    }
}

// Q4_K / Q5_K rows in lanes: a panel of 8 rows is one group; the last n_rows % 8 rows (nr < 8) are
// GGUF blocks.
template <bool Q5>
void pack_k4_rows8(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    if (nr < kRows) {
        if constexpr (Q5)
            return pack_k4<block_q5_K>(w, row_bytes, nr, b0, kb, panel);
        else
            return pack_k4<block_q4_K>(w, row_bytes, nr, b0, kb, panel);
    }
    for (int64_t b = b0; b < b0 + kb; b++) {
        const uint8_t* g = w + size_t(b) * K4Rows8<Q5>::kBlock;
        uint8_t* pb = panel + (b - b0) * K4Panel::kBytes;
        _mm256_store_ps(reinterpret_cast<float*>(pb + K4Panel::kD),
                        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g))));
        _mm256_store_ps(reinterpret_cast<float*>(pb + K4Panel::kDmin),
                        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16))));
        uint64_t sc[8], m[8];
        unpack_scales_k4_rows8(g + 32, sc, m);
        for (int j = 0; j < 8; j++)
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K4Panel::kScales + 32 * j), lanes_pair16(sc[j]));
        for (int p = 0; p < 4; p++)
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K4Panel::kMins + 32 * p),
                               lanes_pair16(m[2 * p], m[2 * p + 1]));
        for (int c = 0; c < 4; c++)
            for (int gr = 0; gr < 8; gr++) {
                __m256i lo, hi;
                k4_rows8_values<Q5>(g, c, gr, lo, hi);
                _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K4Panel::kQuants + (8 * (2 * c) + gr) * 32), lo);
                _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K4Panel::kQuants + (8 * (2 * c + 1) + gr) * 32), hi);
            }
    }
}

// One row's block as the K16 panel wants it: scales sc_j, coefficients c_j (K16Panel) and the 8
// groups of 32 values as unsigned bytes (group g: values 32g..32g+31).
struct K16Row {
    float d, dmin;
    int sc[16], c[16];
    __m256i v[8];
};

inline void unpack_k16(const block_q6_K& a, K16Row& r) {
    r.d = half_to_float(a.d);
    r.dmin = 0.0f;
    for (int j = 0; j < 16; j++) r.sc[j] = a.scales[j], r.c[j] = -32 * a.scales[j];
    for (int h = 0; h < 2; h++) {
        __m256i v[4];
        unpack_q6_half(a.ql + 64 * h, a.qh + 32 * h, v);
        for (int g = 0; g < 4; g++) r.v[4 * h + g] = v[g];
    }
}

inline void unpack_k16(const block_q3_K& a, K16Row& r) {
    r.d = half_to_float(a.d);
    r.dmin = 0.0f;
    for (int j = 0; j < 16; j++) r.sc[j] = q3_scale(a.scales, j), r.c[j] = -4 * r.sc[j];
    const __m256i hm = load256(a.hmask);
    for (int h = 0; h < 2; h++) {
        const __m256i q = load256(a.qs + 32 * h);
        for (int k = 0; k < 4; k++) r.v[4 * h + k] = q3_group(q, hm, k, 4 * h + k);
    }
}

inline void unpack_k16(const block_q2_K& a, K16Row& r) {
    r.d = half_to_float(a.d);
    r.dmin = half_to_float(a.dmin);
    for (int j = 0; j < 16; j++) r.sc[j] = a.scales[j] & 15, r.c[j] = a.scales[j] >> 4;
    for (int h = 0; h < 2; h++) {
        const __m256i q = load256(a.qs + 32 * h);
        for (int k = 0; k < 4; k++) r.v[4 * h + k] = k2_field(q, k);
    }
}

template <typename Block>
void pack_k16(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    for (int64_t b = b0; b < b0 + kb; b++) {
        uint8_t* pb = panel + (b - b0) * K16Panel::kBytes;
        float* d = reinterpret_cast<float*>(pb + K16Panel::kD);
        float* dmin = reinterpret_cast<float*>(pb + K16Panel::kDmin);
        int32_t* scales = reinterpret_cast<int32_t*>(pb + K16Panel::kScales);
        int32_t* coef = reinterpret_cast<int32_t*>(pb + K16Panel::kCoef);
        __m256i chunks[8][kRows];  // values 32c..32c+31 of row i
        for (int i = 0; i < kRows; i++) {
            K16Row r{};
            if (i < nr) unpack_k16(reinterpret_cast<const Block*>(w + size_t(i) * row_bytes)[b], r);
            d[i] = r.d;
            dmin[i] = r.dmin;
            for (int j = 0; j < 16; j++) scales[8 * j + i] = pair16(r.sc[j], r.sc[j]);
            for (int p = 0; p < 8; p++) coef[8 * p + i] = pair16(r.c[2 * p], r.c[2 * p + 1]);
            for (int c = 0; c < 8; c++) chunks[c][i] = i < nr ? r.v[c] : _mm256_setzero_si256();
        }
        for (int c = 0; c < 8; c++) store_groups(pb + K16Panel::kQuants, c, chunks[c]);
    }
}

void pack_iq4_xs(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    const __m256i table = iq4nl_table256();
    for (int64_t b = b0; b < b0 + kb; b++) {
        uint8_t* pb = panel + (b - b0) * XsPanel::kBytes;
        float* d = reinterpret_cast<float*>(pb + XsPanel::kD);
        int32_t* scales = reinterpret_cast<int32_t*>(pb + XsPanel::kScales);
        __m256i chunks[8][kRows];  // sub-block j of row i
        for (int i = 0; i < kRows; i++) {
            if (i >= nr) {
                d[i] = 0.0f;
                for (int j = 0; j < 8; j++) scales[8 * j + i] = 0, chunks[j][i] = _mm256_setzero_si256();
                continue;
            }
            const block_iq4_xs& a = reinterpret_cast<const block_iq4_xs*>(w + size_t(i) * row_bytes)[b];
            d[i] = half_to_float(a.d);
            for (int j = 0; j < 8; j++) {
                const int ls = iq4xs_scale(a, j);
                scales[8 * j + i] = pair16(ls, ls);
                chunks[j][i] = iq4xs_values(a, j, table);
            }
        }
        for (int j = 0; j < 8; j++) store_groups(pb + XsPanel::kQuants, j, chunks[j]);
    }
}

// The scale pairs (ls_j - 32, ls_j - 32) of 8 IQ4_XS rows in lanes (repack_iq4_xs_rows8), one vector
// per sub-block j, from the rows' scales_h and scales_l side by side in 32-bit lanes.
inline void xs_scales_rows8(const uint8_t* g, __m256i (&sc)[8]) {
    const __m256i sh = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16)));
    const __m256i sl = load256(g + 32);
    for (int j = 0; j < 8; j++) {
        const __m256i ls =
            _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(sl, 4 * j), _mm256_set1_epi32(15)),
                            _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(sh, 2 * j), _mm256_set1_epi32(3)), 4));
        const __m256i v = _mm256_sub_epi32(ls, _mm256_set1_epi32(32));
        sc[j] = _mm256_blend_epi16(v, _mm256_slli_epi32(v, 16), 0xaa);
    }
}

// Quant vector (j, g) of an IQ4_XS group block as signed values: values 4g..4g+3 of sub-block j of
// each row in lo, values 16 + 4g..16 + 4g + 3 in hi.
inline void xs_rows8_values(const uint8_t* g, int j, int gr, __m256i table, __m256i& lo, __m256i& hi) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i v = load256(g + 64 + (4 * j + gr) * 32);
    lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, m4));
    hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), m4));
}

// IQ4_XS rows in lanes (a full panel is one group; nr < 8: GGUF blocks).
void pack_iq4_xs_rows8(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    if (nr < kRows) return pack_iq4_xs(w, row_bytes, nr, b0, kb, panel);
    const __m256i table = iq4nl_table256();
    for (int64_t b = b0; b < b0 + kb; b++) {
        const uint8_t* g = w + size_t(b) * kXsGroupBlockBytes;
        uint8_t* pb = panel + (b - b0) * XsPanel::kBytes;
        _mm256_store_ps(reinterpret_cast<float*>(pb + XsPanel::kD),
                        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g))));
        __m256i sc[8];
        xs_scales_rows8(g, sc);
        for (int j = 0; j < 8; j++) {
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb + XsPanel::kScales + 32 * j), sc[j]);
            for (int gr = 0; gr < 4; gr++) {
                __m256i lo, hi;
                xs_rows8_values(g, j, gr, table, lo, hi);
                _mm256_store_si256(reinterpret_cast<__m256i*>(pb + XsPanel::kQuants + (8 * j + gr) * 32), lo);
                _mm256_store_si256(reinterpret_cast<__m256i*>(pb + XsPanel::kQuants + (8 * j + 4 + gr) * 32), hi);
            }
        }
    }
}

// Q6_K rows as repack_q6_K_rows8 leaves them (a full panel is one group; nr < 8: GGUF blocks).
void pack_q6_K_rows8(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    if (nr < kRows) return pack_k16<block_q6_K>(w, row_bytes, nr, b0, kb, panel);
    for (int64_t b = b0; b < b0 + kb; b++) {
        const uint8_t* g = w + size_t(b) * kQ6GroupBlockBytes;
        uint8_t* pb = panel + (b - b0) * K16Panel::kBytes;
        _mm256_store_ps(reinterpret_cast<float*>(pb + K16Panel::kD),
                        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g))));
        _mm256_store_ps(reinterpret_cast<float*>(pb + K16Panel::kDmin), _mm256_setzero_ps());
        uint64_t sw[16];
        std::memcpy(sw, g + 16, sizeof sw);
        for (int j = 0; j < 16; j++)
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K16Panel::kScales + 32 * j),
                               lanes_pair16_signed(sw[j], sw[j]));
        for (int p = 0; p < 8; p++)
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K16Panel::kCoef + 32 * p),
                               lanes_pair16_signed(sw[2 * p], sw[2 * p + 1], -32));
        for (int h = 0; h < 2; h++)
            for (int gr = 0; gr < 8; gr++) {
                const uint8_t* q = g + 144 + (8 * h + gr) * 96;
                __m256i v[4];
                unpack_q6_half(q, q + 64, v);
                for (int k = 0; k < 4; k++)
                    _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K16Panel::kQuants + (8 * (4 * h + k) + gr) * 32),
                                       v[k]);
            }
    }
}

// The K16 panel's scale and coefficient vectors of 8 Q2_K rows in lanes (repack_q2_K_rows8), from the
// block's 128 scale bytes: sc_j (low nibbles) and the mins m_j (high nibbles) in pairs.
inline void q2_K_scales_rows8(const uint8_t* p, __m256i (&sc)[16], __m256i (&coef)[8]) {
    uint64_t w[16];
    std::memcpy(w, p, sizeof w);
    const uint64_t low4 = 0x0f0f0f0f0f0f0f0full;
    for (int j = 0; j < 16; j++) sc[j] = lanes_pair16(w[j] & low4);
    for (int q = 0; q < 8; q++) coef[q] = lanes_pair16((w[2 * q] >> 4) & low4, (w[2 * q + 1] >> 4) & low4);
}

// The same for 8 Q3_K rows in lanes (repack_q3_K_rows8), from the block's 96 scale bytes: the signed
// scales sc_j (q3_scale's packing, eight rows per 64-bit word) and the coefficients -4 sc_j.
inline void q3_K_scales_rows8(const uint8_t* p, __m256i (&sc)[16], __m256i (&coef)[8]) {
    uint64_t w[12], s[16];
    std::memcpy(w, p, sizeof w);
    const uint64_t low4 = 0x0f0f0f0f0f0f0f0full, top2 = 0x0303030303030303ull, b80 = 0x8080808080808080ull;
    for (int j = 0; j < 16; j++) {
        const uint64_t low = j < 8 ? w[j] & low4 : (w[j - 8] >> 4) & low4;
        const uint64_t u = low | (((w[8 + j % 4] >> (2 * (j / 4))) & top2) << 4);  // 0..63 per byte
        s[j] = ((u | b80) - 0x2020202020202020ull) ^ b80;                          // u - 32 per byte, no borrow
    }
    for (int j = 0; j < 16; j++) sc[j] = lanes_pair16_signed(s[j], s[j]);
    for (int q = 0; q < 8; q++) coef[q] = lanes_pair16_signed(s[2 * q], s[2 * q + 1], -4);
}

// Quant vector (h, g) of Q2_K / Q3_K rows in lanes: bit pair s holds values 128h + 32s + 4g .. +3,
// chunk 4h + s of the K16 panel (Q3_K: with its high bits from hmask vector g, as q3_group).
inline __m256i k2_rows8_values(__m256i v, int s) { return k2_field(v, s); }
inline __m256i k2_rows8_values(__m256i v, __m256i hm, int h, int s) {
    return _mm256_or_si256(k2_field(v, s), byte_bit_to(hm, 4 * h + s, 2));
}

template <bool Q3>
void pack_k2_rows8(const uint8_t* w, size_t row_bytes, int nr, int64_t b0, int64_t kb, uint8_t* panel) {
    if (nr < kRows) {
        if constexpr (Q3)
            return pack_k16<block_q3_K>(w, row_bytes, nr, b0, kb, panel);
        else
            return pack_k16<block_q2_K>(w, row_bytes, nr, b0, kb, panel);
    }
    constexpr size_t kBlock = Q3 ? kQ3GroupBlockBytes : kQ2GroupBlockBytes;
    constexpr int kScaleAt = Q3 ? 16 : 32, kQuantsAt = Q3 ? 368 : 160;
    for (int64_t b = b0; b < b0 + kb; b++) {
        const uint8_t* g = w + size_t(b) * kBlock;
        uint8_t* pb = panel + (b - b0) * K16Panel::kBytes;
        _mm256_store_ps(reinterpret_cast<float*>(pb + K16Panel::kD),
                        _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g))));
        _mm256_store_ps(
            reinterpret_cast<float*>(pb + K16Panel::kDmin),
            Q3 ? _mm256_setzero_ps() : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16))));
        __m256i sc[16], coef[8];
        if constexpr (Q3)
            q3_K_scales_rows8(g + kScaleAt, sc, coef);
        else
            q2_K_scales_rows8(g + kScaleAt, sc, coef);
        for (int j = 0; j < 16; j++)
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K16Panel::kScales + 32 * j), sc[j]);
        for (int q = 0; q < 8; q++)
            _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K16Panel::kCoef + 32 * q), coef[q]);
        for (int h = 0; h < 2; h++)
            for (int gr = 0; gr < 8; gr++) {
                const __m256i v = load256(g + kQuantsAt + (8 * h + gr) * 32);
                for (int s = 0; s < 4; s++) {
                    __m256i u;
                    if constexpr (Q3)
                        u = k2_rows8_values(v, load256(g + 112 + 32 * gr), h, s);
                    else
                        u = k2_rows8_values(v, s);
                    _mm256_store_si256(reinterpret_cast<__m256i*>(pb + K16Panel::kQuants + (8 * (4 * h + s) + gr) * 32),
                                       u);
                }
            }
    }
}

inline __m256i load_v(const uint8_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }

// One panel block's isum for T tokens, the part tile_k4 and tile_k16 share: kSub sub-blocks of kSubGroups
// 4-quant groups, G groups summed in 16 bits before the sub-block's scale madd (scales: one vector
// per sub-block).
template <int T, int kSub, int kSubGroups, int G>
inline void panel_block_sums(const uint8_t* scales, const uint8_t* quants, const block_q8_K* x, int64_t ldx, int64_t b,
                             __m256i (&s32)[T]) {
#pragma GCC unroll 1
    for (int j = 0; j < kSub; j++) {
        const __m256i sc = load_v(scales + 32 * j);
#pragma GCC unroll 2
        for (int h = 0; h < kSubGroups; h += G) {
            __m256i s16[T];
#pragma GCC unroll 8
            for (int g = h; g < h + G; g++) {
                const __m256i w = load_v(quants + (kSubGroups * j + g) * 32);
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const __m256i p =
                        _mm256_maddubs_epi16(w, bcast4_epi32(x[t * ldx + b].qs + 4 * (kSubGroups * j + g)));
                    s16[t] = g == h ? p : _mm256_add_epi16(s16[t], p);
                }
            }
#pragma GCC unroll 8
            for (int t = 0; t < T; t++) s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(s16[t], sc));
        }
    }
}

// T tokens x 8 rows of Q4_K (G = 8: a sub-block's groups sum in 16 bits) or Q5_K (G = 4).
template <int T, int G>
void tile_k4(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums* ms, float* y,
             int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * K4Panel::kBytes;
        const uint8_t* quants = pb + K4Panel::kQuants;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
        panel_block_sums<T, 8, 8, G>(pb + K4Panel::kScales, quants, x, ldx, b, s32);
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb + K4Panel::kD));
        const __m256 dmin = _mm256_load_ps(reinterpret_cast<const float*>(pb + K4Panel::kDmin));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) {
            const MinSums& m = ms[t * ldx + b];
            __m256i msum = _mm256_madd_epi16(load_v(pb + K4Panel::kMins), _mm256_set1_epi32(m.pair[0]));
            for (int p = 1; p < 4; p++)
                msum = _mm256_add_epi32(
                    msum, _mm256_madd_epi16(load_v(pb + K4Panel::kMins + 32 * p), _mm256_set1_epi32(m.pair[p])));
            const __m256 dx = _mm256_set1_ps(x[t * ldx + b].d);
            acc[t] = block_fma(acc[t], s32[t], msum, dw, dmin, dx);
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

// T tokens x 8 rows of 16-value sub-blocks: isum = sum_j sc_j (q . x)_j plus, for Q6_K and Q3_K,
// sum_j c_j bsums_j (the offset of the unsigned values), exact in 32 bits; Q2_K's (Mins) sum_j c_j
// bsums_j is its msum. G groups of 4 sum in 16 bits before the scale (Q6_K 2, Q2_K / Q3_K 4).
template <int T, int G, bool Mins>
void tile_k16(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums*, float* y, int64_t ldy,
              int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * K16Panel::kBytes;
        const uint8_t* quants = pb + K16Panel::kQuants;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
        panel_block_sums<T, 16, 4, G>(pb + K16Panel::kScales, quants, x, ldx, b, s32);
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) acc[t] = k16_panel_step<Mins>(acc[t], s32[t], pb, x[t * ldx + b]);
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

// Pairwise sums of the signed bytes w times x as int16: maddubs of |x| (Q8_K's -128 read as 128) with
// w carrying x's sign.
inline __m256i signed_maddubs(__m256i w, __m256i x) {
    return _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
}

// T tokens x 8 rows of IQ4_XS: signed values, so maddubs takes |x| (Q8_K's -128 read as 128) and the
// values carrying x's sign; a pair reaches 2*128*127 = 32512, so every group is scaled and widened to
// 32 bits at once.
template <int T>
void tile_iq4_xs(int64_t nb, const uint8_t* panel, const block_q8_K* x, int64_t ldx, const MinSums*, float* y,
                 int64_t ldy, int nr, bool accumulate) {
    __m256 acc[T];
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) acc[t] = accumulate ? load_rows8(y + t * ldy, nr) : _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t* pb = panel + b * XsPanel::kBytes;
        const uint8_t* quants = pb + XsPanel::kQuants;
        __m256i s32[T];
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) s32[t] = _mm256_setzero_si256();
#pragma GCC unroll 1
        for (int j = 0; j < 8; j++) {
            const __m256i sc = load_v(pb + XsPanel::kScales + 32 * j);
#pragma GCC unroll 2
            for (int g = 0; g < 8; g++) {
                const __m256i w = load_v(quants + (8 * j + g) * 32);
#pragma GCC unroll 8
                for (int t = 0; t < T; t++) {
                    const __m256i p = signed_maddubs(w, bcast4_epi32(x[t * ldx + b].qs + 32 * j + 4 * g));
                    s32[t] = _mm256_add_epi32(s32[t], _mm256_madd_epi16(p, sc));
                }
            }
        }
        const __m256 dw = _mm256_load_ps(reinterpret_cast<const float*>(pb + XsPanel::kD));
#pragma GCC unroll 8
        for (int t = 0; t < T; t++) acc[t] = block_fma(acc[t], s32[t], dw, _mm256_set1_ps(x[t * ldx + b].d));
    }
#pragma GCC unroll 8
    for (int t = 0; t < T; t++) store_rows8(y + t * ldy, acc[t], nr);
}

template <int G>
constexpr ktile_fn kTilesK4[kTok + 1] = {nullptr,       tile_k4<1, G>, tile_k4<2, G>, tile_k4<3, G>,
                                         tile_k4<4, G>, tile_k4<5, G>, tile_k4<6, G>};
template <int G, bool Mins>
constexpr ktile_fn kTilesK16[kTok + 1] = {nullptr,
                                          tile_k16<1, G, Mins>,
                                          tile_k16<2, G, Mins>,
                                          tile_k16<3, G, Mins>,
                                          tile_k16<4, G, Mins>,
                                          tile_k16<5, G, Mins>,
                                          tile_k16<6, G, Mins>};

constexpr ktile_fn kTilesXs[kTok + 1] = {nullptr,        tile_iq4_xs<1>, tile_iq4_xs<2>, tile_iq4_xs<3>,
                                         tile_iq4_xs<4>, tile_iq4_xs<5>, tile_iq4_xs<6>};

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

// Decoding over Q4_K / Q5_K rows in lanes (repack_q4_K_rows8, repack_q5_K_rows8): per group of 8 rows
// and block, the scales are unpacked once for every token, and each token's 8 row sums come side by
// side from one maddubs per group, in the order of the dot (each lane: acc = fma(float(isum), d * x.d,
// acc), then the mins'). G groups sum in 16 bits before the scale (Q4_K 8, Q5_K 4; bounds above).
template <int T, bool Q5>
void gemv_group_k4(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums* ms, float* y, int64_t ldy) {
    constexpr int G = Q5 ? 4 : 8;
    __m256 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += K4Rows8<Q5>::kBlock) {
        uint64_t sc8[8], m8[8];
        unpack_scales_k4_rows8(g + 32, sc8, m8);
        __m256i sc[8], mins[4];
        for (int j = 0; j < 8; j++) sc[j] = lanes_pair16(sc8[j]);
        for (int p = 0; p < 4; p++) mins[p] = lanes_pair16(m8[2 * p], m8[2 * p + 1]);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
        const __m256 dmin = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16)));
        for (int t = 0; t < T; t++) {
            const block_q8_K& xt = x[t * nb + b];
            __m256i s32 = _mm256_setzero_si256();
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m256i lo16 = _mm256_setzero_si256(), hi16 = _mm256_setzero_si256();
#pragma GCC unroll 8
                for (int gr = 0; gr < 8; gr++) {
                    __m256i lo, hi;
                    k4_rows8_values<Q5>(g, c, gr, lo, hi);
                    const __m256i pl = _mm256_maddubs_epi16(lo, bcast4_epi32(xt.qs + 64 * c + 4 * gr));
                    const __m256i ph = _mm256_maddubs_epi16(hi, bcast4_epi32(xt.qs + 64 * c + 32 + 4 * gr));
                    lo16 = gr % G == 0 ? pl : _mm256_add_epi16(lo16, pl);
                    hi16 = gr % G == 0 ? ph : _mm256_add_epi16(hi16, ph);
                    if (gr % G == G - 1)
                        s32 = _mm256_add_epi32(s32, _mm256_add_epi32(_mm256_madd_epi16(lo16, sc[2 * c]),
                                                                     _mm256_madd_epi16(hi16, sc[2 * c + 1])));
                }
            }
            const MinSums& m = ms[t * nb + b];
            __m256i msum = _mm256_madd_epi16(mins[0], _mm256_set1_epi32(m.pair[0]));
            for (int p = 1; p < 4; p++)
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mins[p], _mm256_set1_epi32(m.pair[p])));
            const __m256 dx = _mm256_set1_ps(xt.d);
            acc[t] = block_fma(acc[t], s32, msum, dw, dmin, dx);
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}

// The same for Q6_K rows in lanes (repack_q6_K_rows8): isum = sum_j sc_j (q . x)_j - 32 sum_j sc_j bsums_j.
template <int T>
void gemv_group_q6_K(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums*, float* y, int64_t ldy) {
    constexpr int64_t n_tok = T;
    __m256 acc[T];
    for (int64_t t = 0; t < n_tok; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += kQ6GroupBlockBytes) {
        uint64_t sw[16];
        std::memcpy(sw, g + 16, sizeof sw);
        __m256i sc[16], off[8];
        for (int j = 0; j < 16; j++) sc[j] = lanes_pair16_signed(sw[j], sw[j]);
        for (int p = 0; p < 8; p++) off[p] = lanes_pair16_signed(sw[2 * p], sw[2 * p + 1], -32);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
        for (int64_t t = 0; t < n_tok; t++) {
            const block_q8_K& xt = x[t * nb + b];
            __m256i s32 = _mm256_setzero_si256();
            for (int p = 0; p < 8; p++) {
                int32_t pr;
                std::memcpy(&pr, xt.bsums + 2 * p, 4);
                s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(off[p], _mm256_set1_epi32(pr)));
            }
            for (int h = 0; h < 2; h++)
#pragma GCC unroll 4
                for (int gr = 0; gr < 8; gr += 2) {
                    const uint8_t* q = g + 144 + (8 * h + gr) * 96;
                    __m256i v0[4], v1[4];
                    unpack_q6_half(q, q + 64, v0);
                    unpack_q6_half(q + 96, q + 160, v1);
#pragma GCC unroll 4
                    for (int k = 0; k < 4; k++) {  // values e..e+7 of the block: sub-block e / 16
                        const int e = 128 * h + 32 * k + 4 * gr;
                        const __m256i s16 = _mm256_add_epi16(_mm256_maddubs_epi16(v0[k], bcast4_epi32(xt.qs + e)),
                                                             _mm256_maddubs_epi16(v1[k], bcast4_epi32(xt.qs + e + 4)));
                        s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(s16, sc[e / 16]));
                    }
                }
            acc[t] = block_fma(acc[t], s32, dw, _mm256_set1_ps(xt.d));
        }
    }
    for (int64_t t = 0; t < n_tok; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}

// The same for Q2_K (Q3 = false) and Q3_K rows in lanes, in the order of their dots and of tile_k16:
// isum = sum_j sc_j (u . x)_j over the unsigned values u; Q2_K's msum = sum_j m_j bsums_j goes in its own
// step with dmin, Q3_K's offset -4 sum_j sc_j bsums_j joins isum.
template <int T, bool Q3>
void gemv_group_k2(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums*, float* y, int64_t ldy) {
    constexpr size_t kBlock = Q3 ? kQ3GroupBlockBytes : kQ2GroupBlockBytes;
    constexpr int kScaleAt = Q3 ? 16 : 32, kQuantsAt = Q3 ? 368 : 160;
    __m256 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += kBlock) {
        __m256i sc[16], coef[8];
        if constexpr (Q3)
            q3_K_scales_rows8(g + kScaleAt, sc, coef);
        else
            q2_K_scales_rows8(g + kScaleAt, sc, coef);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
        const __m256 dmin =
            Q3 ? _mm256_setzero_ps() : _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g + 16)));
        for (int t = 0; t < T; t++) {
            const block_q8_K& xt = x[t * nb + b];
            __m256i s32 = _mm256_setzero_si256(), o = _mm256_setzero_si256();
            for (int q = 0; q < 8; q++) {
                int32_t pr;
                std::memcpy(&pr, xt.bsums + 2 * q, 4);
                o = _mm256_add_epi32(o, _mm256_madd_epi16(coef[q], _mm256_set1_epi32(pr)));
            }
#pragma GCC unroll 2
            for (int h = 0; h < 2; h++) {
                __m256i s16[8];  // sub-block 8h + k
#pragma GCC unroll 8
                for (int gr = 0; gr < 8; gr++) {
                    const __m256i v = load256(g + kQuantsAt + (8 * h + gr) * 32);
#pragma GCC unroll 4
                    for (int s = 0; s < 4; s++) {
                        __m256i u;
                        if constexpr (Q3)
                            u = k2_rows8_values(v, load256(g + 112 + 32 * gr), h, s);
                        else
                            u = k2_rows8_values(v, s);
                        const __m256i p = _mm256_maddubs_epi16(u, bcast4_epi32(xt.qs + 128 * h + 32 * s + 4 * gr));
                        const int k = 2 * s + gr / 4;
                        s16[k] = gr % 4 == 0 ? p : _mm256_add_epi16(s16[k], p);
                    }
                }
#pragma GCC unroll 8
                for (int k = 0; k < 8; k++) s32 = _mm256_add_epi32(s32, _mm256_madd_epi16(s16[k], sc[8 * h + k]));
            }
            const __m256 dx = _mm256_set1_ps(xt.d);
            if constexpr (Q3) {
                acc[t] = block_fma(acc[t], _mm256_add_epi32(s32, o), dw, dx);
            } else {
                acc[t] = block_fma(acc[t], s32, o, dw, dmin, dx);
            }
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}

// The same for IQ4_XS rows in lanes, in the order of its dot and of tile_iq4_xs (each group's
// signed products through the sign trick, scaled and widened at once).
template <int T>
void gemv_group_iq4_xs(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums*, float* y, int64_t ldy) {
    const __m256i table = iq4nl_table256();
    __m256 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++, g += kXsGroupBlockBytes) {
        __m256i sc[8];
        xs_scales_rows8(g, sc);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(g)));
        for (int t = 0; t < T; t++) {
            const block_q8_K& xt = x[t * nb + b];
            __m256i s32 = _mm256_setzero_si256();
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
#pragma GCC unroll 4
                for (int gr = 0; gr < 4; gr++) {
                    __m256i lo, hi;
                    xs_rows8_values(g, j, gr, table, lo, hi);
                    s32 = _mm256_add_epi32(
                        s32, _mm256_madd_epi16(signed_maddubs(lo, bcast4_epi32(xt.qs + 32 * j + 4 * gr)), sc[j]));
                    s32 = _mm256_add_epi32(
                        s32, _mm256_madd_epi16(signed_maddubs(hi, bcast4_epi32(xt.qs + 32 * j + 16 + 4 * gr)), sc[j]));
                }
            acc[t] = block_fma(acc[t], s32, dw, _mm256_set1_ps(xt.d));
        }
    }
    for (int t = 0; t < T; t++) _mm256_storeu_ps(y + t * ldy, acc[t]);
}

// The group kernel of a type for T tokens (kGroupFns).
template <KGroup Kind>
struct Group {
    template <int T>
    static void run(int64_t nb, const uint8_t* g, const block_q8_K* x, const MinSums* ms, float* y, int64_t ldy) {
        if constexpr (Kind == KGroup::Q2K || Kind == KGroup::Q3K)
            gemv_group_k2<T, Kind == KGroup::Q3K>(nb, g, x, ms, y, ldy);
        else if constexpr (Kind == KGroup::Q4K || Kind == KGroup::Q5K)
            gemv_group_k4<T, Kind == KGroup::Q5K>(nb, g, x, ms, y, ldy);
        else if constexpr (Kind == KGroup::Q6K)
            gemv_group_q6_K<T>(nb, g, x, ms, y, ldy);
        else
            gemv_group_iq4_xs<T>(nb, g, x, ms, y, ldy);
    }
};

}  // namespace

namespace x86 {

void gemm_k_avx2_panels(KGroup kind, const ktile_fn* tiles, int64_t K, int64_t n_rows, const void* w, size_t row_bytes,
                        int64_t n_tok, const void* x, float* y, int64_t ldy) {
    switch (kind) {
        case KGroup::Q4K:
            return gemm_k<K4Panel>(tiles, pack_k4_rows8<false>, true, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
        case KGroup::Q5K:
            return gemm_k<K4Panel>(tiles, pack_k4_rows8<true>, true, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
        case KGroup::Q6K:
            return gemm_k<K16Panel>(tiles, pack_q6_K_rows8, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
        case KGroup::Q3K:
            return gemm_k<K16Panel>(tiles, pack_k2_rows8<true>, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
        case KGroup::Q2K:
            return gemm_k<K16Panel>(tiles, pack_k2_rows8<false>, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
        case KGroup::Xs:
            return gemm_k<XsPanel>(tiles, pack_iq4_xs_rows8, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
    }
}

}  // namespace x86

void gemv_q6_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<Group<KGroup::Q6K>>, vec_dot_q6_K_q8_K_avx2, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemv_q4_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<Group<KGroup::Q4K>>, vec_dot_q4_K_q8_K_avx2, true, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemv_q3_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<Group<KGroup::Q3K>>, vec_dot_q3_K_q8_K_avx2, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemv_q2_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<Group<KGroup::Q2K>>, vec_dot_q2_K_q8_K_avx2, false, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemv_q5_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<Group<KGroup::Q5K>>, vec_dot_q5_K_q8_K_avx2, true, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemv_iq4_xs_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                           float* y, int64_t ldy) {
    gemv_rows8(kGroupFns<Group<KGroup::Xs>>, vec_dot_iq4_xs_q8_K_avx2, false, K, n_rows, w, row_bytes, n_tok, x, y,
               ldy);
}

void gemm_q4_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q4K, kTilesK4<8>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q5_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q5K, kTilesK4<4>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q6_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q6K, kTilesK16<2, false>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q3_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q3K, kTilesK16<4, false>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_q2_K_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                         float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Q2K, kTilesK16<4, true>, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

void gemm_iq4_xs_q8_K_avx2(int64_t K, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok, const void* x,
                           float* y, int64_t ldy) {
    gemm_k_avx2_panels(KGroup::Xs, kTilesXs, K, n_rows, w, row_bytes, n_tok, x, y, ldy);
}

}  // namespace phi2cpu
