// AVX-512 elementwise and attention kernels: the math of avx2_ops.cpp on 16 lanes, with masked loads
// and stores for the tails. Compiled with -mavx512f -mavx512bw -mavx512vl (plus AVX2/FMA/F16C);
// called only when the CPU and OS support them.
#include <algorithm>
#include <cmath>

#include "kernels/rope_angles.h"
#include "kernels/x86/ops_x86.h"
#include "kernels/x86/simd_x86.h"
#include "kernels/x86/vexp_avx512.h"

namespace phi2cpu {

using namespace x86;

namespace {

// Adds the 16 floats of v to two f64 accumulators.
inline void add_pd(__m512 v, __m512d& s0, __m512d& s1) {
    s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
}

// 0.5 v (1 + tanh(u)) = v e / (e + 1) with e = exp(2u), as gelu8 in avx2_ops.cpp.
inline __m512 gelu16(__m512 v) {
    const __m512 t = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), _mm512_mul_ps(v, v)), v, v);
    const __m512 e = vexp(_mm512_mul_ps(t, _mm512_set1_ps(2.0f * 0.7978845608028654f)));
    return _mm512_mul_ps(v, _mm512_div_ps(e, _mm512_add_ps(e, _mm512_set1_ps(1.0f))));
}

// Lane r of the result is the sum of the 16 lanes of a[r]: a transpose-add over pairs, then quads
// within each 128-bit lane, then across the four 128-bit lanes.
inline __m512 transpose_sum16(const __m512* a) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; i++)  // per 128-bit lane: rows 2i, 2i+1 as [a0+a2, b0+b2, a1+a3, b1+b3]
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int j = 0; j < 4; j++)  // per 128-bit lane: that lane's sums of rows 4j..4j+3
        c[j] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(b[2 * j], b[2 * j + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 u01 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x44), _mm512_shuffle_f32x4(c[0], c[1], 0xee));
    const __m512 u23 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x44), _mm512_shuffle_f32x4(c[2], c[3], 0xee));
    return _mm512_add_ps(_mm512_shuffle_f32x4(u01, u23, 0x88), _mm512_shuffle_f32x4(u01, u23, 0xdd));
}

// The first lanes (mask m) of sixteen cached elements as f32, from an f32 or an IEEE half cache.
inline __m512 load16(__mmask16 m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load16(__mmask16 m, const uint16_t* p) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline float dot_row(int n, const float* q, const float* k) { return vec_dot_f32_f32_avx512(n, q, k); }
inline float dot_row(int n, const float* q, const uint16_t* k) { return vec_dot_f16_f32_avx512(n, k, q); }

// q . k_r for the 16 rows r of k (stride elements apart) over head_dim dims.
template <typename T>
inline __m512 dot16_rows(int head_dim, const float* q, const T* k, int64_t stride) {
    __m512 a[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; r++) a[r] = _mm512_setzero_ps();
    for (int d = 0; d < head_dim; d += 16) {
        const __mmask16 m = first_lanes16(head_dim - d);
        const __m512 qd = _mm512_maskz_loadu_ps(m, q + d);
#pragma GCC unroll 16
        for (int r = 0; r < 16; r++) a[r] = _mm512_fmadd_ps(qd, load16(m, k + r * stride + d), a[r]);
    }
    return transpose_sum16(a);
}

// out[0..n) = inv * sum_j p_j v_j[0..n) for n <= 16 * NV: NV accumulators stay in registers while
// the value rows stream by; only the last vector may be partial.
template <int NV, typename T>
void pv_pass(int n, int n_kv, const float* p, const T* v, int64_t stride, __m512 inv, float* out) {
    const __mmask16 last = first_lanes16(n - 16 * (NV - 1));
    __m512 acc[NV];
#pragma GCC unroll 8
    for (int c = 0; c < NV; c++) acc[c] = _mm512_setzero_ps();
    for (int j = 0; j < n_kv; j++) {
        const __m512 pj = _mm512_set1_ps(p[j]);
        const T* vj = v + j * stride;
#pragma GCC unroll 8
        for (int c = 0; c < NV - 1; c++) acc[c] = _mm512_fmadd_ps(pj, load16(vj + 16 * c), acc[c]);
        acc[NV - 1] = _mm512_fmadd_ps(pj, load16(last, vj + 16 * (NV - 1)), acc[NV - 1]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < NV - 1; c++) _mm512_storeu_ps(out + 16 * c, _mm512_mul_ps(acc[c], inv));
    _mm512_mask_storeu_ps(out + 16 * (NV - 1), last, _mm512_mul_ps(acc[NV - 1], inv));
}

}  // namespace

void layernorm_f32_avx512(int64_t n, const float* x, const float* w, const float* b, float eps, float* y) {
    // the mean is summed in f64 like the ref, so float(mean) rounds the same even on large offsets
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (int64_t i = 0; i < n; i += 16) add_pd(_mm512_maskz_loadu_ps(first_lanes16(n - i), x + i), s0, s1);
    const float m = float(_mm512_reduce_add_pd(_mm512_add_pd(s0, s1)) / double(n));
    const __m512 vm = _mm512_set1_ps(m);
    __m512 q = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = first_lanes16(n - i);
        const __m512 d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, x + i), vm);
        q = _mm512_fmadd_ps(d, d, q);
    }
    const double var = _mm512_reduce_add_ps(q);
    const __m512 vinv = _mm512_set1_ps(float(1.0 / std::sqrt(var / double(n) + double(eps))));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = first_lanes16(n - i);
        const __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm), vinv);
        _mm512_mask_storeu_ps(y + i, k,
                              _mm512_fmadd_ps(t, _mm512_maskz_loadu_ps(k, w + i), _mm512_maskz_loadu_ps(k, b + i)));
    }
}

