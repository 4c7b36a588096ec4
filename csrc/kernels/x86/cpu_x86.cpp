#include "kernels/x86/cpu_x86.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace phi2cpu {
namespace {

uint64_t xgetbv0() {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
}

}  // namespace

X86Features detect_x86() {
    X86Features f;
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return f;
    char vendor[12];
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    f.intel = std::memcmp(vendor, "GenuineIntel", 12) == 0;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    const uint64_t xcr0 = xgetbv0();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;      // SSE + AVX state
    const bool zmm_state = (xcr0 & 0xe6) == 0xe6;    // + opmask, ZMM_Hi256, Hi16_ZMM
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return f;
    const bool avx2 = b & (1u << 5);
    const bool avx512f = b & (1u << 16), avx512bw = b & (1u << 30), avx512vl = b & (1u << 31);
    const bool vnni = c & (1u << 11);
    f.avx2_fma_f16c = ymm_state && avx2 && fma && f16c;
    f.avx512_vnni = f.avx2_fma_f16c && zmm_state && avx512f && avx512bw && avx512vl && vnni;
    return f;
}

size_t gemv_prefetch_bytes() {
    static const size_t bytes = [] {
        const char* env = std::getenv("PHI2CPU_GEMV_PREFETCH");
        if (env && *env) return size_t(std::strtoull(env, nullptr, 10));
        return detect_x86().intel ? size_t(4096) : size_t(0);
    }();
    return bytes;
}

}  // namespace phi2cpu
#else
namespace phi2cpu {
X86Features detect_x86() { return {}; }
size_t gemv_prefetch_bytes() { return 0; }
}  // namespace phi2cpu
#endif
