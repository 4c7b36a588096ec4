// The Linux-only parts of the platform layer: transparent huge pages, page-cache hints, HWCAP.
#include "platform/platform.h"

#include <fcntl.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace phi2cpu::os {

bool File::sync() const { return ::fsync(int(h_)) == 0; }

void File::start_writeback(uint64_t at, uint64_t n) const {
    ::sync_file_range(int(h_), off_t(at), off_t(n), SYNC_FILE_RANGE_WRITE);
}

void File::drop_cached(uint64_t at, uint64_t n) const {
    ::posix_fadvise(int(h_), off_t(at), off_t(n), POSIX_FADV_DONTNEED);
}

void advise_huge_pages(void* p, size_t n) {
#ifdef MADV_HUGEPAGE
    ::madvise(p, n, MADV_HUGEPAGE);
#endif
}

// From /proc/self/smaps: AnonHugePages (anonymous THP) + FilePmdMapped (file folios mapped whole).
int64_t huge_page_bytes(const void* p) {
    std::ifstream smaps("/proc/self/smaps");
    if (!smaps) return -1;
    const uintptr_t a = uintptr_t(p);
    std::string line;
    bool inside = false, seen = false;
    int64_t kib = 0;
    while (std::getline(smaps, line)) {
        unsigned long lo = 0, hi = 0;
        char dash = 0;
        // A mapping's first line: "lo-hi perms offset dev inode [path]"; field lines start with a name.
        if (std::sscanf(line.c_str(), "%lx%c%lx", &lo, &dash, &hi) == 3 && dash == '-') {
            if (inside) break;
            inside = a >= lo && a < hi;
            continue;
        }
        if (!inside) continue;
        long long v = 0;
        if (std::sscanf(line.c_str(), "AnonHugePages: %lld kB", &v) == 1 ||
            std::sscanf(line.c_str(), "FilePmdMapped: %lld kB", &v) == 1) {
            kib += v;
            seen = true;
        }
    }
    return seen ? kib * 1024 : -1;
}

bool anon_huge_pages_possible() {
    std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string s;
    if (!f || !std::getline(f, s)) return false;
    return s.find("[never]") == std::string::npos;
}

bool avx512_state_enabled(uint64_t xcr0) { return (xcr0 & 0xe6) == 0xe6; }  // opmask, ZMM_Hi256, Hi16_ZMM

ArmFeatures arm_features() {
    ArmFeatures f;
#if defined(__aarch64__)
    constexpr unsigned long kHwcapAsimddp = 1ul << 20, kHwcap2I8mm = 1ul << 13;  // asm/hwcap.h
    f.dotprod = getauxval(AT_HWCAP) & kHwcapAsimddp;
    f.i8mm = getauxval(AT_HWCAP2) & kHwcap2I8mm;
#endif
    return f;
}

}  // namespace phi2cpu::os
