// Every kernel path this CPU runs against the scalar reference, on random data and odd sizes.
// No dependencies: prints one line per check and a closing "N passed, N failed" line.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "kernels/dispatch.h"
#include "kernels/ref/ops_ref.h"
#include "platform/platform.h"
#include "quant/fp16.h"
#include "quant/quantize_ref.h"
#include "tolerances.h"

using namespace phi2cpu;
using phi2cpu::test::Tolerance;

namespace {

int g_passed = 0, g_failed = 0;
std::mt19937_64 g_rng(1234);

void check(bool ok, const std::string& what) {
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        std::printf("FAIL %s\n", what.c_str());
    }
}

bool close(double got, double want, double scale, Tolerance t) {
    return std::fabs(got - want) <= t.abs + t.rel * scale;
}

// Roughly normal values of standard deviation sigma: the sum of four 16-bit uniforms of one 64-bit
// draw (zero mean, unit variance after scaling; tails end at 3.46 sigma, and the tests add their
// extremes by hand). std::normal_distribution took a third of the kernel tests' time.
std::vector<float> randn(int64_t n, float sigma = 1.0f) {
    std::vector<float> v(static_cast<size_t>(n));
    const float scale = sigma * std::sqrt(3.0f) / 65536.0f;  // the sum has deviation 65536 / sqrt(3)
    for (auto& x : v) {
        const uint64_t r = g_rng();
        const int32_t sum = int32_t(r & 0xffff) + int32_t((r >> 16) & 0xffff) + int32_t((r >> 32) & 0xffff) +
                            int32_t(r >> 48);
        x = float(sum - 2 * 65535) * scale;
    }
    return v;
}

double abs_dot(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += std::fabs(double(a[i]) * b[i]);
    return s;
}

using Bytes = std::vector<uint8_t>;

size_t row_size(const TypeTraits& tt, int64_t n) { return row_bytes(tt, n); }

Tolerance tolerance_for(GgmlType t) {
    if (t == GgmlType::F32) return test::kDotF32;
    if (t == GgmlType::F16) return test::kDotF16;
    return test::kDotQuant;
}

// n_rows rows of n values of type tt: ref-quantized random values with a zero run, an all-positive
// and an all-negative block where there is room; and, for block formats, every third block replaced
// by random bytes (any scale field, every quant value of the format, -128 and nibble 0/15 included)
// whose values are finite and at most 1000 in magnitude.
Bytes weights_of(const TypeTraits& tt, int64_t n, int64_t n_rows) {
    auto w = randn(n * n_rows);
    const int64_t bs = tt.block_size > 1 ? tt.block_size : 32;
    for (int64_t j = 0; j < std::min<int64_t>(n, bs + bs / 4); j++) w[size_t(j)] = 0.0f;
    if (n >= 3 * bs)
        for (int64_t j = 0; j < bs; j++) {
            w[size_t(bs + j)] = std::fabs(w[size_t(bs + j)]) + 1;
            w[size_t(2 * bs + j)] = -std::fabs(w[size_t(2 * bs + j)]);
        }
    Bytes q(row_size(tt, n) * size_t(n_rows));
    tt.quantize(w.data(), q.data(), n * n_rows);
    if (tt.block_size == 1) return q;
    std::uniform_int_distribution<int> byte(0, 255);
    std::vector<float> v(size_t(tt.block_size));
    const int64_t n_blocks = n * n_rows / tt.block_size;
    for (int64_t b = 1; b < n_blocks; b += 3) {
        uint8_t* blk = q.data() + size_t(b) * tt.type_size;
        for (int tries = 0; tries < 1000; tries++) {
            for (size_t i = 0; i < tt.type_size; i++) blk[i] = uint8_t(byte(g_rng));
            tt.dequantize(blk, v.data(), tt.block_size);
            bool ok = true;
            for (float x : v) ok = ok && std::isfinite(x) && std::fabs(x) <= 1000.0f;
            if (ok) break;
        }
    }
    return q;
}

