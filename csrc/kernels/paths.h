// Kernel paths per architecture: one paths_<arch>.cpp is compiled and appends the SIMD tables
// this CPU can run, each starting from the scalar table so unported ops fall back to _ref.
#pragma once
#include <vector>

#include "kernels/dispatch.h"

namespace phi2cpu {

Kernels scalar_kernels();
void add_isa_paths(std::vector<Kernels>& paths);

}  // namespace phi2cpu
