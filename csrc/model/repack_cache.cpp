#include "model/repack_cache.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "kernels/dispatch.h"
#include "model/fault_guard.h"
#include "model/pages.h"

namespace phi2cpu {

namespace {

constexpr char kMagic[8] = {'P', 'H', 'I', '2', 'R', 'P', 'K', '\0'};
constexpr size_t kFixedHeader = 32;  // magic, 4 x u32, u64 checksum
constexpr size_t kChunk = size_t(1) << 20;
constexpr size_t kSampleBytes = 4096;

// A bijection of 64-bit words (xorshifts and an odd multiplier).
uint64_t mix(uint64_t x) {
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ULL;
    return x ^ (x >> 29);
}

// Fletcher sums over 64-bit words in eight lanes (s1 = sum of the words, s2 = sum of the running s1,
// mod 2^64; s2 sees the order), folded through `mix`. A changed word changes its lane's s1; that it
// leaves the hash as it was has odds of about 2^-64. Additions vectorise: this runs at memory speed.
uint64_t chunk_hash(const uint8_t* p, size_t n, uint64_t seed) {
    uint64_t s1[8] = {}, s2[8] = {};
    auto step = [&](const uint8_t* q) {
        for (int j = 0; j < 8; j++) {
            uint64_t w;
            std::memcpy(&w, q + 8 * j, 8);
            s1[j] += w;
            s2[j] += s1[j];
        }
    };
    const size_t full = n / 64 * 64;
    for (size_t i = 0; i < full; i += 64) step(p + i);
    if (n > full) {
        uint8_t tail[64] = {};
        std::memcpy(tail, p + full, n - full);
        step(tail);
    }
    uint64_t h = mix(seed ^ uint64_t(n));
    for (int j = 0; j < 8; j++) h = mix(mix(h ^ s1[j]) ^ s2[j]);
    return h;
}

std::string hex64(uint64_t v) {
    char s[17];
    std::snprintf(s, sizeof s, "%016llx", static_cast<unsigned long long>(v));
    return s;
}

void put32(std::string& s, uint32_t v) { s.append(reinterpret_cast<const char*>(&v), 4); }
void put64(std::string& s, uint64_t v) { s.append(reinterpret_cast<const char*>(&v), 8); }
uint32_t get32(const uint8_t* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
uint64_t get64(const uint8_t* p) { uint64_t v; std::memcpy(&v, p, 8); return v; }

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

bool pwrite_all(int fd, const uint8_t* p, size_t n, uint64_t at) {
    while (n > 0) {
        const ssize_t k = ::pwrite(fd, p, std::min(n, size_t(1) << 30), off_t(at));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            if (k == 0) errno = ENOSPC;
            return false;
        }
        p += k, n -= size_t(k), at += uint64_t(k);
    }
    return true;
}

bool pread_all(int fd, uint8_t* p, size_t n, uint64_t at) {
    while (n > 0) {
        const ssize_t k = ::pread(fd, p, n, off_t(at));
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return false;
        p += k, n -= size_t(k), at += uint64_t(k);
    }
    return true;
}

struct Fd {
    int fd = -1;
    ~Fd() { if (fd >= 0) ::close(fd); }
};

// The parts of a cache file's header (the data after the fixed part is read and checksummed).
struct Header {
    std::string manifest, source_path;
    std::vector<uint64_t> sums;
};

// Reads and checks the header; false with `why` when it is not a whole, intact cache header.
bool read_header(int fd, Header& h, std::string& why) {
    uint8_t fixed[kFixedHeader];
    if (!pread_all(fd, fixed, kFixedHeader, 0) || std::memcmp(fixed, kMagic, 8) != 0) {
        why = "not a repack cache file";
        return false;
    }
    if (get32(fixed + 8) != RepackCache::kFormatVersion) {
        why = "cache format version " + std::to_string(get32(fixed + 8));
        return false;
    }
    const uint64_t m = get32(fixed + 12), s = get32(fixed + 16), n = get32(fixed + 20);
    const uint64_t rest = m + s + 8 * n;
    if (kFixedHeader + rest > RepackCache::kDataOffset) {
        why = "corrupt header";
        return false;
    }
    std::vector<uint8_t> buf(rest);
    if (!pread_all(fd, buf.data(), rest, kFixedHeader)) {
        why = "truncated header";
        return false;
    }
    if (chunk_hash(buf.data(), rest, 0) != get64(fixed + 24)) {
        why = "header checksum mismatch";
        return false;
    }
    h.manifest.assign(reinterpret_cast<const char*>(buf.data()), m);
    h.source_path.assign(reinterpret_cast<const char*>(buf.data()) + m, s);
    h.sums.resize(n);
    for (uint64_t i = 0; i < n; i++) h.sums[i] = get64(buf.data() + m + s + 8 * i);
    return true;
}

std::string identity_line(const MappedFile::Identity& id) {
    return "source-identity " + std::to_string(id.dev) + " " + std::to_string(id.ino) + " " +
           std::to_string(id.size) + " " + std::to_string(id.mtime_ns) + "\n";
}

bool make_dirs(const std::string& dir, std::string& why) {
    for (size_t i = 1; i <= dir.size(); i++) {
        if (i < dir.size() && dir[i] != '/') continue;
        const std::string part = dir.substr(0, i);
        if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) {
            why = errno_text("cannot create " + part);
            return false;
        }
    }
    struct stat st;
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
        why = dir + " is not a folder";
        return false;
    }
    return true;
}

}  // namespace

