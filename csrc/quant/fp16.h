// IEEE half <-> float conversion, scalar and bit-exact (round to nearest even, like numpy's
// astype(float16) and the F16C instructions), so files written here equal gguf.quants bytes.
#pragma once
#include <cstdint>
#include <cstring>

namespace phi2cpu {

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t man = h & 0x3ff;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));        // inf / nan
    if (exp != 0) return bits_f32(sign | ((exp + 112) << 23) | (man << 13));   // normal
    // zero or subnormal: man * 2^-24
    const float v = float(man) * (1.0f / 16777216.0f);
    return sign ? -v : v;
}

inline uint16_t fp32_to_fp16(float f) {
    const uint32_t x = f32_bits(f);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)                                   // inf or nan
        return uint16_t(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 | ((ax >> 13) & 0x3ff) : 0));
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00);   // rounds to >= 65520: overflow
    if (ax < 0x38800000u) {                                   // below 2^-14: subnormal half
        if (ax < 0x33000000u) return sign;                    // below 2^-25: rounds to zero
        // value = m * 2^(e-150); in half-subnormal units of 2^-24 that is m >> (126 - e)
        const uint32_t e = ax >> 23;
        const uint32_t m = (ax & 0x7fffff) | 0x800000;
        const uint32_t s = 126 - e;                           // 14..24
        uint32_t q = m >> s;
        const uint32_t rem = m & ((1u << s) - 1);
        const uint32_t half = 1u << (s - 1);
        if (rem > half || (rem == half && (q & 1))) q++;
        return uint16_t(sign | q);
    }
    // normal: rebias exponent, round mantissa 23 -> 10 bits to nearest even
    uint32_t h = ((ax >> 13) - (112u << 10));
    const uint32_t rem = ax & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return uint16_t(sign | h);
}

}  // namespace phi2cpu
