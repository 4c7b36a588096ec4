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
std::mt19937 g_rng(1234);

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

std::vector<float> randn(int64_t n, float sigma = 1.0f) {
    std::normal_distribution<float> d(0.0f, sigma);
    std::vector<float> v(static_cast<size_t>(n));
    for (auto& x : v) x = d(g_rng);
    return v;
}

double abs_dot(const std::vector<float>& a, const std::vector<float>& b) {
    double s = 0;
    for (size_t i = 0; i < a.size(); i++) s += std::fabs(double(a[i]) * b[i]);
    return s;
}

void test_float_dots(const Kernels& k) {
    for (int64_t n : {1, 7, 8, 15, 16, 17, 31, 33, 80, 255, 2560, 10241}) {
        const auto w = randn(n), x = randn(n);
        std::vector<uint16_t> wh(static_cast<size_t>(n));
        quantize_row_f16_ref(w.data(), wh.data(), n);
        std::vector<float> wr(static_cast<size_t>(n));
        dequantize_row_f16_ref(wh.data(), wr.data(), n);
        const double s = abs_dot(w, x);
        check(close(k.vec_dot_f32_f32(n, w.data(), x.data()), vec_dot_f32_f32_ref(n, w.data(), x.data()), s,
                    test::kDotF32),
              std::string(k.isa) + " vec_dot_f32_f32 n=" + std::to_string(n));
        check(close(k.vec_dot_f16_f32(n, wh.data(), x.data()), vec_dot_f16_f32_ref(n, wh.data(), x.data()), s,
                    test::kDotF16),
              std::string(k.isa) + " vec_dot_f16_f32 n=" + std::to_string(n));
    }
}

