// Importance-weighted quantizers. Every type minimises sum_i w_i (x_i - xhat_i)^2 over one block:
// candidate scales spread around the one that maps the extreme value onto the end of the integer
// range, each refined by alternating weighted least squares and re-rounding; the stored (fp16 or
// 6/8-bit) scales are then fitted the same way, weighted by how much error each scale step costs,
// and the integers re-rounded against the scales as stored.
#include "quant/quantize_weighted.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "quant/fp16.h"
#include "quant/weighted_fit.h"

namespace phi2cpu {
namespace {

// Weighted squared error of x ~ d * q + m.
float affine_error(const float* x, const float* w, int n, float d, float m, const int* q) {
    float e = 0;
    for (int i = 0; i < n; i++) {
        const float r = d * float(q[i]) + m - x[i];
        e += w[i] * r * r;
    }
    return e;
}

// The block's (d, m) as fp16, and its integers re-rounded against them.
void affine_fp16(const float* x, const float* w, int n, int nmax, uint16_t* d16, uint16_t* m16, int* q) {
    float d, m;
    fit_affine(x, w, n, nmax, false, &d, &m, q);
    // the stored pair: the nearest fp16 values or their neighbours, whichever errs least
    const uint16_t hd = fp32_to_fp16(d), hm = fp32_to_fp16(m);
    float best_err = INFINITY;
    int tmp[32];
    *d16 = hd;
    *m16 = hm;
    for (int a = -1; a <= 1; a++) {
        for (int b = -1; b <= 1; b++) {
            const uint16_t cd = uint16_t(hd + (d > 0 ? a : 0)), cm = uint16_t(hm + b);
            const float dd = fp16_to_fp32(cd), mm = fp16_to_fp32(cm);
            if (!std::isfinite(dd) || !std::isfinite(mm) || dd < 0) continue;
            for (int i = 0; i < n; i++) tmp[i] = dd > 0 ? round_to((x[i] - mm) / dd, 0, nmax) : 0;
            const float e = affine_error(x, w, n, dd, mm, tmp);
            if (e < best_err) { best_err = e; *d16 = cd; *m16 = cm; std::copy(tmp, tmp + n, q); }
        }
    }
}

void pack_nibbles(const int* q, int offset, uint8_t* qs) {
    for (int j = 0; j < 16; j++) qs[j] = uint8_t(((q[j] + offset) & 15) | (((q[j + 16] + offset) & 15) << 4));
}
void pack_high_bits(const int* q, int offset, uint8_t* qh) {
    uint32_t h = 0;
    for (int j = 0; j < 32; j++) h |= uint32_t(((q[j] + offset) >> 4) & 1) << j;
    for (int i = 0; i < 4; i++) qh[i] = uint8_t(h >> (8 * i));
}

// One row: per-element weights, then f(x_block, w_block, y_block) for each block of QK.
template <int QK, typename Block, typename F>
void for_blocks(const float* x, Block* y, int64_t n, const float* importance, F f) {
    const std::vector<float> w = row_weights(x, importance, n, QK);
    for (int64_t b = 0; b < n / QK; b++) f(x + b * QK, w.data() + b * QK, y[b]);
}

template <int Bits>
float symmetric_block(const float* x, const float* w, int* q) {
    return fit_symmetric(x, w, 32, -(1 << (Bits - 1)), (1 << (Bits - 1)) - 1, 9, true, q);
}

}  // namespace

float fit_symmetric(const float* x, const float* w, int n, int qmin, int qmax, int steps, bool fp16_scale, int* q) {
    float amax = 0, max = 0;
    for (int i = 0; i < n; i++)
        if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
    std::fill(q, q + n, 0);
    if (amax == 0) return 0.0f;
    int tmp[QK_K];
    float end_d[2] = {0, 0}, best_score = -1;  // the best scale mapping max to each end
    for (int e = 0; e < 2; e++) {
        const int end = e == 0 ? qmin : qmax;
        if (end == 0) continue;
        float end_score = -1;
        for (int t = -steps; t <= steps; t++) {
            const float target = float(end) + (end < 0 ? -0.1f : 0.1f) * float(t);
            if (target * float(end) <= 0) continue;
            float d = max / target;
            for (int iter = 0; iter < 3; iter++) {
                float sxq = 0, sqq = 0;
                bool changed = false;
                const float id = 1.0f / d;
                for (int i = 0; i < n; i++) {
                    const int v = round_to(x[i] * id, qmin, qmax);
                    changed |= iter == 0 || v != tmp[i];
                    tmp[i] = v;
                    sxq += w[i] * x[i] * float(v);
                    sqq += w[i] * float(v * v);
                }
                if (!changed || sqq <= 0) break;
                d = sxq / sqq;  // the weighted least-squares scale for these integers
                // error = sum w x^2 - sxq^2 / sqq: the larger sxq^2 / sqq, the better
                const float score = sxq * sxq / sqq;
                if (score > end_score) { end_score = score; end_d[e] = d; }
                if (score > best_score) { best_score = score; std::copy(tmp, tmp + n, q); }
                if (d == 0) break;
            }
        }
    }
    // the stored scale: of each end's best, the nearest fp16 value or a neighbour (or, unrounded, the
    // value itself), whichever errs least once the integers are re-rounded against it
    float best_err = INFINITY, best_d = 0;
    for (float d0 : end_d) {
        if (d0 == 0) continue;
        const uint16_t h = fp32_to_fp16(d0);
        for (int dh = fp16_scale ? -1 : 0; dh <= (fp16_scale ? 1 : 0); dh++) {
            const float d = fp16_scale ? fp16_to_fp32(uint16_t(h + dh)) : d0;
            if (!std::isfinite(d) || d == 0 || (d > 0) != (d0 > 0)) continue;
            float err = 0;
            for (int i = 0; i < n; i++) {
                tmp[i] = round_to(x[i] / d, qmin, qmax);
                const float r = d * float(tmp[i]) - x[i];
                err += w[i] * r * r;
            }
            if (err < best_err) { best_err = err; best_d = d; std::copy(tmp, tmp + n, q); }
        }
    }
    return best_d;
}

void fit_affine(const float* x, const float* w, int n, int nmax, bool m_nonpos, float* d_out, float* m_out, int* q) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < n; i++) { lo = std::min(lo, x[i]); hi = std::max(hi, x[i]); }
    if (m_nonpos) lo = std::min(lo, 0.0f);
    if (hi <= lo) {
        std::fill(q, q + n, 0);
        *d_out = 0;
        *m_out = lo;
        return;
    }
    int tmp[QK_K];
    float best_err = INFINITY, best_d = (hi - lo) / float(nmax), best_m = lo;
    for (int i = 0; i < n; i++) q[i] = round_to((x[i] - lo) / best_d, 0, nmax);
    for (int t = -9; t <= 9; t++) {
        float d = (hi - lo) / (float(nmax) + 0.1f * float(t)), m = lo;
        for (int iter = 0; iter < 3; iter++) {
            float sw = 0, sq = 0, sq2 = 0, sx = 0, sqx = 0;
            const float id = 1.0f / d;
            for (int i = 0; i < n; i++) {
                tmp[i] = round_to((x[i] - m) * id, 0, nmax);
                const float v = float(tmp[i]);
                sw += w[i]; sq += w[i] * v; sq2 += w[i] * v * v; sx += w[i] * x[i]; sqx += w[i] * v * x[i];
            }
            if (sq2 <= 0) break;
            const float det = sw * sq2 - sq * sq;
            float nd, nm;
            if (det > 1e-5f * sw * sq2) {
                nd = (sw * sqx - sq * sx) / det;
                nm = (sq2 * sx - sq * sqx) / det;
            } else {  // (nearly) every integer equal: the offset is not determined, keep it
                nm = m;
                nd = (sqx - m * sq) / sq2;
            }
            if (m_nonpos && nm > 0) { nm = 0; nd = sqx / sq2; }
            if (!(nd > 0)) break;
            const float err = affine_error(x, w, n, nd, nm, tmp);
            if (err < best_err) { best_err = err; best_d = nd; best_m = nm; std::copy(tmp, tmp + n, q); }
            d = nd;
            m = nm;
        }
    }
    *d_out = best_d;
    *m_out = best_m;
}

