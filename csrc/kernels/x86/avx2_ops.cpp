// AVX2 + FMA elementwise and attention kernels. Compiled with -mavx2 -mfma -mf16c; called only
// when the CPU has them.
#include <algorithm>
#include <cmath>

#include "kernels/x86/ops_x86.h"
#include "kernels/rope_angles.h"
#include "kernels/x86/simd_x86.h"
#include "kernels/x86/vexp_avx2.h"

namespace phi2cpu {

using namespace x86;

namespace {

double hsum_pd(__m256d v) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

// Adds the 8 floats of v to two f64 accumulators.
inline void add_pd(__m256 v, __m256d& s0, __m256d& s1) {
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
}

// 0.5 v (1 + tanh(u)) = v * sigmoid(2u) = v e / (e + 1) with e = exp(2u): no cancellation for
// negative v, and vexp's clamp keeps e finite for any u.
inline __m256 gelu8(__m256 v) {
    const __m256 t = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), _mm256_mul_ps(v, v)), v, v);
    const __m256 e = vexp(_mm256_mul_ps(t, _mm256_set1_ps(2.0f * 0.7978845608028654f)));
    return _mm256_mul_ps(v, _mm256_div_ps(e, _mm256_add_ps(e, _mm256_set1_ps(1.0f))));
}

// Eight cached elements as f32: an f32 cache or an IEEE half cache (F16C widens exactly).
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline float kv_f32(float x) { return x; }
inline float kv_f32(uint16_t h) { return _cvtsh_ss(h); }
inline float dot_row(int n, const float* q, const float* k) { return vec_dot_f32_f32_avx2(n, q, k); }
inline float dot_row(int n, const float* q, const uint16_t* k) { return vec_dot_f16_f32_avx2(n, k, q); }

// q . k_r for the 8 rows r = 0..7 of k (stride elements apart) over hd8 (a multiple of 8) dims.
template <typename T>
inline __m256 dot8_rows(int hd8, const float* q, const T* k, int64_t stride) {
    __m256 a[8];
    for (int r = 0; r < 8; r++) a[r] = _mm256_setzero_ps();
    for (int d = 0; d < hd8; d += 8) {
        const __m256 qd = _mm256_loadu_ps(q + d);
        for (int r = 0; r < 8; r++) a[r] = _mm256_fmadd_ps(qd, load8(k + r * stride + d), a[r]);
    }
    // transpose-add: lane r of the result is the full sum of a[r]
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}


// out += sum_{r < R} p[r] * row r of v (rows stride elements apart), over head_dim floats.
template <int R, typename T>
inline void axpy_rows(int head_dim, const float* p, const T* v, int64_t stride, float* out) {
    int d = 0;
    for (; d + 8 <= head_dim; d += 8) {
        __m256 acc = _mm256_loadu_ps(out + d);
        for (int r = 0; r < R; r++)
            acc = _mm256_fmadd_ps(_mm256_set1_ps(p[r]), load8(v + r * stride + d), acc);
        _mm256_storeu_ps(out + d, acc);
    }
    for (; d < head_dim; d++)
        for (int r = 0; r < R; r++) out[d] += p[r] * kv_f32(v[r * stride + d]);
}

}  // namespace

void layernorm_f32_avx2(int64_t n, const float* x, const float* w, const float* b, float eps, float* y) {
    // the mean is summed in f64 like the ref, so float(mean) rounds the same even on large offsets
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) add_pd(_mm256_loadu_ps(x + i), s0, s1);
    double sum = hsum_pd(_mm256_add_pd(s0, s1));
    for (; i < n; i++) sum += x[i];
    const float m = float(sum / double(n));
    const __m256 vm = _mm256_set1_ps(m);
    __m256 q0 = _mm256_setzero_ps(), q1 = _mm256_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), vm);
        const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), vm);
        q0 = _mm256_fmadd_ps(d0, d0, q0);
        q1 = _mm256_fmadd_ps(d1, d1, q1);
    }
    double var = hsum(_mm256_add_ps(q0, q1));
    for (; i < n; i++) var += double(x[i] - m) * double(x[i] - m);
    const float inv = float(1.0 / std::sqrt(var / double(n) + double(eps)));
    const __m256 vinv = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm), vinv);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(t, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++) y[i] = (x[i] - m) * inv * w[i] + b[i];
}