uint64_t checksum64(const uint8_t* p, size_t n, ThreadPool& pool) {
    const int64_t chunks = int64_t((n + kChunk - 1) / kChunk);
    std::vector<uint64_t> h(size_t(std::max<int64_t>(chunks, 1)), 0);
    pool.parallel_for(chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; c++) {
            const size_t at = size_t(c) * kChunk;
            h[size_t(c)] = chunk_hash(p + at, std::min(kChunk, n - at), uint64_t(c));
        }
    });
    uint64_t out = mix(uint64_t(n) ^ 0x5048493252504b31ULL);
    for (int64_t c = 0; c < chunks; c++) out = mix(out ^ h[size_t(c)]);
    return out;
}

RepackCache::RepackCache(const std::string& dir, const MappedFile& file, const std::vector<Tensor*>& matrices)
    : dir_(dir), file_(file), matrices_(matrices) {
    char* real = ::realpath(file.path().c_str(), nullptr);
    source_path_ = real ? real : file.path();
    std::free(real);
    std::ostringstream m;
    m << "phi2cpu repack cache\nkernels " << kernels().isa << "\nlayout " << kRepackLayoutVersion << "\n"
      << identity_line(file.identity());
    for (const Tensor* t : matrices_) {
        offsets_.push_back(data_bytes_);
        const size_t bytes = size_t(t->rows) * t->row_bytes;
        const uint64_t src = uint64_t(t->data - file.data());
        const size_t sample = std::min(bytes, kSampleBytes);
        m << "matrix " << t->tt->name << " " << t->rows << " " << t->cols << " " << src << " " << data_bytes_
          << " " << bytes << " " << hex64(chunk_hash(t->data, sample, 0)) << "\n";
        file.release(t->data, sample);
        data_bytes_ += round_up(bytes, 64);
    }
    m << "data " << kDataOffset << " " << data_bytes_ << "\n";
    manifest_ = m.str();
    path_ = dir_ + "/" + hex64(chunk_hash(reinterpret_cast<const uint8_t*>(manifest_.data()), manifest_.size(), 1)) +
            ".rpk";
}

bool RepackCache::verify(const uint8_t* data, const std::vector<uint64_t>& sums, ThreadPool& pool) const {
    for (size_t i = 0; i < matrices_.size(); i++) {
        const Tensor* t = matrices_[i];
        if (checksum64(data + offsets_[i], size_t(t->rows) * t->row_bytes, pool) != sums[i]) return false;
    }
    return true;
}

