// Named points of the forward pass where activations are captured (copied out) or edited in place.
// A forward with no hooks tests one null pointer per point and touches nothing else.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace phi2cpu {

struct Config;

// Row widths in comments; n = tokens of the batch. Every point but LnFinal belongs to a layer.
enum class Point : int {
    ResidPre,   // n_embd: the residual stream entering the layer
    Ln,         // n_embd: the layer's LayerNorm output, read by attention and MLP
    AttnProbs,  // n_kv per (head, query): softmax probabilities; capture only
    HeadOut,    // n_head * head_dim: each head's attention output before `dense`, heads side by side
    AttnOut,    // n_embd: `dense` output, bias included
    MlpPre,     // n_ff: fc1 output
    MlpPost,    // n_ff: gelu_new(fc1 output)
    MlpOut,     // n_embd: fc2 output, bias included
    ResidPost,  // n_embd: the residual stream leaving the layer
    LnFinal,    // n_embd: the final LayerNorm output (layer 0)
    Count
};

// "resid_pre.3", "ln_final": the names the Python API uses.
std::string point_name(Point p, int layer);

// rows: (n_rows, width); row i goes to positions[i], or row 0 to every position in `positions`
// (every position when `positions` is empty). Positions count from the sequence start.
struct Edit {
    enum Op { Add, Mul, Set } op = Add;  // x += row; x *= row (per column); x = row (columns in `cols`)
    Point point = Point::ResidPre;
    int layer = 0;
    std::vector<float> rows;
    int n_rows = 0;
    std::vector<int> positions;
    std::vector<uint8_t> cols;  // Set only: 1 = overwrite this column; empty = all columns
};

// dst: a zeroed (n_total, width) array, or for AttnProbs (n_head, n_total, n_keys) with key j in
// column j - (the query's sequence start).
struct Capture {
    Point point = Point::ResidPre;
    int layer = 0;
    float* dst = nullptr;
    int n_total = 0, n_keys = 0;
};

class Hooks {
public:
    Hooks(const Config& c);
    // Throw std::invalid_argument naming the point when the layer, width or rows do not fit.
    void add_edit(Edit e);
    void add_capture(Capture c);
    bool empty() const { return edits_.empty() && captures_.empty(); }
    bool wants(Point p, int layer) const { return active_[index(p, layer)] != 0; }
    bool has_edits() const { return !edits_.empty(); }

    // Edits, then captures, at point (p, layer): x holds n rows of the point's width; row t is
    // position pos[t] of its sequence and row row0 + t of the call.
    void apply(Point p, int layer, float* x, int n, const int* pos, int row0) const;
    // The probabilities of one (head, query): e holds n_kv values proportional to them.
    void capture_probs(int layer, int head, int row, const float* e, int n_kv) const;

private:
    size_t index(Point p, int layer) const { return size_t(layer) * size_t(Point::Count) + size_t(p); }
    int64_t width(Point p) const;
    void check(Point p, int layer) const;

    int n_layer_;
    int64_t n_embd_, n_ff_;
    std::vector<Edit> edits_;
    std::vector<Capture> captures_;
    std::vector<uint8_t> active_;  // (n_layer, Count): anything at this point
};

}  // namespace phi2cpu