// n_tok activation rows of n values as the scalar path quantizes them to `act` (f32 rows for F32):
// random values, and in row 0 an alternating full-range run (+-127 and -128 quants).
Bytes activations_of(const Kernels& ref, GgmlType act, int64_t n, int64_t n_tok) {
    auto x = randn(n * n_tok, 3.0f);
    for (int64_t i = 0; i < std::min<int64_t>(n, 64); i++) x[size_t(i)] = i == 0 ? -50.0f : (i % 2 ? 49.6f : -49.6f);
    const TypeTraits& at = *type_traits(act);
    Bytes q(row_size(at, n) * size_t(n_tok));
    if (act == GgmlType::F32)
        std::memcpy(q.data(), x.data(), q.size());
    else
        for (int64_t t = 0; t < n_tok; t++) ref.quantize_activations(act, x.data() + t * n, q.data() + t * row_size(at, n), n);
    return q;
}

std::vector<float> dequantized(const TypeTraits& tt, const uint8_t* q, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n));
    tt.dequantize(q, out.data(), n);
    return out;
}

// Row lengths for a type's dot products: odd lengths for float rows, 1..321 blocks otherwise.
std::vector<int64_t> dot_lengths(const TypeTraits& tt) {
    if (tt.block_size == 1) return {1, 7, 8, 15, 16, 17, 31, 33, 80, 255, 2560, 10241};
    std::vector<int64_t> out;
    for (int64_t nb : {1, 2, 3, 5, 11, 41, 80, 321}) out.push_back(nb * tt.block_size);
    return out;
}

// Every weight type's dot on this path against the scalar one, and (on the scalar path) the scalar
// dot against the f32 dot of the dequantized operands, which ties the kernels to the block layouts.
void test_dots(const Kernels& k, const Kernels& ref) {
    for (const TypeTraits& tt : all_type_traits()) {
        const TypeKernels& row = k.of(tt.type);
        if (!row.vec_dot) continue;
        const TypeTraits& at = *type_traits(tt.vec_dot_type);
        const std::string name = std::string(k.isa) + " vec_dot " + tt.name + " x " + at.name;
        for (int64_t n : dot_lengths(tt)) {
            const Bytes w = weights_of(tt, n, 1), x = activations_of(ref, at.type, n, 1);
            const auto wd = dequantized(tt, w.data(), n), xd = dequantized(at, x.data(), n);
            double exact = 0;
            for (int64_t i = 0; i < n; i++) exact += double(wd[size_t(i)]) * xd[size_t(i)];
            const double s = abs_dot(wd, xd);
            const float want = ref.of(tt.type).vec_dot(n, w.data(), x.data());
            const float got = row.vec_dot(n, w.data(), x.data());
            const std::string sz = " n=" + std::to_string(n);
            if (&k == &ref)
                check(close(want, exact, s, tolerance_for(tt.type)), name + " equals the dequantized dot" + sz);
            check(std::isfinite(got) && close(got, want, s, tolerance_for(tt.type)), name + sz);
        }
    }
}

// Every activation quantizer of this path gives the reference's bytes: random rows, exact .5 ties
// of both signs at scale 1, a repeated extreme of either sign, an all-zero block, and one huge value.
void test_activation_quantizers(const Kernels& k, const Kernels& ref) {
    for (const TypeTraits& at : all_type_traits()) {
        const quantize_row_fn f = k.of(at.type).from_float;
        if (!f || at.type == GgmlType::F32) continue;
        for (int64_t nb : {1, 2, 5, 10}) {
            const int64_t n = nb * QK_K;  // whole blocks of every activation type
            auto x = randn(n, 2.0f);
            if (nb > 1) {
                for (int i = 0; i < QK_K; i++) x[size_t(QK_K + i)] = float((i % 2 ? 1 : -1) * (i % 100)) + 0.5f;
                x[size_t(QK_K + 7)] = -128.0f;
                x[size_t(QK_K + 9)] = 128.0f;  // same magnitude, later: the first one sets the scale
                for (int j = 0; j < 32; j++) x[size_t(QK_K + 32 + j)] = float(j % 2 ? j : -j) + 0.5f;
                x[size_t(QK_K + 63)] = 127.0f;  // a 32-block at scale 1 with ties
            }
            if (nb > 2) std::fill(x.begin() + 2 * QK_K, x.begin() + 3 * QK_K, 0.0f);
            if (nb > 3) x[size_t(3 * QK_K + 255)] = 1e30f;  // the rest of its block rounds to zero
            Bytes a(row_size(at, n), 0x55), b(row_size(at, n), 0xaa);
            ref.of(at.type).from_float(x.data(), a.data(), n);
            f(x.data(), b.data(), n);
            check(a == b, std::string(k.isa) + " quantize activations " + at.name + " n=" + std::to_string(n));
        }
    }
}

