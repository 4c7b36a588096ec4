// The platform layer on Windows (Win32). Paths are UTF-8 and go to the wide-character calls.
#define WIN32_LEAN_AND_MEAN
#define NOMINMAX
#include <windows.h>

#include <malloc.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "platform/platform.h"

namespace phi2cpu::os {

namespace {

std::wstring wide(const std::string& s) {
    if (s.empty()) return std::wstring();
    const int n = ::MultiByteToWideChar(CP_UTF8, 0, s.data(), int(s.size()), nullptr, 0);
    std::wstring w(size_t(std::max(n, 0)), L'\0');
    if (n > 0) ::MultiByteToWideChar(CP_UTF8, 0, s.data(), int(s.size()), &w[0], n);
    return w;
}

std::string narrow(const std::wstring& w) {
    if (w.empty()) return std::string();
    const int n = ::WideCharToMultiByte(CP_UTF8, 0, w.data(), int(w.size()), nullptr, 0, nullptr, nullptr);
    std::string s(size_t(std::max(n, 0)), '\0');
    if (n > 0) ::WideCharToMultiByte(CP_UTF8, 0, w.data(), int(w.size()), &s[0], n, nullptr, nullptr);
    return s;
}

// The errno value nearest to the last Win32 error, so callers report errors as on POSIX.
void set_errno_from_last_error() {
    switch (::GetLastError()) {
    case ERROR_FILE_NOT_FOUND: case ERROR_PATH_NOT_FOUND: case ERROR_INVALID_NAME: case ERROR_BAD_NETPATH:
        errno = ENOENT; break;
    case ERROR_FILE_EXISTS: case ERROR_ALREADY_EXISTS: errno = EEXIST; break;
    case ERROR_ACCESS_DENIED: case ERROR_SHARING_VIOLATION: case ERROR_LOCK_VIOLATION: case ERROR_USER_MAPPED_FILE:
        errno = EACCES; break;
    case ERROR_DISK_FULL: case ERROR_HANDLE_DISK_FULL: errno = ENOSPC; break;
    case ERROR_NOT_ENOUGH_MEMORY: case ERROR_OUTOFMEMORY: case ERROR_COMMITMENT_LIMIT: errno = ENOMEM; break;
    case ERROR_DIRECTORY: errno = ENOTDIR; break;
    case ERROR_INVALID_PARAMETER: errno = EINVAL; break;
    default: errno = EIO; break;
    }
}

HANDLE handle(intptr_t h) { return reinterpret_cast<HANDLE>(h); }

uint64_t join(DWORD hi, DWORD lo) { return (uint64_t(hi) << 32) | lo; }

// FILETIME counts 100 ns from 1601; FileId counts ns from 1970, as POSIX does.
constexpr int64_t kUnixEpochIn100ns = 116444736000000000LL;

bool id_of(HANDLE h, FileId& out) {
    BY_HANDLE_FILE_INFORMATION info;
    if (!::GetFileInformationByHandle(h, &info)) {
        set_errno_from_last_error();
        return false;
    }
    const int64_t t = int64_t(join(info.ftLastWriteTime.dwHighDateTime, info.ftLastWriteTime.dwLowDateTime));
    out = {info.dwVolumeSerialNumber, join(info.nFileIndexHigh, info.nFileIndexLow),
           join(info.nFileSizeHigh, info.nFileSizeLow), (t - kUnixEpochIn100ns) * 100};
    return true;
}

OVERLAPPED at_offset(uint64_t at) {
    OVERLAPPED o = {};
    o.Offset = DWORD(at);
    o.OffsetHigh = DWORD(at >> 32);
    return o;
}

}  // namespace

// FILE_SHARE_DELETE: as on POSIX, the file in use can be renamed over or deleted (the cache writer
// renames its temporary file while it is still open).
File::File(const std::string& path, Mode mode) {
    const std::wstring w = wide(path);
    HANDLE h = mode == kRead
        ? ::CreateFileW(w.c_str(), GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                        OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, nullptr)
        : ::CreateFileW(w.c_str(), GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_DELETE, nullptr, CREATE_NEW,
                        FILE_ATTRIBUTE_NORMAL, nullptr);
    if (h == INVALID_HANDLE_VALUE)
        set_errno_from_last_error();
    else
        h_ = reinterpret_cast<intptr_t>(h);
}

File::~File() {
    if (is_open()) ::CloseHandle(handle(h_));
}

bool File::id(FileId& out) const { return id_of(handle(h_), out); }

bool File::read_at(void* dst, size_t n, uint64_t at) const {
    auto* p = static_cast<uint8_t*>(dst);
    while (n > 0) {
        OVERLAPPED o = at_offset(at);
        DWORD k = 0;
        if (!::ReadFile(handle(h_), p, DWORD(std::min<size_t>(n, size_t(1) << 30)), &k, &o)) {
            set_errno_from_last_error();
            return false;
        }
        if (k == 0) return false;
        p += k, n -= k, at += k;
    }
    return true;
}

bool File::write_at(const void* src, size_t n, uint64_t at) const {
    auto* p = static_cast<const uint8_t*>(src);
    while (n > 0) {
        OVERLAPPED o = at_offset(at);
        DWORD k = 0;
        if (!::WriteFile(handle(h_), p, DWORD(std::min<size_t>(n, size_t(1) << 30)), &k, &o)) {
            set_errno_from_last_error();
            return false;
        }
        if (k == 0) {
            errno = ENOSPC;
            return false;
        }
        p += k, n -= k, at += k;
    }
    return true;
}

bool File::sync() const {
    if (::FlushFileBuffers(handle(h_))) return true;
    set_errno_from_last_error();
    return false;
}

// Windows has neither a call to start writeback of a range nor one to drop a file's cached pages.
void File::start_writeback(uint64_t, uint64_t) const {}
void File::drop_cached(uint64_t, uint64_t) const {}

bool path_id(const std::string& path, FileId& out) {
    // No access rights asked: only the attributes are read. BACKUP_SEMANTICS lets folders open too.
    HANDLE h = ::CreateFileW(wide(path).c_str(), 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                             OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, nullptr);
    if (h == INVALID_HANDLE_VALUE) {
        set_errno_from_last_error();
        return false;
    }
    const bool ok = id_of(h, out);
    ::CloseHandle(h);
    return ok;
}

bool is_dir(const std::string& path) {
    const DWORD a = ::GetFileAttributesW(wide(path).c_str());
    return a != INVALID_FILE_ATTRIBUTES && (a & FILE_ATTRIBUTE_DIRECTORY);
}

// Parts that cannot be created but exist as folders ("C:", a share's "\\server") are passed over.
bool make_dirs(const std::string& dir, std::string& why) {
    std::string failed;
    for (size_t i = 1; i <= dir.size(); i++) {
        if (i < dir.size() && dir[i] != '/' && dir[i] != '\\') continue;
        const std::string part = dir.substr(0, i);
        if (!::CreateDirectoryW(wide(part).c_str(), nullptr) && ::GetLastError() != ERROR_ALREADY_EXISTS &&
            !is_dir(part)) {
            set_errno_from_last_error();
            failed = "cannot create " + part + ": " + std::strerror(errno);
        }
    }
    if (!is_dir(dir)) {
        why = failed.empty() ? dir + " is not a folder" : failed;
        return false;
    }
    return true;
}

bool list_dir(const std::string& dir, std::vector<std::string>& names) {
    WIN32_FIND_DATAW e;
    HANDLE h = ::FindFirstFileW(wide(dir + "\\*").c_str(), &e);
    if (h == INVALID_HANDLE_VALUE) {
        set_errno_from_last_error();
        return false;
    }
    do {
        const std::string name = narrow(e.cFileName);
        if (name != "." && name != "..") names.push_back(name);
    } while (::FindNextFileW(h, &e));
    ::FindClose(h);
    return true;
}

std::string real_path(const std::string& path) {
    HANDLE h = ::CreateFileW(wide(path).c_str(), 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, nullptr,
                             OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, nullptr);
    if (h == INVALID_HANDLE_VALUE) return "";
    std::wstring w(MAX_PATH, L'\0');
    DWORD n = ::GetFinalPathNameByHandleW(h, &w[0], DWORD(w.size()), FILE_NAME_NORMALIZED);
    if (n >= w.size()) {
        w.resize(n + 1);
        n = ::GetFinalPathNameByHandleW(h, &w[0], DWORD(w.size()), FILE_NAME_NORMALIZED);
    }
    ::CloseHandle(h);
    if (n == 0 || n >= w.size()) return "";
    w.resize(n);
    if (w.compare(0, 4, L"\\\\?\\") == 0 && w.compare(4, 4, L"UNC\\") != 0) w.erase(0, 4);  // "\\?\C:\..." -> "C:\..."
    return narrow(w);
}

bool remove_file(const std::string& path) {
    if (::DeleteFileW(wide(path).c_str())) return true;
    set_errno_from_last_error();
    return false;
}

bool rename_file(const std::string& from, const std::string& to) {
    if (::MoveFileExW(wide(from).c_str(), wide(to).c_str(), MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH))
        return true;
    set_errno_from_last_error();
    return false;
}

// MOVEFILE_WRITE_THROUGH already returned after the rename reached the disk; folders cannot be synced.
void sync_dir(const std::string&) {}

long process_id() { return long(::GetCurrentProcessId()); }

bool process_gone(long pid) {
    HANDLE h = ::OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, DWORD(pid));
    if (!h) return ::GetLastError() == ERROR_INVALID_PARAMETER;  // no process has this id
    DWORD code = 0;
    const bool exited = ::GetExitCodeProcess(h, &code) && code != STILL_ACTIVE;
    ::CloseHandle(h);
    return exited;
}

