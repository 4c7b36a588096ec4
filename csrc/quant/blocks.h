// On-disk block layouts, identical to GGUF's (see ggml's type table). Kernels read these directly.
#pragma once
#include <cstddef>
#include <cstdint>

namespace phi2cpu {

// GGML type ids as stored in GGUF tensor infos.
enum class GgmlType : uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8 };

constexpr int QK8_0 = 32;
constexpr int QK4_0 = 32;

struct block_q8_0 {
    uint16_t d;          // fp16 scale
    int8_t qs[QK8_0];    // value = d * qs[i]
};
static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");

struct block_q4_0 {
    uint16_t d;              // fp16 scale
    uint8_t qs[QK4_0 / 2];   // low nibbles hold elements 0..15, high nibbles 16..31; value = d*(q-8)
};
static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");

}  // namespace phi2cpu