// Repacking (scales first, rows in groups of 4) moves every byte and nothing else: reading block b
// of row r back gives the GGUF block, for row lengths with and without whole 8-block chunks and row
// counts with and without a partial group.
void test_repack() {
    for (int64_t nb : {1, 7, 8, 9, 16, 21})
        for (int64_t R : {1, 3, 4, 5, 9}) {
            const int64_t n = nb * 32;
            auto w = randn(R * n);
            std::vector<block_q8_0> w8(size_t(R * nb)), p8(w8.size());
            std::vector<block_q4_0> w4(size_t(R * nb)), p4(w4.size());
            quantize_row_q8_0_ref(w.data(), w8.data(), R * n);
            quantize_row_q4_0_ref(w.data(), w4.data(), R * n);
            repack_q8_0_scales_first(n, R, w8.data(), p8.data());
            repack_q4_0_scales_first(n, R, w4.data(), p4.data());
            bool ok = true;
            for (int64_t r = 0; r < R; r++)
                for (int64_t b = 0; b < nb; b++) {
                    const block_q8_0 a = repacked_block_q8_0(reinterpret_cast<const uint8_t*>(p8.data()), nb, R, r, b);
                    const block_q4_0 c = repacked_block_q4_0(reinterpret_cast<const uint8_t*>(p4.data()), nb, R, r, b);
                    ok = ok && std::memcmp(&a, &w8[size_t(r * nb + b)], sizeof a) == 0 &&
                         std::memcmp(&c, &w4[size_t(r * nb + b)], sizeof c) == 0;
                }
            check(ok, "repack round trip nb=" + std::to_string(nb) + " rows=" + std::to_string(R));
        }
}

// Multi-row GEMV and GEMM of every weight type that has them, against the reference dot row by row:
// row counts around the 4-, 8- and 16-row tiles, token counts around the 6- and 8-token tiles, K past
// one 80-block cache chunk, and output padding that must stay untouched. Where the path repacks the
// type at load, its gemv and gemm are given repacked rows.
void test_multirow(const Kernels& k, const Kernels& ref) {
    for (const TypeTraits& tt : all_type_traits()) {
        const TypeKernels& row = k.of(tt.type);
        if (!row.gemv && !row.gemm) continue;
        const TypeTraits& at = *type_traits(tt.vec_dot_type);
        const vec_dot_fn dot = ref.of(tt.type).vec_dot;
        for (int64_t k32 : {1, 3, 80, 101}) {
            const int64_t K = (k32 * 32 + tt.block_size - 1) / tt.block_size * tt.block_size;
            const size_t rb = row_size(tt, K), xb = row_size(at, K);
            for (int64_t R : {1, 3, 4, 5, 8, 9, 13, 16, 17, 33}) {
                const Bytes w = weights_of(tt, K, R);
                Bytes packed;
                const uint8_t* wk = w.data();
                if (row.repack) {
                    packed.resize(w.size());
                    row.repack(K, R, w.data(), packed.data());
                    wk = packed.data();
                }
                // one set of 13 token rows, each call taking the first T: the reference dots and
                // their scales are computed once per (row, token), not once per call
                constexpr int64_t kTok = 13;
                const Bytes x = activations_of(ref, at.type, K, kTok);
                std::vector<float> want(size_t(kTok * R));
                std::vector<double> scale(want.size());
                for (int64_t r = 0; r < R; r++) {
                    const auto wd = dequantized(tt, w.data() + r * rb, K);
                    for (int64_t t = 0; t < kTok; t++) {
                        want[size_t(t * R + r)] = dot(K, w.data() + r * rb, x.data() + t * xb);
                        scale[size_t(t * R + r)] = abs_dot(wd, dequantized(at, x.data() + t * xb, K));
                    }
                }
                for (int64_t T : std::initializer_list<int64_t>{1, 2, 5, 6, 7, 8, 9, kTok}) {
                    const int64_t ldy = R + 3;
                    std::vector<float> yg(size_t(T * ldy), -7.0f), yv(size_t(T * ldy), -7.0f);
                    if (row.gemm) row.gemm(K, R, wk, rb, T, x.data(), yg.data(), ldy);
                    for (int64_t t0 = 0; row.gemv && t0 < T; t0 += kGemvMaxTokens)
                        row.gemv(K, R, wk, rb, std::min(kGemvMaxTokens, T - t0), x.data() + t0 * xb,
                                 yv.data() + t0 * ldy, ldy);
                    bool ok_g = true, ok_v = true, pad = true;
                    for (int64_t t = 0; t < T; t++) {
                        for (int64_t r = 0; r < R; r++) {
                            const float wt = want[size_t(t * R + r)];
                            const double sc = scale[size_t(t * R + r)];
                            ok_g = ok_g && (!row.gemm || close(yg[size_t(t * ldy + r)], wt, sc, tolerance_for(tt.type)));
                            ok_v = ok_v && (!row.gemv || close(yv[size_t(t * ldy + r)], wt, sc, tolerance_for(tt.type)));
                        }
                        for (int64_t r = R; r < ldy; r++)
                            pad = pad && (!row.gemm || yg[size_t(t * ldy + r)] == -7.0f) &&
                                  (!row.gemv || yv[size_t(t * ldy + r)] == -7.0f);
                    }
                    const std::string sz = std::string(k.isa) + " " + tt.name + " K=" + std::to_string(K) +
                                           " rows=" + std::to_string(R) + " n_tok=" + std::to_string(T);
                    check(ok_g, sz + " gemm");
                    check(ok_v, sz + " gemv");
                    check(pad, sz + " gemm/gemv leave padding alone");
                }
            }
        }
    }
}

