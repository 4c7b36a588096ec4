// Reads of a file mapping whose file shrank (truncated, or rewritten in place by a copy) raise
// SIGBUS, which kills the process. Mappings registered here are guarded instead: the first such
// fault replaces the whole mapping with zero pages, so the read completes, and marks it faulted. The
// owner checks mapping_faulted() after each use and reports an error; nothing computed from the
// zeros may reach a caller. A fault outside every guarded mapping goes to the handler that was there
// before (by default: the process dies, as it would without this).
#pragma once
#include <cstddef>

namespace phi2cpu {

// Guards [p, p + n) until unguard_mapping(p); installs the SIGBUS handler on first use. Returns false
// (the mapping stays unguarded) when the handler cannot be installed or every slot is taken.
bool guard_mapping(const void* p, size_t n);
void unguard_mapping(const void* p);
// Whether a read of the guarded mapping that starts at p found its file page gone.
bool mapping_faulted(const void* p);

}  // namespace phi2cpu
