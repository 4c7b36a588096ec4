// Kernel-level tolerances, one place: how far a SIMD kernel may drift from its _ref twin.
#pragma once

namespace phi2cpu::test {

// |simd - ref| <= abs + rel * scale, where scale is the sum of |w_i x_i| (the dot's conditioning).
struct Tolerance { double abs, rel; };

constexpr Tolerance kDotF32 = {1e-5, 1e-5};    // f32 x f32: reassociation only
constexpr Tolerance kDotF16 = {1e-5, 1e-5};    // f16 weights converted exactly, f32 sums
// Quantized weights x Q8 activations: exact integer (sub-)block sums; per-block float scaling (and
// a min or offset term, applied once per block) is summed in another order than the reference's.
constexpr Tolerance kDotQuant = {1e-5, 1e-5};
constexpr Tolerance kElementwise = {1e-6, 1e-5};  // layernorm, gelu, rope, softmax, attention

}  // namespace phi2cpu::test