// Batch invariance (dispatch.h): every (row, token) output of the gemv and the gemm, bit for bit, is
// the one the gemv gives that token alone: whatever the token count (1..8 through the gemv, up to 13
// through the gemm), the other tokens, and the row range a thread is given (starting at an 8-row GEMV
// range or a 32-row GEMM range). Q4_0, Q8_0, Q2_K..Q6_K and IQ4_XS kernels on every path also equal the scalar
// dot bit for bit, the order they all follow.
bool same_bits(const float* a, const float* b) { return std::memcmp(a, b, sizeof(float)) == 0; }

void test_batch_invariance(const Kernels& k, const Kernels& ref) {
    constexpr int64_t kTok = 13;
    for (const TypeTraits& tt : all_type_traits()) {
        const TypeKernels& row = k.of(tt.type);
        if (!row.vec_dot) continue;
        const TypeTraits& at = *type_traits(tt.vec_dot_type);
        const bool spec = tt.type == GgmlType::Q4_0 || tt.type == GgmlType::Q8_0 || tt.type == GgmlType::Q2_K ||
                          tt.type == GgmlType::Q3_K || tt.type == GgmlType::Q4_K || tt.type == GgmlType::Q5_K ||
                          tt.type == GgmlType::Q6_K || tt.type == GgmlType::IQ4_XS;
        for (int64_t k32 : {3, 80, 101}) {
            const int64_t K = (k32 * 32 + tt.block_size - 1) / tt.block_size * tt.block_size;
            const size_t rb = row_size(tt, K), xb = row_size(at, K);
            const int64_t R = 37;
            const Bytes w = weights_of(tt, K, R);
            Bytes packed = w;
            if (row.repack) row.repack(K, R, w.data(), packed.data());
            const uint8_t* wk = packed.data();
            const Bytes x = activations_of(ref, at.type, K, kTok);
            std::vector<float> alone(size_t(kTok * R));
            for (int64_t t = 0; t < kTok; t++) row.gemv(K, R, wk, rb, 1, x.data() + t * xb, alone.data() + t * R, R);
            const std::string sz = std::string(k.isa) + " " + tt.name + " K=" + std::to_string(K);
            if (spec) {
                bool ok = true;
                for (int64_t t = 0; t < kTok; t++)
                    for (int64_t r = 0; r < R; r++) {
                        const float want = ref.of(tt.type).vec_dot(K, w.data() + r * rb, x.data() + t * xb);
                        ok = ok && same_bits(&alone[size_t(t * R + r)], &want);
                    }
                check(ok, sz + " gemv bits == scalar dot");
            }
            // outputs of rows [r0, R) for tokens [t0, t0 + T) against `alone`
            auto agrees = [&](gemm_fn f, int64_t r0, int64_t t0, int64_t T) {
                std::vector<float> y(size_t(T * R), -7.0f);
                f(K, R - r0, wk + r0 * rb, rb, T, x.data() + t0 * xb, y.data() + r0, R);
                bool ok = true;
                for (int64_t t = 0; t < T; t++)
                    for (int64_t r = r0; r < R; r++) ok = ok && same_bits(&y[size_t(t * R + r)], &alone[size_t((t0 + t) * R + r)]);
                return ok;
            };
            bool ok_v = true, ok_g = true;
            for (int64_t r0 : {0, 8, 32})
                for (int64_t T = 1; T <= kTok; T++)
                    for (int64_t t0 : {int64_t(0), kTok - T}) {
                        if (T <= kGemvMaxTokens) ok_v = ok_v && agrees(row.gemv, r0, t0, T);
                        ok_g = ok_g && agrees(row.gemm, r0, t0, T);
                    }
            check(ok_v, sz + " gemv rows: same bits for 1..8 tokens, any neighbours, any row range");
            check(ok_g, sz + " gemm rows: same bits as the gemv for 1..13 tokens, any row range");
        }
    }
}

