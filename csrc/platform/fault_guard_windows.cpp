// model/fault_guard.h on Windows, where there is nothing to guard against: a file with a mapped view
// cannot be truncated (SetEndOfFile fails with ERROR_USER_MAPPED_FILE), so a read of a mapping never
// finds its page gone because the file shrank. Rewrites in place keep the size and are caught by
// MappedFile::changed() through the modification time. (A file on a network share that goes away
// raises EXCEPTION_IN_PAGE_ERROR; that is not guarded.)
#include "model/fault_guard.h"

namespace phi2cpu {

bool guard_mapping(const void* p, size_t n) { return p && n; }
void unguard_mapping(const void*) {}
bool mapping_faulted(const void*) { return false; }

}  // namespace phi2cpu
