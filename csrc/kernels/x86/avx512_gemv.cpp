// AVX-512 VNNI small-batch GEMV for decoding over repacked weights (driver and its summation
// order: kernels/x86/gemv_x86.h): the AVX2 kernel's data flow with vpdpbusd on 256-bit vectors,
// which multiplies unsigned by signed bytes and sums four products straight into 32 bits (no 16-bit
// step, no widening madd). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni (plus
// AVX2/FMA/F16C).
#include "kernels/x86/gemv_x86.h"
#include "kernels/x86/ops_x86.h"

namespace phi2cpu {

using namespace x86;

namespace {

inline __m256i dpbusd(__m256i acc, __m256i u8, __m256i s8) { return _mm256_dpbusd_epi32(acc, u8, s8); }

// acc + sum w x over 32 quants as 8 int32 lanes: |w| times x carrying w's sign (x in [-127, 127]).
inline __m256i dot_q8(__m256i acc, __m256i w, __m256i x) {
    return dpbusd(acc, _mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
}

// Q4_0 pair (b, b+1): low nibbles meet act.lo, high ones act.hi (see the AVX2 kernel); the
// unsigned nibbles' offset is the driver's per-block bias.
struct KernQ4 {
    struct Pair {
        __m256i lo, hi;
    };
    __m256i m4 = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
    Pair load(const uint8_t* q) const {
        const __m256i qq = load32(q);
        return {_mm256_and_si256(qq, m4), _mm256_and_si256(_mm256_srli_epi16(qq, 4), m4)};
    }
    __m256i dot(const Pair& w, __m256i xl, __m256i xh) const { return dpbusd(dpbusd(zero, w.lo, xl), w.hi, xh); }
    __m256i block(const uint8_t* q, const int8_t* xq) const { return dpbusd(zero, unpack_q4_0(q), load32(xq)); }
};

// Q8_0: a pair's first-halves load meets act.lo, its second-halves load act.hi.
struct KernQ8 {
    struct Pair {
        __m256i first, second;
    };
    __m256i zero = _mm256_setzero_si256();
    Pair load(const uint8_t* q) const { return {load32(q), load32(q + 32)}; }
    __m256i dot(const Pair& w, __m256i xl, __m256i xh) const {
        return dot_q8(dot_q8(zero, w.first, xl), w.second, xh);
    }
    __m256i block(const uint8_t* q, const int8_t* xq) const { return dot_q8(zero, load32(q), load32(xq)); }
};

template <int T>
struct GroupQ4 {
    static void run(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvBatch& s, float* y, int64_t ldy) {
        group_rows<sizeof(block_q4_0), T>(nb, g, x, s, y, ldy, KernQ4{});
    }
};
template <int T>
struct GroupQ8 {
    static void run(int64_t nb, const uint8_t* g, const block_q8_0* x, const GemvBatch& s, float* y, int64_t ldy) {
        group_rows<sizeof(block_q8_0), T>(nb, g, x, s, y, ldy, KernQ8{});
    }
};

const GroupTable<GroupQ4> kGroupsQ4;
const GroupTable<GroupQ8> kGroupsQ8;

}  // namespace

void gemv_q4_0_q8_0_avx512vnni(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy) {
    gemv_groups<block_q4_0, repacked_block_q4_0>(kGroupsQ4.f, vec_dot_q4_0_q8_0_ref, n, n_rows, w, row_bytes, n_tok,
                                                 x, y, ldy);
}

void gemv_q8_0_q8_0_avx512vnni(int64_t n, int64_t n_rows, const void* w, size_t row_bytes, int64_t n_tok,
                               const void* x, float* y, int64_t ldy) {
    gemv_groups<block_q8_0, repacked_block_q8_0>(kGroupsQ8.f, vec_dot_q8_0_q8_0_ref, n, n_rows, w, row_bytes, n_tok,
                                                 x, y, ldy);
}

}  // namespace phi2cpu