// A row with a repack must have the gemv and gemm that read it; every weight type has both (the
// model has no other way to multiply).
void test_rows_consistent(const Kernels& k) {
    for (const TypeTraits& tt : all_type_traits()) {
        const TypeKernels& row = k.of(tt.type);
        check(row.traits == &tt, std::string(k.isa) + " " + tt.name + " row has its traits");
        if (row.vec_dot) check(row.gemv && row.gemm, std::string(k.isa) + " " + tt.name + " has gemv and gemm");
        if (row.vec_dot) check(k.of(tt.vec_dot_type).from_float || tt.vec_dot_type == GgmlType::F32,
                               std::string(k.isa) + " " + tt.name + " activations have a quantizer");
    }
}

void test_gemm(const Kernels& k) {
    for (int64_t K : {1, 7, 32, 33, 100, 2048}) {
        for (int n_tok : {1, 2, 5, 6, 7, 13}) {
            auto pv = randn(K * kPanelRows);
            float* panel = static_cast<float*>(os::alloc_aligned(64, size_t((K * kPanelRows * 4 + 63) / 64 * 64)));
            std::copy(pv.begin(), pv.end(), panel);
            const int64_t ldx = K + 3, ldy = kPanelRows + 5;
            const auto x = randn(n_tok * ldx);
            for (bool accumulate : {false, true}) {
                auto y0 = randn(n_tok * ldy), y1 = y0;
                gemm_f32_panel16_ref(K, panel, x.data(), ldx, n_tok, y0.data(), ldy, accumulate);
                k.gemm_f32_panel16(K, panel, x.data(), ldx, n_tok, y1.data(), ldy, accumulate);
                bool ok = true;
                for (int c = 0; c < n_tok; c++) {
                    for (int j = 0; j < ldy; j++) {
                        const size_t i = size_t(c * ldy + j);
                        if (j >= kPanelRows) { ok &= y1[i] == y0[i]; continue; }  // untouched
                        double scale = 0;
                        for (int64_t kk = 0; kk < K; kk++)
                            scale += std::fabs(panel[kk * kPanelRows + j] * x[size_t(c * ldx + kk)]);
                        ok &= close(y1[i], y0[i], scale + std::fabs(y0[i]), test::kDotF32);
                    }
                }
                check(ok, std::string(k.isa) + " gemm_f32_panel16 K=" + std::to_string(K) + " n_tok=" +
                              std::to_string(n_tok) + (accumulate ? " accumulate" : ""));
            }
            os::free_aligned(panel);
        }
    }
}

// mag: how many times larger than 1 the inputs' rounding errors are (attention's scores grow with
// the query's deviation, and a score's rounding error moves its weight by as much)
bool all_close(const std::vector<float>& got, const std::vector<float>& want, Tolerance t, float mag = 1.0f) {
    bool ok = got.size() == want.size();
    for (size_t i = 0; ok && i < want.size(); i++) ok = close(got[i], want[i], (std::fabs(want[i]) + 1) * mag, t);
    return ok;
}

