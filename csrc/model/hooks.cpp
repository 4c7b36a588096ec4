#include "model/hooks.h"

#include <algorithm>
#include <stdexcept>

#include "model/config.h"

namespace phi2cpu {

std::string point_name(Point p, int layer) {
    static const char* names[] = {"resid_pre", "ln", "attn_probs", "head_out", "attn_out",
                                  "mlp_pre", "mlp_post", "mlp_out", "resid_post", "ln_final"};
    if (p == Point::LnFinal) return "ln_final";
    return std::string(names[int(p)]) + "." + std::to_string(layer);
}

Hooks::Hooks(const Config& c)
    : n_layer_(c.n_layer), n_embd_(c.n_embd), n_ff_(c.n_ff),
      active_(size_t(c.n_layer) * size_t(Point::Count), 0) {}

int64_t Hooks::width(Point p) const { return p == Point::MlpPre || p == Point::MlpPost ? n_ff_ : n_embd_; }

void Hooks::check(Point p, int layer) const {
    if (int(p) < 0 || p >= Point::Count) throw std::invalid_argument("unknown hook point " + std::to_string(int(p)));
    const int n_layers = p == Point::LnFinal ? 1 : n_layer_;
    if (layer < 0 || layer >= n_layers)
        throw std::invalid_argument(point_name(p, layer) + ": layer " + std::to_string(layer) + " is outside 0.." +
                                    std::to_string(n_layers - 1));
}

void Hooks::add_edit(Edit e) {
    check(e.point, e.layer);
    const std::string name = point_name(e.point, e.layer);
    if (e.point == Point::AttnProbs) throw std::invalid_argument(name + ": attention probabilities can be captured, not edited");
    const int64_t w = width(e.point);
    if (e.n_rows < 1 || e.rows.size() != size_t(e.n_rows) * size_t(w))
        throw std::invalid_argument(name + ": an edit needs rows of width " + std::to_string(w));
    if (e.n_rows != 1 && size_t(e.n_rows) != e.positions.size())
        throw std::invalid_argument(name + ": an edit has one row, or one row per position");
    for (int p : e.positions)
        if (p < 0) throw std::invalid_argument(name + ": positions must be >= 0");
    if (!e.cols.empty() && (e.op != Edit::Set || e.cols.size() != size_t(w)))
        throw std::invalid_argument(name + ": a column mask belongs to a Set edit and has the row width");
    active_[index(e.point, e.layer)] = 1;
    edits_.push_back(std::move(e));
}

void Hooks::add_capture(Capture c) {
    check(c.point, c.layer);
    if (!c.dst || c.n_total <= 0 || (c.point == Point::AttnProbs && c.n_keys <= 0))
        throw std::invalid_argument(point_name(c.point, c.layer) + ": capture needs a destination");
    active_[index(c.point, c.layer)] = 1;
    captures_.push_back(c);
}

void Hooks::apply(Point p, int layer, float* x, int n, const int* pos, int row0) const {
    const int64_t w = width(p);
    for (const Edit& e : edits_) {
        if (e.point != p || e.layer != layer) continue;
        // (row t of x, row of e.rows) pairs this edit touches
        auto edit_row = [&](int t, const float* r) {
            float* y = x + size_t(t) * size_t(w);
            if (e.op == Edit::Add)
                for (int64_t j = 0; j < w; j++) y[j] += r[j];
            else if (e.op == Edit::Mul)
                for (int64_t j = 0; j < w; j++) y[j] *= r[j];
            else if (e.cols.empty())
                std::copy(r, r + w, y);
            else
                for (int64_t j = 0; j < w; j++)
                    if (e.cols[size_t(j)]) y[j] = r[j];
        };
        if (e.positions.empty()) {
            for (int t = 0; t < n; t++) edit_row(t, e.rows.data());
            continue;
        }
        for (size_t i = 0; i < e.positions.size(); i++)
            for (int t = 0; t < n; t++)
                if (pos[t] == e.positions[i]) edit_row(t, e.rows.data() + (e.n_rows == 1 ? 0 : i * size_t(w)));
    }
    for (const Capture& c : captures_)
        if (c.point == p && c.layer == layer && p != Point::AttnProbs)
            std::copy(x, x + size_t(n) * size_t(w), c.dst + size_t(row0) * size_t(w));
}

void Hooks::capture_probs(int layer, int head, int row, const float* e, int n_kv) const {
    for (const Capture& c : captures_) {
        if (c.point != Point::AttnProbs || c.layer != layer) continue;
        double sum = 0.0;
        for (int j = 0; j < n_kv; j++) sum += e[j];
        const float inv = float(1.0 / sum);
        float* dst = c.dst + (size_t(head) * size_t(c.n_total) + size_t(row)) * size_t(c.n_keys);
        for (int j = 0; j < std::min(n_kv, c.n_keys); j++) dst[j] = e[j] * inv;
    }
}

}  // namespace phi2cpu
