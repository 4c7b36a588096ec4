// A file holding one model's repacked matrices, so that later loads map them instead of repacking.
//
// Repacking copies every matrix into fresh memory, and fresh memory is slow to get on a VM that hands
// freed pages back to its host. A cache file is read from the page cache instead: no copy, and the
// pages are shared by every process that maps it.
//
// File: a header at offset 0, then from kDataOffset (2 MiB) the matrices at their manifest offsets
// (each 64-byte aligned, in the order repack lists them). The data is written in whole 2 MiB pieces
// at 2 MiB offsets, so filesystems with large page-cache folios (ext4 since Linux 6.16, XFS, btrfs)
// keep it in 2 MiB folios, which a 2 MiB-aligned mapping maps as huge pages.
//
// Header (little-endian): "PHI2RPK\0", u32 format version, u32 manifest bytes, u32 source path bytes,
// u32 matrix count, u64 checksum of all that follows; the manifest; the source path; a u64 checksum
// per matrix. The manifest is text naming the kernel path, the repack layout version, the source
// file's identity (device, inode, size, mtime in ns), the data size, and per matrix its type, shape,
// offset in the source, offset in the cache, bytes and a checksum of its first source bytes.
// A cache is used only when its manifest equals the one built for the file being loaded and every
// matrix's checksum matches; the file is named after a hash of the manifest.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/threadpool.h"
#include "model/weights.h"

namespace phi2cpu {

class RepackCache {
public:
    static constexpr uint32_t kFormatVersion = 1;
    static constexpr uint64_t kDataOffset = uint64_t(2) << 20;

    // The cache of these matrices (each repacked by its type's kernel row) of `file` in `dir`.
    RepackCache(const std::string& dir, const MappedFile& file, const std::vector<Tensor*>& matrices);

    const std::string& path() const { return path_; }
    size_t data_bytes() const { return data_bytes_; }
    size_t offset(size_t i) const { return offsets_[i]; }

    // Maps the data of a valid cache file; nullptr with `note` saying why when there is none or it
    // is not valid (a corrupt one is deleted). On success `note` says when the pages were read again.
    std::shared_ptr<uint8_t> open(ThreadPool& pool, std::string& note) const;
    // Repacks every matrix into a new cache file: a temporary file in the same folder, synced, then
    // renamed. False with `why` set on failure, leaving no file behind.
    bool write(ThreadPool& pool, std::string& why) const;
    // Deletes the cache files in dir whose source file is gone or changed (all but `keep`), and the
    // temporary files of writers that are no longer running.
    static void prune(const std::string& dir, const std::string& keep);

private:
    bool verify(const uint8_t* data, const std::vector<uint64_t>& sums, ThreadPool& pool) const;

    std::string dir_, path_, manifest_, source_path_;
    const MappedFile& file_;
    std::vector<Tensor*> matrices_;
    std::vector<size_t> offsets_;  // of each matrix in the data region
    size_t data_bytes_ = 0;
};

// A 64-bit checksum of n bytes, the same for every thread count: 1 MiB chunks, hashed in parallel,
// folded in order. It catches damage (a changed word slips through with odds of about 2^-64), not
// deliberate forgery.
uint64_t checksum64(const uint8_t* p, size_t n, ThreadPool& pool);

}  // namespace phi2cpu