void test_elementwise(const Kernels& k) {
    const Tolerance t = test::kElementwise;
    for (int64_t n : {1, 7, 33, 80, 2560, 2561}) {
        for (float offset : {0.0f, 100.0f}) {  // a large mean must not cost the variance its accuracy
            auto x = randn(n, 2.0f);
            for (auto& xi : x) xi += offset;
            const auto w = randn(n), b = randn(n);
            std::vector<float> y0(static_cast<size_t>(n)), y1(static_cast<size_t>(n));
            layernorm_f32_ref(n, x.data(), w.data(), b.data(), 1e-5f, y0.data());
            k.layernorm_f32(n, x.data(), w.data(), b.data(), 1e-5f, y1.data());
            check(all_close(y1, y0, t), std::string(k.isa) + " layernorm_f32 n=" + std::to_string(n) +
                                            " mean=" + std::to_string(int(offset)));
        }
    }
    for (int64_t n : {1, 7, 33, 80, 2560, 10240, 10241}) {
        auto x = randn(n, 2.0f);
        std::uniform_real_distribution<float> wide(-20.0f, 20.0f);
        for (int64_t i = 0; i < n; i += 3) x[size_t(i)] = wide(g_rng);
        for (int64_t i = 5; i < n; i += 11) x[size_t(i)] = 0.0f;
        const float special[] = {0.0f, -0.0f, 20.0f, -20.0f, 1e-4f, -1e-4f, 9.0f, -9.0f, 100.0f, -100.0f};
        for (size_t i = 0; i < 10 && i < size_t(n); i++) x[i] = special[i];
        auto y0 = x, y1 = x;
        gelu_new_f32_ref(n, y0.data());
        k.gelu_new_f32(n, y1.data());
        check(all_close(y1, y0, t), std::string(k.isa) + " gelu_new_f32 n=" + std::to_string(n));
    }
    struct Rope { int n_head, head_dim, n_rot; };
    for (Rope r : {Rope{3, 80, 32}, Rope{32, 80, 32}, Rope{2, 24, 20}, Rope{2, 160, 160}, Rope{1, 6, 2}}) {
        for (int pos : {0, 1, 17, 300, 2047}) {
            auto y0 = randn(r.n_head * r.head_dim), y1 = y0;
            rope_neox_f32_ref(r.n_head, r.head_dim, r.n_rot, pos, 10000.0f, y0.data());
            k.rope_neox_f32(r.n_head, r.head_dim, r.n_rot, pos, 10000.0f, y1.data());
            check(all_close(y1, y0, t), std::string(k.isa) + " rope_neox_f32 head_dim=" +
                                            std::to_string(r.head_dim) + " n_rot=" + std::to_string(r.n_rot) +
                                            " pos=" + std::to_string(pos));
        }
    }
    for (int hd : {80, 64, 37, 160}) {  // 160: past the 128 dims one AVX-512 pass holds
        for (int n_kv : {1, 5, 7, 8, 9, 16, 17, 64, 301, 2048}) {
            for (float qs : {1.0f, 8.0f}) {  // 8x: peaked softmax, most exps far below 1
                const int64_t stride = 3 * hd + 1;
                auto q = randn(hd, qs);
                const auto kk = randn(n_kv * stride), vv = randn(n_kv * stride);
                std::vector<float> s0(static_cast<size_t>(n_kv)), s1(s0), o0(static_cast<size_t>(hd)), o1(o0);
                const float scale = 1.0f / std::sqrt(float(hd));
                attn_head_f32_ref(hd, n_kv, q.data(), kk.data(), vv.data(), stride, scale, s0.data(), o0.data());
                k.attn_head_f32(hd, n_kv, q.data(), kk.data(), vv.data(), stride, scale, s1.data(), o1.data());
                check(all_close(o1, o0, t, qs), std::string(k.isa) + " attn_head_f32 head_dim=" + std::to_string(hd) +
                                                " n_kv=" + std::to_string(n_kv) + " q_sigma=" + std::to_string(int(qs)));
                // an IEEE half cache: the f32 math on the widened halves (equal up to FMA contraction)
                std::vector<uint16_t> kh(kk.size()), vh(vv.size());
                std::vector<float> kw(kk.size()), vw(vv.size());
                for (size_t i = 0; i < kk.size(); i++) {
                    kh[i] = fp32_to_fp16(kk[i]);
                    vh[i] = fp32_to_fp16(vv[i]);
                    kw[i] = fp16_to_fp32(kh[i]);
                    vw[i] = fp16_to_fp32(vh[i]);
                }
                std::vector<float> s2(s0), o2(o0), s3(s0), o3(o0);
                attn_head_f32_ref(hd, n_kv, q.data(), kw.data(), vw.data(), stride, scale, s0.data(), o0.data());
                attn_head_f16_ref(hd, n_kv, q.data(), kh.data(), vh.data(), stride, scale, s2.data(), o2.data());
                check(all_close(o2, o0, t, qs), "ref attn_head_f16 is attn_head_f32 on the widened halves head_dim=" +
                                                std::to_string(hd) + " n_kv=" + std::to_string(n_kv));
                k.attn_head_f16(hd, n_kv, q.data(), kh.data(), vh.data(), stride, scale, s3.data(), o3.data());
                check(all_close(o3, o2, t, qs), std::string(k.isa) + " attn_head_f16 head_dim=" + std::to_string(hd) +
                                                " n_kv=" + std::to_string(n_kv) + " q_sigma=" + std::to_string(int(qs)));
            }
        }
    }
}

