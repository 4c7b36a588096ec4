// The platform layer on Linux and macOS (the parts both share; see platform_linux.cpp and
// platform_macos.cpp for the rest).
#include "platform/platform.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace phi2cpu::os {

namespace {

FileId id_of(const struct stat& st) {
#ifdef __APPLE__
    const struct timespec& m = st.st_mtimespec;
#else
    const struct timespec& m = st.st_mtim;
#endif
    return {uint64_t(st.st_dev), uint64_t(st.st_ino), uint64_t(st.st_size), int64_t(m.tv_sec) * 1000000000 + m.tv_nsec};
}

int fd(intptr_t h) { return int(h); }

}  // namespace

File::File(const std::string& path, Mode mode) {
    const int f = mode == kRead ? ::open(path.c_str(), O_RDONLY | O_CLOEXEC)
                                : ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f >= 0) h_ = f;
}

File::~File() {
    if (is_open()) ::close(fd(h_));
}

bool File::id(FileId& out) const {
    struct stat st;
    if (::fstat(fd(h_), &st) != 0) return false;
    out = id_of(st);
    return true;
}

bool File::read_at(void* dst, size_t n, uint64_t at) const {
    auto* p = static_cast<uint8_t*>(dst);
    while (n > 0) {
        const ssize_t k = ::pread(fd(h_), p, n, off_t(at));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k, n -= size_t(k), at += uint64_t(k);
    }
    return true;
}

bool File::write_at(const void* src, size_t n, uint64_t at) const {
    auto* p = static_cast<const uint8_t*>(src);
    while (n > 0) {
        const ssize_t k = ::pwrite(fd(h_), p, std::min(n, size_t(1) << 30), off_t(at));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = ENOSPC;
            return false;
        }
        p += k, n -= size_t(k), at += uint64_t(k);
    }
    return true;
}

bool path_id(const std::string& path, FileId& out) {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) return false;
    out = id_of(st);
    return true;
}

bool is_dir(const std::string& path) {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool make_dirs(const std::string& dir, std::string& why) {
    for (size_t i = 1; i <= dir.size(); i++) {
        if (i < dir.size() && dir[i] != '/') continue;
        const std::string part = dir.substr(0, i);
        if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) {
            why = "cannot create " + part + ": " + std::strerror(errno);
            return false;
        }
    }
    if (!is_dir(dir)) {
        why = dir + " is not a folder";
        return false;
    }
    return true;
}

bool list_dir(const std::string& dir, std::vector<std::string>& names) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) return false;
    while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name;
        if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
    return true;
}

std::string real_path(const std::string& path) {
    char* real = ::realpath(path.c_str(), nullptr);
    const std::string out = real ? real : "";
    std::free(real);
    return out;
}

bool remove_file(const std::string& path) { return ::unlink(path.c_str()) == 0; }

bool rename_file(const std::string& from, const std::string& to) { return ::rename(from.c_str(), to.c_str()) == 0; }

void sync_dir(const std::string& dir) {
    const int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d < 0) return;
    ::fsync(d);
    ::close(d);
}

long process_id() { return long(::getpid()); }

bool process_gone(long pid) { return ::kill(pid_t(pid), 0) != 0 && errno == ESRCH; }

size_t page_size() { return size_t(::sysconf(_SC_PAGESIZE)); }

void* map_file(const File& f, uint64_t offset, size_t bytes, size_t align) {
    const int fdes = fd(f.native());
    if (align == 0) {
        void* p = ::mmap(nullptr, bytes, PROT_READ, MAP_PRIVATE, fdes, off_t(offset));
        return p == MAP_FAILED ? nullptr : p;
    }
    // Reserve `align` more than needed, map the file over the aligned part, return the rest.
    const size_t page = page_size(), len = (bytes + page - 1) / page * page, span = len + align;
    void* res = ::mmap(nullptr, span, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (res == MAP_FAILED) return nullptr;
    const uintptr_t lo = uintptr_t(res), at = (lo + align - 1) / align * align;
    void* p = ::mmap(reinterpret_cast<void*>(at), len, PROT_READ, MAP_PRIVATE | MAP_FIXED, fdes, off_t(offset));
    if (p == MAP_FAILED) {
        const int err = errno;
        ::munmap(res, span);
        errno = err;
        return nullptr;
    }
    if (at > lo) ::munmap(res, at - lo);
    if (lo + span > at + len) ::munmap(reinterpret_cast<void*>(at + len), lo + span - at - len);
    return p;
}

void unmap_file(void* p, size_t bytes) {
    if (p) ::munmap(p, bytes);
}

void* alloc_aligned(size_t align, size_t bytes) {
    void* p = nullptr;
    return ::posix_memalign(&p, align, bytes) == 0 ? p : nullptr;
}

void free_aligned(void* p) { std::free(p); }

void drop_pages(const void* p, size_t n) {
    const uintptr_t page = page_size(), lo = (uintptr_t(p) + page - 1) / page * page, hi = (uintptr_t(p) + n) / page * page;
    if (hi > lo) ::madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
}

}  // namespace phi2cpu::os