void gelu_new_f32_avx512(int64_t n, float* x) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 k = first_lanes16(n - i);
        _mm512_mask_storeu_ps(x + i, k, gelu16(_mm512_maskz_loadu_ps(k, x + i)));
    }
}

void rope_neox_f32_avx512(int n_head, int head_dim, int n_rot, int pos, float theta, float* x) {
    rope_neox_chunks(n_head, head_dim, n_rot, pos, theta, x, [](float* xa, float* xb, const float* cs, const float* sn,
                                                                int m) {
        for (int j = 0; j < m; j += 16) {
            const __mmask16 k = first_lanes16(m - j);
            const __m512 a = _mm512_maskz_loadu_ps(k, xa + j), b = _mm512_maskz_loadu_ps(k, xb + j);
            const __m512 c = _mm512_maskz_loadu_ps(k, cs + j), s = _mm512_maskz_loadu_ps(k, sn + j);
            _mm512_mask_storeu_ps(xa + j, k, _mm512_fmsub_ps(a, c, _mm512_mul_ps(b, s)));
            _mm512_mask_storeu_ps(xb + j, k, _mm512_fmadd_ps(a, s, _mm512_mul_ps(b, c)));
        }
    });
}

namespace {

template <typename T>
void attn_head_avx512(int head_dim, int n_kv, const float* q, const T* k, const T* v, int64_t kv_stride, float scale,
                      float* scores, float* out) {
    // scores = scale * q.k_j, sixteen keys per step (a head's keys are one contiguous stream)
    int j = 0;
    for (; j + 16 <= n_kv; j += 16)
        _mm512_storeu_ps(scores + j, _mm512_mul_ps(dot16_rows(head_dim, q, k + j * kv_stride, kv_stride),
                                                   _mm512_set1_ps(scale)));
    for (; j < n_kv; j++) scores[j] = dot_row(head_dim, q, k + j * kv_stride) * scale;

    // softmax numerators e_j = exp(s_j - max); the sum in f64 like the ref
    __m512 vmax = _mm512_set1_ps(-INFINITY);
    for (j = 0; j < n_kv; j += 16) {
        const __mmask16 m = first_lanes16(n_kv - j);
        vmax = _mm512_mask_max_ps(vmax, m, vmax, _mm512_maskz_loadu_ps(m, scores + j));
    }
    const __m512 vmx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (j = 0; j < n_kv; j += 16) {
        const __mmask16 m = first_lanes16(n_kv - j);
        const __m512 e = _mm512_maskz_mov_ps(m, vexp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, scores + j), vmx)));
        _mm512_mask_storeu_ps(scores + j, m, e);
        add_pd(e, s0, s1);
    }
    const __m512 vinv = _mm512_set1_ps(float(1.0 / _mm512_reduce_add_pd(_mm512_add_pd(s0, s1))));

    // out = inv * sum_j e_j v_j, up to 128 dims held in registers per pass over the values
    constexpr void (*kPass[])(int, int, const float*, const T*, int64_t, __m512, float*) = {
        nullptr,         pv_pass<1, T>, pv_pass<2, T>, pv_pass<3, T>, pv_pass<4, T>,
        pv_pass<5, T>,   pv_pass<6, T>, pv_pass<7, T>, pv_pass<8, T>};
    for (int d0 = 0; d0 < head_dim; d0 += 128)
        kPass[std::min(8, (head_dim - d0 + 15) / 16)](head_dim - d0, n_kv, scores, v + d0, kv_stride, vinv, out + d0);
}

}  // namespace

void attn_head_f32_avx512(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                          int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_avx512(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

void attn_head_f16_avx512(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                          int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_avx512(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

}  // namespace phi2cpu
