// The macOS-only parts of the platform layer. macOS has no transparent huge pages (Apple silicon
// uses 16 KiB pages), no per-range page-cache hints, and reports CPU features through sysctl.
#include "platform/platform.h"

#include <fcntl.h>
#include <sys/sysctl.h>
#include <sys/types.h>
#include <unistd.h>

namespace phi2cpu::os {

namespace {

// A hw.optional.* flag: 1 when the CPU has the feature and the OS allows it; absent reads as 0.
bool sysctl_flag(const char* name) {
    int v = 0;
    size_t n = sizeof v;
    return ::sysctlbyname(name, &v, &n, nullptr, 0) == 0 && v == 1;
}

}  // namespace

// fsync leaves the data in the drive's cache on macOS; F_FULLFSYNC flushes it (where the filesystem
// supports it: else plain fsync).
bool File::sync() const { return ::fcntl(int(h_), F_FULLFSYNC) == 0 || ::fsync(int(h_)) == 0; }

void File::start_writeback(uint64_t, uint64_t) const {}
void File::drop_cached(uint64_t, uint64_t) const {}
void advise_huge_pages(void*, size_t) {}
int64_t huge_page_bytes(const void*) { return -1; }
bool anon_huge_pages_possible() { return false; }

bool avx512_state_enabled(uint64_t xcr0) {
    return (xcr0 & 0xe6) == 0xe6 || sysctl_flag("hw.optional.avx512f");
}

ArmFeatures arm_features() {
    ArmFeatures f;
    f.dotprod = sysctl_flag("hw.optional.arm.FEAT_DotProd");
    f.i8mm = sysctl_flag("hw.optional.arm.FEAT_I8MM");
    return f;
}

}  // namespace phi2cpu::os