// IQ4_XS's importance argument: nullptr is the table's quantizer, and weighting half the columns
// 1000x lowers their squared error (summed over rows) against the unweighted encoding.
void test_iq4_xs_importance() {
    const int64_t n = 4 * QK_K, rows = 64;
    const auto x = randn(n * rows);
    std::vector<float> imp(static_cast<size_t>(n), 1.0f);
    for (int64_t j = 0; j < n; j += 2) imp[size_t(j)] = 1000.0f;
    std::vector<block_iq4_xs> plain(static_cast<size_t>(n / QK_K)), weighted(plain.size());
    std::vector<uint8_t> table(plain.size() * sizeof(block_iq4_xs));
    std::vector<float> y(static_cast<size_t>(n));
    double err_plain = 0, err_weighted = 0;
    bool same = true;
    for (int64_t r = 0; r < rows; r++) {
        const float* xr = x.data() + r * n;
        quantize_row_iq4_xs_ref(xr, plain.data(), n, nullptr);
        type_traits(GgmlType::IQ4_XS)->quantize(xr, table.data(), n);
        same = same && std::memcmp(table.data(), plain.data(), table.size()) == 0;
        quantize_row_iq4_xs_ref(xr, weighted.data(), n, imp.data());
        for (auto* q : {&plain, &weighted}) {
            dequantize_row_iq4_xs_ref(q->data(), y.data(), n);
            double e = 0;
            for (int64_t j = 0; j < n; j += 2) e += double(y[size_t(j)] - xr[j]) * double(y[size_t(j)] - xr[j]);
            (q == &plain ? err_plain : err_weighted) += e;
        }
    }
    check(same, "IQ4_XS table quantizer is quantize_row_iq4_xs_ref without importance");
    check(err_weighted < 0.9 * err_plain, "IQ4_XS importance lowers the weighted columns' error");
}

}  // namespace

// `test_kernels --paths`: only which paths this CPU runs and their table rows, for an emulated core
// whose feature detection is what is under test (the kernels themselves run on other cores).
int main(int argc, char** argv) {
    const bool paths_only = argc > 1 && std::string(argv[1]) == "--paths";
    std::string names;
    const std::vector<Kernels> paths = runnable_paths();
    for (const Kernels& k : paths) {
        names += std::string(names.empty() ? "" : ", ") + k.isa;
        test_rows_consistent(k);
        if (paths_only) continue;
        test_dots(k, paths[0]);
        test_activation_quantizers(k, paths[0]);
        test_multirow(k, paths[0]);
        test_batch_invariance(k, paths[0]);
        test_gemm(k);
        test_elementwise(k);
    }
    if (!paths_only) {
        test_repack();
        test_iq4_xs_importance();
    }
    std::printf("kernel paths tested: %s\n", names.c_str());
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
