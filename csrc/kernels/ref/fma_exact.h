// fma(a, b, c) for floats, correctly rounded without the C library: some C libraries' fmaf is not
// fused (mingw-w64's gave another float for a third of random inputs), and the scalar dots define
// the bits every SIMD kernel must reproduce (dispatch.h). a*b is exact in double (24 + 24 bits);
// the sum is rounded to odd (TwoSum gives its error; an inexact even result moves one ulp towards
// the exact value), and rounding that to float is the correctly rounded result, since double
// carries more than 24 + 2 bits.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace phi2cpu {

inline float fma_exact(float a, float b, float c) {
    const double p = double(a) * double(b);
    double s = p + double(c);
    const double bp = s - p;
    const double err = (p - (s - bp)) + (double(c) - bp);
    if (err != 0.0 && std::isfinite(s)) {
        uint64_t u;
        std::memcpy(&u, &s, sizeof u);
        if ((u & 1) == 0) {
            u += ((err > 0) == (s > 0)) ? 1 : uint64_t(-1);
            std::memcpy(&s, &u, sizeof u);
        }
    }
    return float(s);
}

}  // namespace phi2cpu
