// The one definition of the vector exp that every SIMD path uses (vexp_avx2.h, vexp_avx512.h,
// vexp_neon.h), each in its own intrinsics:
// exp(x) = 2^n exp(r) with n = round(x / ln2), |r| <= ln2/2 (ln2 split in two so r stays exact);
// exp(r) = 1 + r + r^2 q(r), q a degree-4 minimax fit of (exp(r) - 1 - r) / r^2: relative error
// <= 1.2e-7. 2^n is built in the exponent bits, so x is clamped to where 2^n is a normal float:
// x > 88.3 gives exp(88.3) and x < -87.3 (or NaN) gives 0.
#pragma once

namespace phi2cpu {
namespace vexp_poly {

constexpr float kMin = -87.3f, kMax = 88.3f;
constexpr float kLog2e = 1.44269504f;
constexpr float kLn2Hi = 0.693147182f, kLn2Lo = -1.90465429e-9f;  // ln2 = kLn2Hi + kLn2Lo
constexpr float kQ4 = 1.38146162e-3f, kQ3 = 8.36871378e-3f, kQ2 = 4.16683890e-2f, kQ1 = 1.66665211e-1f,
                kQ0 = 4.99999940e-1f;  // q(r) = kQ0 + kQ1 r + ... + kQ4 r^4

}  // namespace vexp_poly
}  // namespace phi2cpu