std::shared_ptr<uint8_t> RepackCache::open(ThreadPool& pool, std::string& note) const {
    Fd f;
    f.fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (f.fd < 0) {
        note = errno == ENOENT ? "no cache yet" : errno_text("cannot open " + path_);
        return nullptr;
    }
    Header h;
    struct stat st;
    bool ok = read_header(f.fd, h, note);
    if (ok && (h.manifest != manifest_ || h.sums.size() != matrices_.size())) {
        note = "cache is for another file or kernel layout";
        ok = false;
    }
    if (ok && (::fstat(f.fd, &st) != 0 || uint64_t(st.st_size) != kDataOffset + data_bytes_)) {
        note = "cache file has the wrong size (truncated?)";
        ok = false;
    }
    std::shared_ptr<uint8_t> data = ok ? map_file_huge(f.fd, kDataOffset, data_bytes_) : nullptr;
    if (ok && !data) {
        note = errno_text("cannot map " + path_);
        return nullptr;
    }
    if (ok && !verify(data.get(), h.sums, pool)) {
        note = "cache data checksum mismatch (corrupt file)";
        ok = false;
    }
    if (!ok) {
        ::unlink(path_.c_str());
        return nullptr;
    }
    // Pages read back after the OS dropped some of them can come in small folios, and a 2 MiB range
    // with any small folio left in it stays small. When some but too few ranges are huge, drop the
    // file's cached pages and read them again through the huge-page mapping (none huge at all: the
    // filesystem keeps small folios, and the caller copies instead).
    const int64_t huge = huge_page_bytes(data.get());
    if (huge > 0 && double(huge) < 0.9 * double(data_bytes_)) {
        data.reset();
#ifdef POSIX_FADV_DONTNEED
        ::posix_fadvise(f.fd, off_t(kDataOffset), off_t(data_bytes_), POSIX_FADV_DONTNEED);
#endif
        data = map_file_huge(f.fd, kDataOffset, data_bytes_);
        if (!data || !verify(data.get(), h.sums, pool)) {
            note = "cache could not be read again (changed while in use?)";
            return nullptr;
        }
        note = "cache pages read again to get huge pages: " + std::to_string(huge >> 20) + " -> " +
               std::to_string(std::max<int64_t>(huge_page_bytes(data.get()), 0) >> 20) + " MiB of " +
               std::to_string(data_bytes_ >> 20);
    }
    return data;
}

