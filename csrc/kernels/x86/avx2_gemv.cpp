// AVX2 multi-row GEMV for decoding: four weight rows share every activation block load, its scale
// conversion and (Q4_0) its offset correction. Compiled with -mavx2 -mfma -mf16c.
#include "kernels/x86/ops_x86.h"

#include "kernels/x86/simd_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

inline __m256i load32(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

// Scale broadcast of a fp16 block scale times the activation scale already in dx.
inline __m256 scale(uint16_t d, __m256 dx) { return _mm256_mul_ps(_mm256_set1_ps(half_to_float(d)), dx); }

// Q4_0 nibbles as unsigned bytes 0..15 (low nibbles -> lanes 0..15, high -> 16..31): one 16-byte
// broadcast, then a per-128-bit-lane shift (0 for the low lane, 4 for the high one).
inline __m256i nibbles(const uint8_t* qs) {
    const __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qs)));
    return _mm256_and_si256(_mm256_srlv_epi64(b, _mm256_setr_epi64x(0, 0, 4, 4)), _mm256_set1_epi8(0x0f));
}

// sum (q - 8) x as 8 int32 lanes: maddubs takes the unsigned nibbles directly and the shared
// 8 * x pair sums (eight_x, int16) remove the offset; |16-bit pairs| <= 15*127*2 stays in range.
inline __m256i dot_q4(const uint8_t* qs, __m256i xq, __m256i eight_x) {
    const __m256i p = _mm256_sub_epi16(_mm256_maddubs_epi16(nibbles(qs), xq), eight_x);
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

// sum w x as 8 int32 lanes: |w| (unsigned, 128 included) times x carrying w's sign; x is an
// activation quant in [-127, 127].
inline __m256i dot_q8(const int8_t* qs, __m256i xq) {
    const __m256i w = load32(qs);
    const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(xq, w));
    return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

}  // namespace

void gemv_q4_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    const uint8_t* base = static_cast<const uint8_t*>(w);
    const int64_t nb = n / QK4_0;
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const auto* a0 = reinterpret_cast<const block_q4_0*>(base + size_t(r) * row_bytes);
        const auto* a1 = reinterpret_cast<const block_q4_0*>(base + size_t(r + 1) * row_bytes);
        const auto* a2 = reinterpret_cast<const block_q4_0*>(base + size_t(r + 2) * row_bytes);
        const auto* a3 = reinterpret_cast<const block_q4_0*>(base + size_t(r + 3) * row_bytes);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const __m256i xq = load32(xb[b].qs);
            const __m256i eight_x = _mm256_maddubs_epi16(_mm256_set1_epi8(8), xq);
            const __m256 dx = _mm256_set1_ps(half_to_float(xb[b].d));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q4(a0[b].qs, xq, eight_x)), scale(a0[b].d, dx), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q4(a1[b].qs, xq, eight_x)), scale(a1[b].d, dx), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q4(a2[b].qs, xq, eight_x)), scale(a2[b].d, dx), acc2);
            acc3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q4(a3[b].qs, xq, eight_x)), scale(a3[b].d, dx), acc3);
        }
        y[r] = hsum(acc0), y[r + 1] = hsum(acc1), y[r + 2] = hsum(acc2), y[r + 3] = hsum(acc3);
    }
    for (; r < n_rows; r++) y[r] = vec_dot_q4_0_q8_0_avx2(n, base + size_t(r) * row_bytes, x);
}

void gemv_q8_0_q8_0_avx2(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, const void* x, float* y) {
    const block_q8_0* xb = static_cast<const block_q8_0*>(x);
    const uint8_t* base = static_cast<const uint8_t*>(w);
    const int64_t nb = n / QK8_0;
    int64_t r = 0;
    for (; r + 4 <= n_rows; r += 4) {
        const auto* a0 = reinterpret_cast<const block_q8_0*>(base + size_t(r) * row_bytes);
        const auto* a1 = reinterpret_cast<const block_q8_0*>(base + size_t(r + 1) * row_bytes);
        const auto* a2 = reinterpret_cast<const block_q8_0*>(base + size_t(r + 2) * row_bytes);
        const auto* a3 = reinterpret_cast<const block_q8_0*>(base + size_t(r + 3) * row_bytes);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        __m256 acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            const __m256i xq = load32(xb[b].qs);
            const __m256 dx = _mm256_set1_ps(half_to_float(xb[b].d));
            acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q8(a0[b].qs, xq)), scale(a0[b].d, dx), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q8(a1[b].qs, xq)), scale(a1[b].d, dx), acc1);
            acc2 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q8(a2[b].qs, xq)), scale(a2[b].d, dx), acc2);
            acc3 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot_q8(a3[b].qs, xq)), scale(a3[b].d, dx), acc3);
        }
        y[r] = hsum(acc0), y[r + 1] = hsum(acc1), y[r + 2] = hsum(acc2), y[r + 3] = hsum(acc3);
    }
    for (; r < n_rows; r++) y[r] = vec_dot_q8_0_q8_0_avx2(n, base + size_t(r) * row_bytes, x);
}

}  // namespace phi2cpu
