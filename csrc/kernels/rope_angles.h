// Rotary angles, shared by every rope kernel so all paths rotate by the same cos/sin: pair i of
// n_rot/2 turns by pos * theta^(-2i/n_rot), computed in double so long positions keep full f32
// accuracy.
#pragma once
#include <cmath>

namespace phi2cpu {

// cos/sin of pairs i0 .. i0+m-1.
inline void rope_cos_sin(int pos, float theta, int n_rot, int i0, int m, float* cs, float* sn) {
    for (int j = 0; j < m; j++) {
        const double angle = double(pos) * std::pow(double(theta), -2.0 * (i0 + j) / n_rot);
        cs[j] = float(std::cos(angle));
        sn[j] = float(std::sin(angle));
    }
}

}  // namespace phi2cpu
