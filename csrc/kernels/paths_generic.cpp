#include "kernels/paths.h"

namespace phi2cpu {

// Architectures without SIMD kernels run the scalar table.
void add_isa_paths(std::vector<Kernels>&) {}

}  // namespace phi2cpu