std::vector<float> row_weights(const float* x, const float* importance, int64_t n, int block) {
    std::vector<float> w(static_cast<size_t>(n));
    element_weights(x, importance, n, w.data());
    std::vector<float> plain;
    for (int64_t b = 0; b + block <= n; b += block) {
        if (std::any_of(w.begin() + b, w.begin() + b + block, [](float v) { return v > 0; })) continue;
        if (plain.empty()) {
            plain.resize(w.size());
            element_weights(x, nullptr, n, plain.data());
        }
        std::copy(plain.begin() + b, plain.begin() + b + block, w.begin() + b);
    }
    return w;
}

void element_weights(const float* x, const float* importance, int64_t n, float* w) {
    double s2 = 0;
    for (int64_t i = 0; i < n; i++) s2 += double(x[i]) * x[i];
    const float sigma2 = n ? float(s2 / double(n)) : 0.0f;
    for (int64_t i = 0; i < n; i++) w[i] = (importance ? importance[i] : 1.0f) * std::sqrt(sigma2 + x[i] * x[i]);
}

void quantize_row_q4_0_weighted(const float* x, block_q4_0* y, int64_t n, const float* importance) {
    for_blocks<QK4_0>(x, y, n, importance, [](const float* xb, const float* w, block_q4_0& b) {
        int q[32];
        b.d = fp32_to_fp16(symmetric_block<4>(xb, w, q));
        pack_nibbles(q, 8, b.qs);
    });
}

