// The platform layer (platform/platform.h) against the behaviour the engine relies on: files written
// and read at offsets, identities, mappings, folders, renames over open files, errno on failure.
// Runs in a fresh folder under argv[1] (default: the current folder). No dependencies: prints one
// line per failed check and a closing "N passed, N failed" line.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "platform/platform.h"

using namespace phi2cpu;

namespace {

int g_passed = 0, g_failed = 0;

void check(bool ok, const std::string& what) {
    if (ok) {
        g_passed++;
    } else {
        g_failed++;
        std::printf("FAIL %s (errno %d: %s)\n", what.c_str(), errno, std::strerror(errno));
    }
}

bool same(const os::FileId& a, const os::FileId& b) {
    return a.dev == b.dev && a.ino == b.ino && a.size == b.size && a.mtime_ns == b.mtime_ns;
}

bool has(const std::vector<std::string>& names, const std::string& n) {
    for (const auto& x : names)
        if (x == n) return true;
    return false;
}

constexpr size_t kMiB = size_t(1) << 20;

std::vector<uint8_t> pattern(size_t n, unsigned seed) {
    std::vector<uint8_t> v(n);
    for (size_t i = 0; i < n; i++) v[i] = uint8_t((i * 2654435761u + seed) >> 13);
    return v;
}

void test_files(const std::string& dir) {
    const std::string path = dir + "/data.bin";
    const std::vector<uint8_t> head = pattern(5000, 1), tail = pattern(kMiB + 123, 2);
    {
        const os::File f(path, os::File::kCreateNew);
        check(f.is_open(), "create a new file");
        check(f.write_at(tail.data(), tail.size(), 2 * kMiB), "write at 2 MiB");
        check(f.write_at(head.data(), head.size(), 0), "write at 0");
        f.start_writeback(0, 4096);
        check(f.sync(), "sync");
        os::FileId id;
        check(f.id(id) && id.size == 2 * kMiB + tail.size(), "size from the open file");
    }
    {
        errno = 0;
        const os::File again(path, os::File::kCreateNew);
        check(!again.is_open() && errno == EEXIST, "creating an existing file fails with EEXIST");
    }
    errno = 0;
    const os::File none(dir + "/missing.bin", os::File::kRead);
    check(!none.is_open() && errno == ENOENT, "opening a missing file fails with ENOENT");

    const os::File f(path, os::File::kRead);
    check(f.is_open(), "open for reading");
    std::vector<uint8_t> got(head.size());
    check(f.read_at(got.data(), got.size(), 0) && got == head, "read back at 0");
    got.assign(tail.size(), 0);
    check(f.read_at(got.data(), got.size(), 2 * kMiB) && got == tail, "read back at 2 MiB");
    check(!f.read_at(got.data(), 16, 2 * kMiB + tail.size() - 8), "a read past the end fails");
    os::FileId by_file, by_path;
    check(f.id(by_file) && os::path_id(path, by_path) && same(by_file, by_path), "same id by file and by path");
    check(by_file.mtime_ns > 1000000000LL * 1600000000, "modification time in ns since 1970");

    auto* whole = static_cast<const uint8_t*>(os::map_file(f, 0, size_t(by_file.size)));
    check(whole && std::memcmp(whole, head.data(), head.size()) == 0 &&
              std::memcmp(whole + 2 * kMiB, tail.data(), tail.size()) == 0, "map the whole file");
    if (whole) {
        os::drop_pages(whole, size_t(by_file.size));
        check(std::memcmp(whole + 2 * kMiB, tail.data(), tail.size()) == 0, "pages read again after drop_pages");
        os::unmap_file(const_cast<uint8_t*>(whole), size_t(by_file.size));
    }
    const size_t len = (tail.size() + os::page_size() - 1) / os::page_size() * os::page_size();
    auto* part = static_cast<const uint8_t*>(os::map_file(f, 2 * kMiB, len, 2 * kMiB));
    check(part && std::memcmp(part, tail.data(), tail.size()) == 0, "map from 2 MiB, 2 MiB aligned");
#ifndef _WIN32
    check(uintptr_t(part) % (2 * kMiB) == 0, "the aligned mapping's address");
#endif
    f.drop_cached(0, by_file.size);
    if (part) os::unmap_file(const_cast<uint8_t*>(part), len);
}

void test_folders(const std::string& dir) {
    std::string why;
    const std::string deep = dir + "/a/b/c";
    check(os::make_dirs(deep, why) && os::is_dir(deep), "make nested folders: " + why);
    check(os::make_dirs(deep, why), "make folders that exist");
    const std::string file = dir + "/a/plain";
    { const os::File f(file, os::File::kCreateNew); }
    check(!os::make_dirs(file + "/x", why) && !why.empty(), "a folder under a file fails with a reason");

    // the cache writer renames its temporary file over the old one while the new one is still open
    const std::string tmp = dir + "/a/.new.tmp", final_ = dir + "/a/cache.rpk";
    { const os::File old(final_, os::File::kCreateNew); check(old.write_at("old", 3, 0), "write the old file"); }
    {
        const os::File f(tmp, os::File::kCreateNew);
        check(f.write_at("new!", 4, 0) && f.sync(), "write the new file");
        check(os::rename_file(tmp, final_), "rename over an existing file while open");
        os::sync_dir(dir + "/a");
    }
    os::FileId id;
    check(os::path_id(final_, id) && id.size == 4, "the rename replaced the file");
    std::vector<std::string> names;
    check(os::list_dir(dir + "/a", names) && names.size() == 3 && has(names, "b") && has(names, "plain") &&
              has(names, "cache.rpk"), "list a folder");
    check(!os::list_dir(dir + "/nowhere", names), "listing a missing folder fails");
    check(os::remove_file(final_) && !os::path_id(final_, id), "remove a file");

    const std::string utf8 = dir + "/a/gr\xc3\xbc\xc3\x9f \xce\xbb.bin";  // non-ASCII name in UTF-8
    { const os::File f(utf8, os::File::kCreateNew); check(f.is_open(), "create a file with a UTF-8 name"); }
    names.clear();
    check(os::list_dir(dir + "/a", names) && has(names, "gr\xc3\xbc\xc3\x9f \xce\xbb.bin"), "list a UTF-8 name");
    const std::string real = os::real_path(utf8);
    os::FileId a, b;
    check(!real.empty() && os::path_id(real, a) && os::path_id(utf8, b) && same(a, b), "real_path: " + real);
    check(os::real_path(dir + "/nowhere").empty(), "real_path of a missing file is empty");
}

void test_memory_and_process() {
    const size_t page = os::page_size();
    check(page >= 4096 && (page & (page - 1)) == 0, "page size is a power of two");
    void* p = os::alloc_aligned(2 * kMiB, 4 * kMiB);
    check(p && uintptr_t(p) % (2 * kMiB) == 0, "2 MiB aligned allocation");
    if (p) {
        os::advise_huge_pages(p, 4 * kMiB);
        std::memset(p, 1, 4 * kMiB);
        check(os::huge_page_bytes(p) >= -1, "huge_page_bytes answers");
        os::free_aligned(p);
    }
    check(os::process_id() > 0 && !os::process_gone(os::process_id()), "this process is not gone");
#if !defined(__aarch64__) && !defined(_M_ARM64)
    const os::ArmFeatures arm = os::arm_features();
    check(!arm.dotprod && !arm.i8mm, "no ARM features off ARM");
#endif
}

}  // namespace

int main(int argc, char** argv) {
    const std::string base = argc > 1 ? argv[1] : ".";
    const std::string dir = base + "/phi2cpu-platform-test-" + std::to_string(os::process_id());
    std::string why;
    if (!os::make_dirs(dir, why)) {
        std::printf("cannot make the test folder: %s\n", why.c_str());
        return 2;
    }
    test_files(dir);
    test_folders(dir);
    test_memory_and_process();
#if defined(__aarch64__) || defined(_M_ARM64)
    // what the OS reports (HWCAP / HWCAP2, sysctl, IsProcessorFeaturePresent): the caller knows the core
    const os::ArmFeatures arm = os::arm_features();
    std::printf("arm features:%s%s\n", arm.dotprod ? " dotprod" : "", arm.i8mm ? " i8mm" : "");
#endif
    std::printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
