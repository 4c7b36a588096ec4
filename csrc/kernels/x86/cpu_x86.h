// What this x86 CPU and its OS can run (cpuid for the instructions, xgetbv for the saved state).
#pragma once
#include <cstddef>

namespace phi2cpu {

struct X86Features {
    bool avx2_fma_f16c = false;      // AVX2 + FMA + F16C with YMM state enabled by the OS
    bool avx512_vnni = false;        // AVX-512 F/BW/VL + VNNI with ZMM state enabled by the OS
    bool intel = false;              // vendor GenuineIntel
};

X86Features detect_x86();

// How far ahead (bytes) the decode GEMV prefetches its weight stream, chosen once per process:
// PHI2CPU_GEMV_PREFETCH=bytes where set (tests run both settings), else 4096 on Intel and 0
// elsewhere. Stand-alone GEMV from memory, GB/s, none vs 4 KiB ahead: on a 16-core Xeon with
// AVX-512, Q4_0 1 thread 9.0 vs 11.9, 4 threads 33.7 vs 53.7, 16 threads 119 vs 108; on an
// AVX-512 EPYC, Q4_0 1 thread 29.2 vs 26.4, 2 threads about 33 either way.
size_t gemv_prefetch_bytes();

}  // namespace phi2cpu
