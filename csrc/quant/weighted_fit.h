// The weighted least-squares block fits shared by the importance-weighted quantizers.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

namespace phi2cpu {

inline int clamp_int(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }
inline int round_to(float v, int lo, int hi) { return clamp_int(int(std::nearbyint(v)), lo, hi); }

// element_weights of a row; a block whose weights are all zero (columns the calibration never
// reached) takes those of importance 1 instead.
std::vector<float> row_weights(const float* x, const float* importance, int64_t n, int block);

// x ~ d * q, integers q in [qmin, qmax] (n <= 256), minimising sum w (x - d q)^2. Candidates map the
// largest-magnitude value onto either end of the range, within +-0.1*steps of it; each alternates
// least squares and re-rounding. Returns d (fp16-rounded when fp16_scale; 0 for an all-zero block),
// q the integers nearest x at that d.
float fit_symmetric(const float* x, const float* w, int n, int qmin, int qmax, int steps, bool fp16_scale, int* q);

// x ~ d * q + m, integers q in [0, nmax] (n <= 256); m held <= 0 when m_nonpos (formats that store
// -m unsigned). d, m are the unrounded least-squares values for the integers in q.
void fit_affine(const float* x, const float* w, int n, int nmax, bool m_nonpos, float* d, float* m, int* q);

}  // namespace phi2cpu
