// What phi2cpu asks of the operating system, in one place: files, file mappings, memory pages,
// processes and CPU features. platform_posix.cpp implements it for Linux and macOS (with the few
// OS-only parts in platform_linux.cpp and platform_macos.cpp), platform_windows.cpp for Windows.
//
// Errors follow the C library: a call that fails returns false / nullptr / -1 and leaves errno set
// (Windows error codes are translated to the nearest errno value), so callers report
// std::strerror(errno) the same way on every OS.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace phi2cpu::os {

// What a file is: the same numbers for the same unchanged file, whether asked by path or by an open
// file. POSIX: st_dev, st_ino, st_size, st_mtim. Windows: volume serial, file index, size, last
// write time (in ns since 1601).
struct FileId {
    uint64_t dev = 0, ino = 0, size = 0;
    int64_t mtime_ns = 0;
};

// An open file (a file descriptor on POSIX, a HANDLE on Windows), closed by the destructor.
class File {
public:
    enum Mode { kRead, kCreateNew };  // kCreateNew: write only, fails when the file exists
    File() = default;
    File(const std::string& path, Mode mode);  // check is_open(); errno says why not
    ~File();
    File(const File&) = delete;
    File& operator=(const File&) = delete;

    bool is_open() const { return h_ != kNone; }
    bool id(FileId& out) const;
    // Whole transfers at an absolute offset (the file position is not used); false on a short read.
    bool read_at(void* p, size_t n, uint64_t at) const;
    bool write_at(const void* p, size_t n, uint64_t at) const;
    bool sync() const;  // data and size on stable storage
    // Hints, no-ops where the OS has no such call: start writing back [at, at + n) now; drop the
    // cached pages of [at, at + n).
    void start_writeback(uint64_t at, uint64_t n) const;
    void drop_cached(uint64_t at, uint64_t n) const;
    intptr_t native() const { return h_; }

private:
    static constexpr intptr_t kNone = -1;  // also INVALID_HANDLE_VALUE
    intptr_t h_ = kNone;
};

bool path_id(const std::string& path, FileId& out);  // of the file at path (following links)
bool is_dir(const std::string& path);
// Creates dir and its missing parents; false with `why` ("cannot create <part>: <reason>").
bool make_dirs(const std::string& dir, std::string& why);
// Names in dir (without "." and ".."); false when it cannot be read.
bool list_dir(const std::string& dir, std::vector<std::string>& names);
std::string real_path(const std::string& path);  // absolute, links resolved; "" on failure
bool remove_file(const std::string& path);
bool rename_file(const std::string& from, const std::string& to);  // replaces `to` atomically
void sync_dir(const std::string& dir);  // makes a rename in dir durable where the OS needs that

long process_id();
bool process_gone(long pid);  // true only when no process with this id runs

// Read-only private mapping of [offset, offset + bytes) of f; offset a multiple of 64 KiB (Windows'
// allocation granularity). With align > 0 the address is a multiple of align, where the OS can place
// file mappings (POSIX; Windows maps file data on small pages only, so alignment would buy nothing
// there and is not asked for). The file may be closed afterwards. nullptr on failure.
void* map_file(const File& f, uint64_t offset, size_t bytes, size_t align = 0);
void unmap_file(void* p, size_t bytes);

size_t page_size();
// Memory of `bytes` (a multiple of align) aligned to align, freed by free_aligned; nullptr when none.
void* alloc_aligned(size_t align, size_t bytes);
void free_aligned(void* p);
// Asks for transparent huge pages over [p, p + n) (Linux; a no-op elsewhere).
void advise_huge_pages(void* p, size_t n);
// Drops the resident pages lying wholly inside [p, p + n) of a file mapping; a later read maps them
// in again.
void drop_pages(const void* p, size_t n);
// Bytes of the mapping that holds p that lie on huge pages; -1 where the OS does not say.
int64_t huge_page_bytes(const void* p);
// Whether anonymous memory can get transparent huge pages at all.
bool anon_huge_pages_possible();

// On x86: whether the OS saves the AVX-512 register state, given XCR0 from xgetbv. XCR0 says so on
// Linux and Windows; macOS enables that state on a thread's first AVX-512 instruction, so XCR0 can
// read "off" there while the CPU and OS support it.
bool avx512_state_enabled(uint64_t xcr0);

// On 64-bit ARM: optional instructions the CPU has and the OS allows (all false elsewhere).
struct ArmFeatures {
    bool dotprod = false;  // SDOT/UDOT (FEAT_DotProd)
    bool i8mm = false;     // SMMLA/UMMLA (FEAT_I8MM)
};
ArmFeatures arm_features();

}  // namespace phi2cpu::os
