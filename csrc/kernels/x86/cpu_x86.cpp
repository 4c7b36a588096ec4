#include "kernels/x86/cpu_x86.h"

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <cstdint>
#include <cstdlib>
#include <cstring>

#ifdef _MSC_VER
#include <intrin.h>
#else
#include <cpuid.h>
#endif

#include "platform/platform.h"

namespace phi2cpu {
namespace {

// cpuid leaf/subleaf into a, b, c, d; false when the CPU has no such leaf.
bool cpuid(unsigned leaf, unsigned sub, unsigned& a, unsigned& b, unsigned& c, unsigned& d) {
#ifdef _MSC_VER
    int r[4];
    __cpuid(r, int(leaf & 0x80000000u));
    if (unsigned(r[0]) < leaf) return false;
    __cpuidex(r, int(leaf), int(sub));
    a = unsigned(r[0]), b = unsigned(r[1]), c = unsigned(r[2]), d = unsigned(r[3]);
    return true;
#else
    return __get_cpuid_count(leaf, sub, &a, &b, &c, &d) != 0;
#endif
}

uint64_t xgetbv0() {
#ifdef _MSC_VER
    return _xgetbv(0);
#else
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (uint64_t(hi) << 32) | lo;
#endif
}

}  // namespace

X86Features detect_x86() {
    X86Features f;
    unsigned a, b, c, d;
    if (!cpuid(0, 0, a, b, c, d)) return f;
    char vendor[12];
    std::memcpy(vendor, &b, 4);
    std::memcpy(vendor + 4, &d, 4);
    std::memcpy(vendor + 8, &c, 4);
    f.intel = std::memcmp(vendor, "GenuineIntel", 12) == 0;
    if (!cpuid(1, 0, a, b, c, d)) return f;
    const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
    if (!osxsave || !avx) return f;
    const uint64_t xcr0 = xgetbv0();
    const bool ymm_state = (xcr0 & 0x6) == 0x6;      // SSE + AVX state
    const bool zmm_state = os::avx512_state_enabled(xcr0);
    if (!cpuid(7, 0, a, b, c, d)) return f;
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
