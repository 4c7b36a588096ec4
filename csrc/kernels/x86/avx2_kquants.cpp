// AVX2 K-quant kernels: Q4_K/Q5_K/Q6_K x Q8_K dot products and the Q8_K activation quantizer.
// Compiled with -mavx2 -mfma -mf16c; called only when the CPU has them.
//
// The weight values are kept unsigned (0..15, 0..31, 0..63) so maddubs (unsigned x signed) needs no
// sign trick; the mins (Q4_K/Q5_K) and the -32 offset (Q6_K) are applied once per block through the
// Q8_K sums of 16. Bounds: maddubs pairs reach 2*63*128 = 16128 < 32767, so nothing saturates.
#include <cmath>

#include "kernels/x86/kquants_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

// sum_i u[i] * s[i] over 32 bytes in pairs of int16, then weighted by a per-pair int16 scale to int32.
inline __m256i dot_scaled(__m256i u, __m256i s, __m256i scale16) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), scale16);
}

}  // namespace

namespace {

// Q4_K and Q5_K differ only in the high bits k4_chunk merges in.
template <typename Block>
float vec_dot_k4_q8_K(int64_t n, const void* w, const void* x) {
    const Block* a = static_cast<const Block*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        const K4Scales s = unpack_scales_k4(a[i].scales);
        const __m256i sc = bytes_epi16x2(s.sc);
        __m256i qh = k4_high_bits(a[i]);
        const auto chunk = [&](int c, __m256i sc_lo, __m256i sc_hi) {
            __m256i lo, hi;
            k4_chunk(a[i].qs, c, qh, lo, hi);
            sumi = _mm256_add_epi32(sumi, dot_scaled(lo, load256(b[i].qs + 64 * c), sc_lo));
            sumi = _mm256_add_epi32(sumi, dot_scaled(hi, load256(b[i].qs + 64 * c + 32), sc_hi));
        };
        chunk(0, splat_epi16<0>(sc), splat_epi16<1>(sc));
        chunk(1, splat_epi16<2>(sc), splat_epi16<3>(sc));
        chunk(2, splat_epi16<4>(sc), splat_epi16<5>(sc));
        chunk(3, splat_epi16<6>(sc), splat_epi16<7>(sc));
        k4_block_step(a[i], b[i], sumi, min_dot_bsums(s.m, b[i].bsums), acc);
    }
    return acc.value();
}

}  // namespace

float vec_dot_q4_K_q8_K_avx2(int64_t n, const void* w, const void* x) { return vec_dot_k4_q8_K<block_q4_K>(n, w, x); }

float vec_dot_q5_K_q8_K_avx2(int64_t n, const void* w, const void* x) { return vec_dot_k4_q8_K<block_q5_K>(n, w, x); }

float vec_dot_q6_K_q8_K_avx2(int64_t n, const void* w, const void* x) {
    const block_q6_K* a = static_cast<const block_q6_K*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        // sum sc*(q-32)*x = sum sc*q*x - 32 sum sc*bsum
        __m256i sumi = _mm256_sub_epi32(_mm256_setzero_si256(),
                                        _mm256_slli_epi32(q6_scale_dot_bsums(a[i].scales, b[i].bsums), 5));
        for (int h = 0; h < 2; h++) {
            __m256i v[4];
            unpack_q6_half(a[i].ql + 64 * h, a[i].qh + 32 * h, v);
            __m256i sc[4];
            q6_half_scales(a[i].scales + 8 * h, sc);
            const int8_t* xq = b[i].qs + 128 * h;
            for (int g = 0; g < 4; g++) sumi = _mm256_add_epi32(sumi, dot_scaled(v[g], load256(xq + 32 * g), sc[g]));
        }
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);
    }
    return acc.value();
}

float vec_dot_iq4_xs_q8_K_avx2(int64_t n, const void* w, const void* x) {
    const block_iq4_xs* a = static_cast<const block_iq4_xs*>(w);
    const block_q8_K* b = static_cast<const block_q8_K*>(x);
    const __m256i table = iq4nl_table256();
    BlockAcc acc;
    for (int64_t i = 0; i < n / QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            // |x| (unsigned, so Q8_K's -128 is 128) times v with x's sign; pairs stay below 2 * 128 * 127
            const __m256i v = iq4xs_values(a[i], j, table);
            const __m256i xq = load256(b[i].qs + 32 * j);
            sumi = _mm256_add_epi32(sumi, dot_scaled(_mm256_sign_epi8(xq, xq), _mm256_sign_epi8(v, xq),
                                                     _mm256_set1_epi16(int16_t(iq4xs_scale(a[i], j)))));
        }
        acc.add(sumi, half_to_float(a[i].d) * b[i].d);  // as the reference
    }
    return acc.value();
}

// Same bytes as quantize_row_q8_K_ref: cvtps rounds to nearest even like nearbyint, and the scale
// comes from the first element of largest magnitude.
void quantize_row_q8_K_avx2(const float* x, block_q8_K* y, int64_t n) {
    const __m256 sign_mask = _mm256_set1_ps(-0.0f);
    for (int64_t i = 0; i < n / QK_K; i++, x += QK_K) {
        __m256 amax = _mm256_setzero_ps();
        for (int j = 0; j < QK_K / 8; j++)
            amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + 8 * j)));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        const float am = _mm_cvtss_f32(m);
        if (am == 0.0f) {
            y[i].d = 0.0f;
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].bsums), _mm256_setzero_si256());
            for (int j = 0; j < QK_K / 32; j++)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs + 32 * j), _mm256_setzero_si256());
            continue;
        }
        float max = 0.0f;
        const __m256 vam = _mm256_set1_ps(am);
        for (int j = 0; j < QK_K / 8; j++) {
            const int hit = _mm256_movemask_ps(
                _mm256_cmp_ps(_mm256_andnot_ps(sign_mask, _mm256_loadu_ps(x + 8 * j)), vam, _CMP_EQ_OQ));
            if (hit) { max = x[8 * j + __builtin_ctz(unsigned(hit))]; break; }
        }
        const float iscale = -128.0f / max;
        const __m256 vis = _mm256_set1_ps(iscale);
        const __m256i lim = _mm256_set1_epi32(127);
        for (int j = 0; j < QK_K / 32; j++) {
            __m256i q[4];
            for (int k = 0; k < 4; k++) {
                const __m256 v = _mm256_mul_ps(vis, _mm256_loadu_ps(x + 32 * j + 8 * k));
                q[k] = _mm256_min_epi32(_mm256_cvtps_epi32(v), lim);
            }
            y[i].bsums[2 * j] = int16_t(hsum_i32(_mm256_add_epi32(q[0], q[1])));
            y[i].bsums[2 * j + 1] = int16_t(hsum_i32(_mm256_add_epi32(q[2], q[3])));
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            const __m256i ordered = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(y[i].qs + 32 * j), ordered);
        }
        y[i].d = 1.0f / iscale;
    }
}

}  // namespace phi2cpu