void test_quant_dots(const Kernels& k) {
    for (int64_t n : {32, 64, 96, 160, 2560, 10240 + 32}) {
        auto w = randn(n), x = randn(n, 3.0f);
        w[0] = 0.0f;  // an all-zero block must give zero, not NaN
        for (int j = 0; j < 32 && n > 64; j++) w[size_t(32 + j)] = 0.0f;
        std::vector<block_q8_0> w8(size_t(n / 32)), x8(size_t(n / 32)), x8k(size_t(n / 32));
        std::vector<block_q4_0> w4(size_t(n / 32));
        quantize_row_q8_0_ref(w.data(), w8.data(), n);
        quantize_row_q4_0_ref(w.data(), w4.data(), n);
        quantize_row_q8_0_ref(x.data(), x8.data(), n);
        const double s = abs_dot(w, x);
        const std::string sz = " n=" + std::to_string(n);
        check(close(k.vec_dot_q8_0_q8_0(n, w8.data(), x8.data()), vec_dot_q8_0_q8_0_ref(n, w8.data(), x8.data()), s,
                    test::kDotQ8),
              std::string(k.isa) + " vec_dot_q8_0_q8_0" + sz);
        check(close(k.vec_dot_q4_0_q8_0(n, w4.data(), x8.data()), vec_dot_q4_0_q8_0_ref(n, w4.data(), x8.data()), s,
                    test::kDotQ4),
              std::string(k.isa) + " vec_dot_q4_0_q8_0" + sz);

        // activation quantizer: the same bytes as the reference, ties included, so every path
        // feeds the integer dot products identical values
        if (n >= 64) {  // block 1 gets scale 1 (amax 127) and exact .5 ties, both signs
            for (int j = 0; j < 32; j++) x[size_t(32 + j)] = float(j % 2 ? j : -j) + 0.5f;
            x[63] = 127.0f;
        }
        quantize_row_q8_0_ref(x.data(), x8.data(), n);
        k.quantize_row_q8_0(x.data(), x8k.data(), n);
        check(std::memcmp(x8.data(), x8k.data(), x8.size() * sizeof(block_q8_0)) == 0,
              std::string(k.isa) + " quantize_row_q8_0" + sz);
    }
    // extreme block: -128 weights (legal in a file) at full activation range
    std::vector<block_q8_0> w8(1), x8(1);
    w8[0].d = fp32_to_fp16(1.0f);
    x8[0].d = fp32_to_fp16(1.0f);
    for (int j = 0; j < 32; j++) { w8[0].qs[j] = -128; x8[0].qs[j] = int8_t(j % 2 ? 127 : -127); }
    check(k.vec_dot_q8_0_q8_0(32, w8.data(), x8.data()) == vec_dot_q8_0_q8_0_ref(32, w8.data(), x8.data()),
          std::string(k.isa) + " vec_dot_q8_0_q8_0 extreme values");
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

// Multi-row GEMV and integer GEMM (Q8_0 / Q4_0 weights, Q8_0 activations) against the reference
// dot, row by row: row counts around the 4-, 8- and 16-row tiles, token counts around the 6- and
// 8-token tiles, K past one 80-block cache chunk, extreme quants (-128 weights, nibbles 0 and 15, activations
// +-127), and output padding that must stay untouched.
void test_multirow(const Kernels& k) {
    for (int64_t K : {32, 96, 2560, 3232}) {
        for (int64_t R : {1, 3, 4, 5, 8, 9, 13, 16, 17, 33}) {
            const int64_t nb = K / 32;
            auto w = randn(R * K);
            for (int j = 0; j < 32; j++) w[size_t(j)] = 0.0f;  // an all-zero block
            std::vector<block_q8_0> w8(size_t(R * nb));
            std::vector<block_q4_0> w4(size_t(R * nb));
            quantize_row_q8_0_ref(w.data(), w8.data(), R * K);
            quantize_row_q4_0_ref(w.data(), w4.data(), R * K);
            if (R > 1) {  // row 1, block 0: extremes
                std::fill(w8[size_t(nb)].qs, w8[size_t(nb)].qs + 32, int8_t(-128));
                for (int j = 0; j < 16; j++) w4[size_t(nb)].qs[j] = uint8_t(j % 2 ? 0xf0 : 0x0f);
            }
            for (int64_t T : {1, 2, 5, 6, 7, 8, 9, 13}) {
                auto x = randn(T * K, 3.0f);
                std::vector<block_q8_0> x8(size_t(T * nb));
                quantize_row_q8_0_ref(x.data(), x8.data(), T * K);
                for (int j = 0; j < 32; j++) x8[0].qs[j] = int8_t(j % 3 ? -127 : 127);
                // dequantized operands, for the conditioning sum |w_i x_i| of each dot
                std::vector<std::vector<float>> xs_f(size_t(T), std::vector<float>(static_cast<size_t>(K)));
                for (int64_t t = 0; t < T; t++) dequantize_row_q8_0_ref(x8.data() + t * nb, xs_f[size_t(t)].data(), K);
                std::vector<std::vector<std::vector<float>>> rows_f(2);
                for (int64_t r = 0; r < R; r++) {
                    rows_f[0].emplace_back(size_t(K));
                    rows_f[1].emplace_back(size_t(K));
                    dequantize_row_q8_0_ref(w8.data() + r * nb, rows_f[0].back().data(), K);
                    dequantize_row_q4_0_ref(w4.data() + r * nb, rows_f[1].back().data(), K);
                }
                const int64_t ldy = R + 3;
                const std::string sz = " K=" + std::to_string(K) + " rows=" + std::to_string(R) +
                                       " n_tok=" + std::to_string(T);
                for (int q = 0; q < 2; q++) {
                    const void* wq = q ? static_cast<const void*>(w4.data()) : static_cast<const void*>(w8.data());
                    const size_t rb = size_t(nb) * (q ? sizeof(block_q4_0) : sizeof(block_q8_0));
                    // the path's gemv/gemm read its load-time layout where it has one
                    std::vector<uint8_t> packed;
                    const void* wk = wq;
                    if (const repack_fn repack = k.repack_for(q ? GgmlType::Q4_0 : GgmlType::Q8_0)) {
                        packed.resize(size_t(R) * rb);
                        repack(K, R, wq, packed.data());
                        wk = packed.data();
                    }
                    const vec_dot_fn ref = q ? vec_dot_q4_0_q8_0_ref : vec_dot_q8_0_q8_0_ref;
                    const gemm_fn gemm = q ? k.gemm_q4_0_q8_0 : k.gemm_q8_0_q8_0;
                    const gemv_fn gemv = q ? k.gemv_q4_0_q8_0 : k.gemv_q8_0_q8_0;
                    const Tolerance tol = q ? test::kDotQ4 : test::kDotQ8;
                    const std::string name = std::string(k.isa) + (q ? " q4_0" : " q8_0");
                    std::vector<float> yg(size_t(T * ldy), -7.0f), yv(size_t(T * ldy), -7.0f);
                    gemm(K, R, wk, rb, T, x8.data(), yg.data(), ldy);
                    for (int64_t t = 0; t < T; t++) gemv(K, R, wk, rb, x8.data() + t * nb, yv.data() + t * ldy);
                    bool ok_g = true, ok_v = true, pad = true;
                    for (int64_t t = 0; t < T; t++) {
                        for (int64_t r = 0; r < R; r++) {
                            const auto* wr = static_cast<const uint8_t*>(wq) + r * rb;
                            const float want = ref(K, wr, x8.data() + t * nb);
                            const double sc = abs_dot(rows_f[size_t(q)][size_t(r)], xs_f[size_t(t)]);
                            ok_g = ok_g && close(yg[size_t(t * ldy + r)], want, sc, tol);
                            ok_v = ok_v && close(yv[size_t(t * ldy + r)], want, sc, tol);
                        }
                        for (int64_t r = R; r < ldy; r++)
                            pad = pad && yg[size_t(t * ldy + r)] == -7.0f && yv[size_t(t * ldy + r)] == -7.0f;
                    }
                    check(ok_g, name + " gemm" + sz);
                    check(ok_v, name + " gemv" + sz);
                    check(pad, name + " gemm/gemv leave padding alone" + sz);
                }
            }
        }
    }
}

// fp16 super-block scales of 1.0 (0x3c00), leaving every other byte as it is.
void set_unit_scales(block_q4_K& b) { b.d = b.dmin = 0x3c00; }
void set_unit_scales(block_q5_K& b) { b.d = b.dmin = 0x3c00; }
void set_unit_scales(block_q6_K& b) { b.d = 0x3c00; }

// K-quant weights (ref-quantized random rows, plus hand-made extreme blocks) against Q8_K
// activations: every path's dot equals the reference dot, and the reference dot equals the f32 dot
// of the dequantized operands (which ties the integer kernels to the block layouts).
template <typename Block>
void check_kquant_dot(const Kernels& k, const char* name, vec_dot_fn simd, vec_dot_fn ref,
                      void (*quantize)(const float*, Block*, int64_t),
                      void (*dequantize)(const Block*, float*, int64_t)) {
    for (int64_t nb : {1, 3, 5, 11, 41}) {
        const int64_t n = nb * QK_K;
        auto w = randn(n), x = randn(n, 3.0f);
        for (int j = 0; j < 40; j++) w[size_t(j)] = 0.0f;              // a zero run inside a block
        if (nb > 1) for (int j = 0; j < QK_K; j++) w[size_t(QK_K + j)] = std::fabs(w[size_t(QK_K + j)]) + 1;
        if (nb > 2) for (int j = 0; j < QK_K; j++) w[size_t(2 * QK_K + j)] = -std::fabs(w[size_t(2 * QK_K + j)]);
        if (nb > 3) for (int j = 0; j < QK_K; j++) x[size_t(3 * QK_K + j)] = 0.0f;  // all-zero activations
        std::vector<Block> wq(static_cast<size_t>(nb));
        std::vector<block_q8_K> xq(static_cast<size_t>(nb));
        quantize(w.data(), wq.data(), n);
        quantize_row_q8_K_ref(x.data(), xq.data(), n);
        std::vector<float> wd(static_cast<size_t>(n)), xd(static_cast<size_t>(n));
        dequantize(wq.data(), wd.data(), n);
        dequantize_row_q8_K_ref(xq.data(), xd.data(), n);
        double exact = 0;
        for (int64_t i = 0; i < n; i++) exact += double(wd[size_t(i)]) * xd[size_t(i)];
        const double s = abs_dot(wd, xd) + abs_dot(w, x);
        const float r = ref(n, wq.data(), xq.data());
        const std::string sz = " n=" + std::to_string(n);
        if (k.isa == std::string("scalar"))
            check(close(r, exact, s, test::kDotQK), std::string(name) + "_ref equals the dequantized dot" + sz);
        check(close(simd(n, wq.data(), xq.data()), r, s, test::kDotQK), std::string(k.isa) + " " + name + sz);
    }
    // extreme block: every weight byte 0xff (largest values and scales), activations at -128
    std::vector<Block> wq(2);
    std::memset(wq.data(), 0xff, wq.size() * sizeof(Block));
    for (auto& b : wq) set_unit_scales(b);
    std::vector<block_q8_K> xq(2);
    for (auto& b : xq) {
        b.d = 1.0f;
        for (int i = 0; i < QK_K; i++) b.qs[i] = -128;
        for (int j = 0; j < QK_K / 16; j++) b.bsums[j] = -128 * 16;
    }
    std::vector<float> wd(2 * QK_K), xd(2 * QK_K);
    dequantize(wq.data(), wd.data(), 2 * QK_K);
    dequantize_row_q8_K_ref(xq.data(), xd.data(), 2 * QK_K);
    const float r = ref(2 * QK_K, wq.data(), xq.data());
    check(std::isfinite(r) && close(simd(2 * QK_K, wq.data(), xq.data()), r, abs_dot(wd, xd), test::kDotQK),
          std::string(k.isa) + " " + name + " extreme values");
}

void test_kquant_dots(const Kernels& k) {
    check_kquant_dot<block_q4_K>(k, "vec_dot_q4_K_q8_K", k.vec_dot_q4_K_q8_K, vec_dot_q4_K_q8_K_ref,
                                 quantize_row_q4_K_ref, dequantize_row_q4_K_ref);
    check_kquant_dot<block_q5_K>(k, "vec_dot_q5_K_q8_K", k.vec_dot_q5_K_q8_K, vec_dot_q5_K_q8_K_ref,
                                 quantize_row_q5_K_ref, dequantize_row_q5_K_ref);
    check_kquant_dot<block_q6_K>(k, "vec_dot_q6_K_q8_K", k.vec_dot_q6_K_q8_K, vec_dot_q6_K_q8_K_ref,
                                 quantize_row_q6_K_ref, dequantize_row_q6_K_ref);

    // the activation quantizer: identical bytes to the reference, ties, signs and zero blocks included
    for (int64_t nb : {1, 2, 5, 10}) {
        const int64_t n = nb * QK_K;
        auto x = randn(n, 2.0f);
        if (nb > 1) {  // block 1: largest value -128 (scale 1), exact .5 ties of both signs, a repeated extreme
            for (int i = 0; i < QK_K; i++) x[size_t(QK_K + i)] = float((i % 2 ? 1 : -1) * (i % 100)) + 0.5f;
            x[size_t(QK_K + 7)] = -128.0f;
            x[size_t(QK_K + 9)] = 128.0f;   // same magnitude, later: the first one sets the scale
        }
        if (nb > 2) std::fill(x.begin() + 2 * QK_K, x.begin() + 3 * QK_K, 0.0f);
        if (nb > 3) x[size_t(3 * QK_K + 255)] = 1e30f;  // one huge value: the rest round to zero
        std::vector<block_q8_K> a(static_cast<size_t>(nb)), b(static_cast<size_t>(nb));
        std::memset(a.data(), 0x55, a.size() * sizeof(block_q8_K));
        std::memset(b.data(), 0xaa, b.size() * sizeof(block_q8_K));
        quantize_row_q8_K_ref(x.data(), a.data(), n);
        k.quantize_row_q8_K(x.data(), b.data(), n);
        check(std::memcmp(a.data(), b.data(), a.size() * sizeof(block_q8_K)) == 0,
              std::string(k.isa) + " quantize_row_q8_K n=" + std::to_string(n));
        bool sums_ok = true;
        for (const auto& blk : a)
            for (int j = 0; j < QK_K / 16; j++) {
                int s = 0;
                for (int i = 0; i < 16; i++) s += blk.qs[16 * j + i];
                sums_ok &= s == blk.bsums[j];
            }
        check(sums_ok, std::string(k.isa) + " quantize_row_q8_K bsums n=" + std::to_string(n));
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

bool all_close(const std::vector<float>& got, const std::vector<float>& want, Tolerance t) {
    bool ok = got.size() == want.size();
    for (size_t i = 0; ok && i < want.size(); i++) ok = close(got[i], want[i], std::fabs(want[i]) + 1, t);
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
                check(all_close(o1, o0, t), std::string(k.isa) + " attn_head_f32 head_dim=" + std::to_string(hd) +
                                                " n_kv=" + std::to_string(n_kv) + " q_sigma=" + std::to_string(int(qs)));
            }
        }
    }
}

}  // namespace

int main() {
    std::string names;
    for (const Kernels& k : runnable_paths()) {
        names += std::string(names.empty() ? "" : ", ") + k.isa;
        test_float_dots(k);
        test_quant_dots(k);
        test_multirow(k);
        test_kquant_dots(k);
        test_gemm(k);
        test_elementwise(k);
    }
    test_repack();
    std::printf("kernel paths tested: %s\n", names.c_str());
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