void quantize_row_q5_0_weighted(const float* x, block_q5_0* y, int64_t n, const float* importance) {
    for_blocks<QK5_0>(x, y, n, importance, [](const float* xb, const float* w, block_q5_0& b) {
        int q[32];
        b.d = fp32_to_fp16(symmetric_block<5>(xb, w, q));
        pack_nibbles(q, 16, b.qs);
        pack_high_bits(q, 16, b.qh);
    });
}

void quantize_row_q8_0_weighted(const float* x, block_q8_0* y, int64_t n, const float* importance) {
    for_blocks<QK8_0>(x, y, n, importance, [](const float* xb, const float* w, block_q8_0& b) {
        int q[32];
        b.d = fp32_to_fp16(fit_symmetric(xb, w, 32, -128, 127, 4, true, q));
        for (int j = 0; j < 32; j++) b.qs[j] = int8_t(q[j]);
    });
}

void quantize_row_q4_1_weighted(const float* x, block_q4_1* y, int64_t n, const float* importance) {
    for_blocks<QK4_1>(x, y, n, importance, [](const float* xb, const float* w, block_q4_1& b) {
        int q[32];
        affine_fp16(xb, w, 32, 15, &b.d, &b.m, q);
        pack_nibbles(q, 0, b.qs);
    });
}

void quantize_row_q5_1_weighted(const float* x, block_q5_1* y, int64_t n, const float* importance) {
    for_blocks<QK5_1>(x, y, n, importance, [](const float* xb, const float* w, block_q5_1& b) {
        int q[32];
        affine_fp16(xb, w, 32, 31, &b.d, &b.m, q);
        pack_nibbles(q, 0, b.qs);
        pack_high_bits(q, 0, b.qh);
    });
}

namespace {

int nearest_iq4nl(float v) {
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        (v < float(kIQ4NLValues[mid]) ? hi : lo) = mid;
    }
    return v - float(kIQ4NLValues[lo]) < float(kIQ4NLValues[hi]) - v ? lo : hi;
}

// IQ4_NL: x ~ d * table[q]. Returns the fp16 scale; q gets the indices.
uint16_t fit_iq4nl(const float* x, const float* w, int* q) {
    float amax = 0, max = 0;
    for (int i = 0; i < 32; i++)
        if (std::fabs(x[i]) > amax) { amax = std::fabs(x[i]); max = x[i]; }
    if (amax == 0) {
        std::fill(q, q + 32, 8);  // table[8] * 0
        return 0;
    }
    int tmp[32];
    float best_d = 0, best_score = -1;
    for (float end : {-127.0f, 113.0f}) {
        for (int t = -8; t <= 8; t++) {
            float d = max / (end + (end < 0 ? -1.5f : 1.5f) * float(t));
            for (int iter = 0; iter < 2; iter++) {
                float sxv = 0, svv = 0;
                const float id = 1.0f / d;
                for (int i = 0; i < 32; i++) {
                    tmp[i] = nearest_iq4nl(x[i] * id);
                    const float v = float(kIQ4NLValues[tmp[i]]);
                    sxv += w[i] * x[i] * v;
                    svv += w[i] * v * v;
                }
                if (svv <= 0) break;
                d = sxv / svv;
                const float score = sxv * sxv / svv;
                if (score > best_score) { best_score = score; best_d = d; std::copy(tmp, tmp + 32, q); }
                if (d == 0) break;
            }
        }
    }
    const uint16_t h = fp32_to_fp16(best_d);
    uint16_t d16 = h;
    float best_err = INFINITY;
    for (int dh = -1; dh <= 1; dh++) {
        const float d = fp16_to_fp32(uint16_t(h + dh));
        if (!std::isfinite(d) || d == 0 || (d > 0) != (best_d > 0)) continue;
        float e = 0;
        for (int i = 0; i < 32; i++) {
            tmp[i] = nearest_iq4nl(x[i] / d);
            const float r = d * float(kIQ4NLValues[tmp[i]]) - x[i];
            e += w[i] * r * r;
        }
        if (e < best_err) { best_err = e; d16 = uint16_t(h + dh); std::copy(tmp, tmp + 32, q); }
    }
    return d16;
}

}  // namespace

void quantize_row_iq4_nl_weighted(const float* x, block_iq4_nl* y, int64_t n, const float* importance) {
    for_blocks<QK4_NL>(x, y, n, importance, [](const float* xb, const float* w, block_iq4_nl& b) {
        int q[32];
        b.d = fit_iq4nl(xb, w, q);
        pack_nibbles(q, 0, b.qs);
    });
}

}  // namespace phi2cpu
