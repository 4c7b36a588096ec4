// What this x86 CPU and its OS can run (cpuid for the instructions, xgetbv for the saved state).
#pragma once

namespace phi2cpu {

struct X86Features {
    bool avx2_fma_f16c = false;      // AVX2 + FMA + F16C with YMM state enabled by the OS
    bool avx512_vnni = false;        // AVX-512 F/BW/VL + VNNI with ZMM state enabled by the OS
};

X86Features detect_x86();

}  // namespace phi2cpu
