// Memory pages for the weights: huge-page buffers and huge-page-aligned file mappings (huge pages
// on Linux; elsewhere the same calls give small pages, see platform/platform.h).
//
// Decoding streams every weight once per token; with 4 KiB pages the TLB misses cost a fifth of the
// 2-thread GEMV speed, so the repacked matrices live on 2 MiB pages: anonymous transparent huge
// pages, or page-cache folios of 2 MiB mapped whole (see model/repack_cache.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>

#include "platform/platform.h"

namespace phi2cpu {

constexpr size_t kHugePage = size_t(2) << 20;

inline size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

// An uninitialised buffer of `bytes`, 2 MiB aligned, asking for transparent huge pages (a hint:
// without THP the pages stay small). Throws std::bad_alloc.
std::shared_ptr<uint8_t> alloc_huge(size_t bytes);

// Maps `bytes` of the open file f from `offset` (a multiple of 2 MiB) read-only at a 2 MiB-aligned
// address, asking for huge pages, so that 2 MiB page-cache folios map as huge pages; the file may be
// closed afterwards. The mapping is guarded against a shrinking file (model/fault_guard.h). Returns
// nullptr when the mapping fails.
std::shared_ptr<uint8_t> map_file_huge(const os::File& f, uint64_t offset, size_t bytes);

using os::anon_huge_pages_possible;
using os::drop_pages;
using os::huge_page_bytes;

}  // namespace phi2cpu
