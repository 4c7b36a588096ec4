// Rotary angles, shared by every rope kernel so all paths rotate by the same cos/sin: pair i of
// n_rot/2 turns by pos * theta^(-2i/n_rot), computed in double so long positions keep full f32
// accuracy. Internal linkage: each kernel file is compiled with its own ISA flags and keeps its own
// copy, so the linker can never hand the scalar path a copy built for AVX2 or AVX-512.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

namespace phi2cpu {
namespace {

// cos/sin of pairs i0 .. i0+m-1.
inline void rope_cos_sin(int pos, float theta, int n_rot, int i0, int m, float* cs, float* sn) {
    for (int j = 0; j < m; j++) {
        const double angle = double(pos) * std::pow(double(theta), -2.0 * (i0 + j) / n_rot);
        cs[j] = float(std::cos(angle));
        sn[j] = float(std::sin(angle));
    }
}

// Turns pairs j0..m-1 of (xa[j], xb[j]) one at a time: the tail after a kernel's vector steps.
inline void rope_pairs_tail(float* xa, float* xb, const float* cs, const float* sn, int j0, int m) {
    for (int j = j0; j < m; j++) {
        const float a = xa[j], b = xb[j];
        xa[j] = a * cs[j] - b * sn[j];
        xb[j] = b * cs[j] + a * sn[j];
    }
}

// NeoX rotary over n_head heads of x: pairs (i, i + n_rot/2) of each head's first n_rot dims, in
// chunks of at most 64 pairs that share one cos/sin table. rotate(xa, xb, cs, sn, m) turns the m
// pairs (xa[j], xb[j]) by (cs[j], sn[j]); a kernel file supplies it in its own SIMD.
template <typename Rotate>
inline void rope_neox_chunks(int n_head, int head_dim, int n_rot, int pos, float theta, float* x, Rotate rotate) {
    const int half = n_rot / 2;
    constexpr int kChunk = 64;
    float cs[kChunk], sn[kChunk];
    for (int i0 = 0; i0 < half; i0 += kChunk) {
        const int m = std::min(kChunk, half - i0);
        rope_cos_sin(pos, theta, n_rot, i0, m, cs, sn);
        for (int h = 0; h < n_head; h++) {
            float* xa = x + int64_t(h) * head_dim + i0;
            rotate(xa, xa + half, cs, sn, m);
        }
    }
}

}  // namespace
}  // namespace phi2cpu