void gelu_new_f32_avx2(int64_t n, float* x) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n) {  // the tail through a padded copy, so every element gets the same math
        float t[8] = {};
        std::copy(x + i, x + n, t);
        _mm256_storeu_ps(t, gelu8(_mm256_loadu_ps(t)));
        std::copy(t, t + (n - i), x + i);
    }
}

void rope_neox_f32_avx2(int n_head, int head_dim, int n_rot, int pos, float theta, float* x) {
    rope_neox_chunks(n_head, head_dim, n_rot, pos, theta, x, [](float* xa, float* xb, const float* cs, const float* sn,
                                                                int m) {
        int j = 0;
        for (; j + 8 <= m; j += 8) {
            const __m256 a = _mm256_loadu_ps(xa + j), b = _mm256_loadu_ps(xb + j);
            const __m256 c = _mm256_loadu_ps(cs + j), s = _mm256_loadu_ps(sn + j);
            _mm256_storeu_ps(xa + j, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(xb + j, _mm256_fmadd_ps(a, s, _mm256_mul_ps(b, c)));
        }
        rope_pairs_tail(xa, xb, cs, sn, j, m);
    });
}

namespace {

template <typename T>
void attn_head_avx2(int head_dim, int n_kv, const float* q, const T* k, const T* v, int64_t kv_stride, float scale,
                    float* scores, float* out) {
    const int hd8 = head_dim & ~7;
    // scores = scale * q.k_j, eight keys per step (a head's keys are contiguous: the hardware prefetcher streams them)
    int j = 0;
    for (; j + 8 <= n_kv; j += 8) {
        _mm256_storeu_ps(scores + j, dot8_rows(hd8, q, k + j * kv_stride, kv_stride));
        for (int d = hd8; d < head_dim; d++)
            for (int r = 0; r < 8; r++) scores[j + r] += q[d] * kv_f32(k[(j + r) * kv_stride + d]);
    }
    for (; j < n_kv; j++) scores[j] = dot_row(head_dim, q, k + j * kv_stride);

    // softmax numerators e_j = exp(s_j - max); the sum in f64 like the ref
    const __m256 vscale = _mm256_set1_ps(scale);
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (j = 0; j + 8 <= n_kv; j += 8) {
        const __m256 s = _mm256_mul_ps(_mm256_loadu_ps(scores + j), vscale);
        _mm256_storeu_ps(scores + j, s);
        vmax = _mm256_max_ps(vmax, s);
    }
    float mx = hmax(vmax);
    for (; j < n_kv; j++) {
        scores[j] *= scale;
        mx = std::max(mx, scores[j]);
    }
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (j = 0; j + 8 <= n_kv; j += 8) {
        const __m256 e = vexp(_mm256_sub_ps(_mm256_loadu_ps(scores + j), vmx));
        _mm256_storeu_ps(scores + j, e);
        add_pd(e, s0, s1);
    }
    if (j < n_kv) {  // padded with -inf, whose exp is 0
        float t[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY};
        std::copy(scores + j, scores + n_kv, t);
        const __m256 e = vexp(_mm256_sub_ps(_mm256_loadu_ps(t), vmx));
        _mm256_storeu_ps(t, e);
        add_pd(e, s0, s1);
        std::copy(t, t + (n_kv - j), scores + j);
    }
    const float inv = float(1.0 / hsum_pd(_mm256_add_pd(s0, s1)));

    // out = inv * sum_j e_j v_j, four rows per pass over out
    std::fill(out, out + head_dim, 0.0f);
    for (j = 0; j + 4 <= n_kv; j += 4) {
        axpy_rows<4>(head_dim, scores + j, v + j * kv_stride, kv_stride, out);
    }
    for (; j < n_kv; j++) axpy_rows<1>(head_dim, scores + j, v + j * kv_stride, kv_stride, out);
    const __m256 vinv = _mm256_set1_ps(inv);
    int d = 0;
    for (; d < hd8; d += 8) _mm256_storeu_ps(out + d, _mm256_mul_ps(_mm256_loadu_ps(out + d), vinv));
    for (; d < head_dim; d++) out[d] *= inv;
}

}  // namespace

void attn_head_f32_avx2(int head_dim, int n_kv, const float* q, const float* k, const float* v,
                        int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_avx2(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

void attn_head_f16_avx2(int head_dim, int n_kv, const float* q, const uint16_t* k, const uint16_t* v,
                        int64_t kv_stride, float scale, float* scores, float* out) {
    attn_head_avx2(head_dim, n_kv, q, k, v, kv_stride, scale, scores, out);
}

}  // namespace phi2cpu