size_t page_size() {
    SYSTEM_INFO si;
    ::GetSystemInfo(&si);
    return si.dwPageSize;
}

// A view may not reach past the end of the file (POSIX maps the rest of the last page): it is cut there.
void* map_file(const File& f, uint64_t offset, size_t bytes, size_t) {
    LARGE_INTEGER size;
    if (::GetFileSizeEx(handle(f.native()), &size) && uint64_t(size.QuadPart) > offset)
        bytes = size_t(std::min<uint64_t>(bytes, uint64_t(size.QuadPart) - offset));
    HANDLE m = ::CreateFileMappingW(handle(f.native()), nullptr, PAGE_READONLY, 0, 0, nullptr);
    if (!m) {
        set_errno_from_last_error();
        return nullptr;
    }
    void* p = ::MapViewOfFile(m, FILE_MAP_READ, DWORD(offset >> 32), DWORD(offset), bytes);
    if (!p) set_errno_from_last_error();
    ::CloseHandle(m);  // the view keeps the mapping object alive
    return p;
}

void unmap_file(void* p, size_t) {
    if (p) ::UnmapViewOfFile(p);
}

void* alloc_aligned(size_t align, size_t bytes) { return ::_aligned_malloc(bytes, align); }

void free_aligned(void* p) { ::_aligned_free(p); }

