#include "model/repack_cache.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "kernels/dispatch.h"
#include "model/fault_guard.h"
#include "model/pages.h"
#include "platform/platform.h"

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

// The parts of a cache file's header (the data after the fixed part is read and checksummed).
struct Header {
    std::string manifest, source_path;
    std::vector<uint64_t> sums;
};

// Reads and checks the header; false with `why` when it is not a whole, intact cache header.
bool read_header(const os::File& f, Header& h, std::string& why) {
    uint8_t fixed[kFixedHeader];
    if (!f.read_at(fixed, kFixedHeader, 0) || std::memcmp(fixed, kMagic, 8) != 0) {
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
    if (!f.read_at(buf.data(), rest, kFixedHeader)) {
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
    source_path_ = os::real_path(file.path());
    if (source_path_.empty()) source_path_ = file.path();
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
    const os::File f(path_, os::File::kRead);
    if (!f.is_open()) {
        note = errno == ENOENT ? "no cache yet" : errno_text("cannot open " + path_);
        return nullptr;
    }
    Header h;
    os::FileId st;
    bool ok = read_header(f, h, note);
    if (ok && (h.manifest != manifest_ || h.sums.size() != matrices_.size())) {
        note = "cache is for another file or kernel layout";
        ok = false;
    }
    if (ok && (!f.id(st) || st.size != kDataOffset + data_bytes_)) {
        note = "cache file has the wrong size (truncated?)";
        ok = false;
    }
    std::shared_ptr<uint8_t> data = ok ? map_file_huge(f, kDataOffset, data_bytes_) : nullptr;
    if (ok && !data) {
        note = errno_text("cannot map " + path_);
        return nullptr;
    }
    if (ok && !verify(data.get(), h.sums, pool)) {
        note = "cache data checksum mismatch (corrupt file)";
        ok = false;
    }
    if (!ok) {
        data.reset();  // unmapped first: Windows may refuse to delete a mapped file
        os::remove_file(path_);
        return nullptr;
    }
    // Pages read back after the OS dropped some of them can come in small folios, and a 2 MiB range
    // with any small folio left in it stays small. When some but too few ranges are huge, drop the
    // file's cached pages and read them again through the huge-page mapping (none huge at all: the
    // filesystem keeps small folios, and the caller copies instead).
    const int64_t huge = huge_page_bytes(data.get());
    if (huge > 0 && double(huge) < 0.9 * double(data_bytes_)) {
        data.reset();
        f.drop_cached(kDataOffset, data_bytes_);
        data = map_file_huge(f, kDataOffset, data_bytes_);
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
    if (!os::make_dirs(dir_, why)) return false;
    const std::string tmp = dir_ + "/." + path_.substr(dir_.size() + 1) + "." + std::to_string(os::process_id()) + ".tmp";
    const os::File f(tmp, os::File::kCreateNew);
    if (!f.is_open()) {
        why = errno_text("cannot create " + tmp);
        return false;
    }
    auto fail = [&](const std::string& what) {
        why = errno_text(what);
        os::remove_file(tmp);
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
        if (!f.write_at(stage.get(), whole, kDataOffset + flushed)) return fail("cannot write " + tmp);
        f.start_writeback(kDataOffset + flushed, whole);  // so the sync at the end has less left to wait for
        std::memmove(stage.get(), stage.get() + whole, end - flushed - whole);
        flushed += whole;
    }
    std::memset(stage.get() + (end - flushed), 0, data_bytes_ - end);
    if (!f.write_at(stage.get(), data_bytes_ - flushed, kDataOffset + flushed))
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
    if (!f.write_at(header.data(), header.size(), 0))
        return fail("cannot write " + tmp);
    if (!f.sync()) return fail("cannot sync " + tmp);
    if (mapping_faulted(file_.data())) {
        why = file_.path() + " shrank while being repacked";
        os::remove_file(tmp);
        return false;
    }
    if (!os::rename_file(tmp, path_)) return fail("cannot rename " + tmp);
    os::sync_dir(dir_);
    return true;
}

void RepackCache::prune(const std::string& dir, const std::string& keep) {
    std::vector<std::string> names, doomed;
    if (!os::list_dir(dir, names)) return;
    for (const std::string& name : names) {
        const std::string path = dir + "/" + name;
        if (path == keep) continue;
        if (name.size() > 4 && name[0] == '.' && name.compare(name.size() - 4, 4, ".tmp") == 0) {
            // ".<cache name>.<pid>.tmp": a writer's file; delete it when that process is gone
            const size_t dot = name.rfind('.', name.size() - 5);
            const long pid = dot == std::string::npos ? 0 : std::atol(name.c_str() + dot + 1);
            if (pid > 0 && os::process_gone(pid)) doomed.push_back(path);
            continue;
        }
        if (name.size() <= 4 || name.compare(name.size() - 4, 4, ".rpk") != 0) continue;
        const os::File f(path, os::File::kRead);
        Header h;
        std::string why;
        if (!f.is_open() || !read_header(f, h, why)) {
            if (f.is_open()) doomed.push_back(path);
            continue;
        }
        MappedFile::Identity id;
        if (!os::path_id(h.source_path, id)) id = {};
        if (h.manifest.find("\n" + identity_line(id)) == std::string::npos) doomed.push_back(path);
    }
    for (const std::string& p : doomed) os::remove_file(p);
}

}  // namespace phi2cpu