bool RepackCache::write(ThreadPool& pool, std::string& why) const {
    if (!make_dirs(dir_, why)) return false;
    const std::string tmp = dir_ + "/." + path_.substr(dir_.size() + 1) + "." + std::to_string(::getpid()) + ".tmp";
    Fd f;
    f.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f.fd < 0) {
        why = errno_text("cannot create " + tmp);
        return false;
    }
    auto fail = [&](const std::string& what) {
        why = errno_text(what);
        ::unlink(tmp.c_str());
        return false;
    };
    // The data goes out in whole 2 MiB pieces at 2 MiB offsets (see the file comment): `stage`
    // holds the data from `flushed` on, a matrix is repacked behind what is pending, and every
    // whole 2 MiB piece is written.
    size_t largest = 0;
    for (const Tensor* t : matrices_) largest = std::max(largest, size_t(t->rows) * t->row_bytes);
    std::shared_ptr<uint8_t> stage;
    try {
        stage = alloc_huge(largest + 2 * kHugePage);
    } catch (const std::bad_alloc&) {
        errno = ENOMEM;
        return fail("cannot allocate the repack buffer");
    }
    std::vector<uint64_t> sums;
    size_t flushed = 0, end = 0;
    for (size_t i = 0; i < matrices_.size(); i++) {
        const Tensor* t = matrices_[i];
        const size_t bytes = size_t(t->rows) * t->row_bytes;
        std::memset(stage.get() + (end - flushed), 0, offsets_[i] - end);
        uint8_t* dst = stage.get() + (offsets_[i] - flushed);
        repack_matrix(*t, dst, file_, pool);
        sums.push_back(checksum64(dst, bytes, pool));
        end = offsets_[i] + bytes;
        const size_t whole = (end - flushed) / kHugePage * kHugePage;
        if (!pwrite_all(f.fd, stage.get(), whole, kDataOffset + flushed)) return fail("cannot write " + tmp);
#ifdef SYNC_FILE_RANGE_WRITE
        // start writing back now, so the fsync at the end has less left to wait for
        ::sync_file_range(f.fd, off_t(kDataOffset + flushed), off_t(whole), SYNC_FILE_RANGE_WRITE);
#endif
        std::memmove(stage.get(), stage.get() + whole, end - flushed - whole);
        flushed += whole;
    }
    std::memset(stage.get() + (end - flushed), 0, data_bytes_ - end);
    if (!pwrite_all(f.fd, stage.get(), data_bytes_ - flushed, kDataOffset + flushed))
        return fail("cannot write " + tmp);
    std::string rest = manifest_ + source_path_;
    for (uint64_t s : sums) put64(rest, s);
    std::string header(kMagic, 8);
    put32(header, kFormatVersion);
    put32(header, uint32_t(manifest_.size()));
    put32(header, uint32_t(source_path_.size()));
    put32(header, uint32_t(sums.size()));
    put64(header, chunk_hash(reinterpret_cast<const uint8_t*>(rest.data()), rest.size(), 0));
    header += rest;
    if (header.size() > kDataOffset) {
        errno = EOVERFLOW;
        return fail("repack cache header too large");
    }
    if (!pwrite_all(f.fd, reinterpret_cast<const uint8_t*>(header.data()), header.size(), 0))
        return fail("cannot write " + tmp);
    if (::fsync(f.fd) != 0) return fail("cannot sync " + tmp);
    if (mapping_faulted(file_.data())) {
        why = file_.path() + " shrank while being repacked";
        ::unlink(tmp.c_str());
        return false;
    }
    if (::rename(tmp.c_str(), path_.c_str()) != 0) return fail("cannot rename " + tmp);
    Fd d;
    d.fd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (d.fd >= 0) ::fsync(d.fd);
    return true;
}

void RepackCache::prune(const std::string& dir, const std::string& keep) {
    DIR* d = ::opendir(dir.c_str());
    if (!d) return;
    std::vector<std::string> doomed;
    while (const dirent* e = ::readdir(d)) {
        const std::string name = e->d_name, path = dir + "/" + name;
        if (path == keep) continue;
        if (name.size() > 4 && name[0] == '.' && name.compare(name.size() - 4, 4, ".tmp") == 0) {
            // ".<cache name>.<pid>.tmp": a writer's file; delete it when that process is gone
            const size_t dot = name.rfind('.', name.size() - 5);
            const long pid = dot == std::string::npos ? 0 : std::atol(name.c_str() + dot + 1);
            if (pid > 0 && ::kill(pid_t(pid), 0) != 0 && errno == ESRCH) doomed.push_back(path);
            continue;
        }
        if (name.size() <= 4 || name.compare(name.size() - 4, 4, ".rpk") != 0) continue;
        Fd f;
        f.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        Header h;
        std::string why;
        if (f.fd < 0 || !read_header(f.fd, h, why)) {
            if (f.fd >= 0) doomed.push_back(path);
            continue;
        }
        struct stat st;
        MappedFile::Identity id;
        if (::stat(h.source_path.c_str(), &st) == 0) id = MappedFile::Identity::of(st);
        if (h.manifest.find("\n" + identity_line(id)) == std::string::npos) doomed.push_back(path);
    }
    ::closedir(d);
    for (const std::string& p : doomed) ::unlink(p.c_str());
}

}  // namespace phi2cpu