// Large pages on Windows are not a hint: they need the "Lock pages in memory" privilege and are
// never paged out, so the weights stay on small pages.
void advise_huge_pages(void*, size_t) {}

// VirtualUnlock of pages that are not locked takes them out of the working set; a file view's pages
// stay in the standby list (the page cache) and a later read maps them in again.
void drop_pages(const void* p, size_t n) {
    const uintptr_t page = page_size(), lo = (uintptr_t(p) + page - 1) / page * page, hi = (uintptr_t(p) + n) / page * page;
    if (hi > lo) ::VirtualUnlock(reinterpret_cast<void*>(lo), hi - lo);
}

int64_t huge_page_bytes(const void*) { return -1; }
bool anon_huge_pages_possible() { return false; }

bool avx512_state_enabled(uint64_t xcr0) { return (xcr0 & 0xe6) == 0xe6; }  // opmask, ZMM_Hi256, Hi16_ZMM

// False on x86 (no such feature there), so this compiles and runs on every Windows target.
ArmFeatures arm_features() {
    ArmFeatures f;
    f.dotprod = ::IsProcessorFeaturePresent(PF_ARM_V82_DP_INSTRUCTIONS_AVAILABLE);
#ifdef PF_ARM_V82_I8MM_INSTRUCTIONS_AVAILABLE  // Windows SDK 10.0.26100 and later
    f.i8mm = ::IsProcessorFeaturePresent(PF_ARM_V82_I8MM_INSTRUCTIONS_AVAILABLE);
#endif
    return f;
}

}  // namespace phi2cpu::os
