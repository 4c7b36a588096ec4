#pragma once
#include <cstdint>

namespace phi2cpu {

// Phi-2 hyper-parameters (values for microsoft/phi-2 in comments).
struct Config {
    int n_vocab = 0;        // 51200 (embedding rows; the tokenizer uses 50295)
    int n_embd = 0;         // 2560
    int n_ff = 0;           // 10240
    int n_layer = 0;        // 32
    int n_head = 0;         // 32
    int n_rot = 0;          // 32 rotary dims of each head's 80
    float rope_theta = 0;   // 10000
    float norm_eps = 0;     // 1e-5
    int n_ctx_train = 0;    // 2048

    int head_dim() const { return n_embd / n_head; }
};

}  // namespace phi2cpu
