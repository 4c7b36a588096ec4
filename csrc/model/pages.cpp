#include "model/pages.h"

#include "model/fault_guard.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <string>

namespace phi2cpu {

namespace {

size_t page_size() { return size_t(::sysconf(_SC_PAGESIZE)); }

}  // namespace

std::shared_ptr<uint8_t> alloc_huge(size_t bytes) {
    const size_t size = round_up(bytes, kHugePage);
    void* p = std::aligned_alloc(kHugePage, size);
    if (!p) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    ::madvise(p, size, MADV_HUGEPAGE);
#endif
    return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), std::free);
}

std::shared_ptr<uint8_t> map_file_huge(int fd, uint64_t offset, size_t bytes) {
    // Reserve 2 MiB more than needed, map the file over the aligned part, return the rest.
    const size_t len = round_up(bytes, page_size()), span = len + kHugePage;
    void* res = ::mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED) return nullptr;
    const uintptr_t lo = uintptr_t(res), at = round_up(lo, kHugePage);
    void* p = ::mmap(reinterpret_cast<void*>(at), len, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, off_t(offset));
    if (p == MAP_FAILED) {
        ::munmap(res, span);
        return nullptr;
    }
    if (at > lo) ::munmap(res, at - lo);
    if (lo + span > at + len) ::munmap(reinterpret_cast<void*>(at + len), lo + span - at - len);
#ifdef MADV_HUGEPAGE
    ::madvise(p, len, MADV_HUGEPAGE);  // pages read in from disk come as 2 MiB folios
#endif
    guard_mapping(p, len);
    return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [len](uint8_t* q) {
        unguard_mapping(q);
        ::munmap(q, len);
    });
}

void drop_pages(const void* p, size_t n) {
    const uintptr_t page = page_size(), lo = round_up(uintptr_t(p), page), hi = (uintptr_t(p) + n) / page * page;
    if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

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

}  // namespace phi2cpu
