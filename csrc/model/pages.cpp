#include "model/pages.h"

#include <new>

#include "model/fault_guard.h"

namespace phi2cpu {

std::shared_ptr<uint8_t> alloc_huge(size_t bytes) {
    const size_t size = round_up(bytes, kHugePage);
    void* p = os::alloc_aligned(kHugePage, size);
    if (!p) throw std::bad_alloc();
    os::advise_huge_pages(p, size);
    return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), os::free_aligned);
}

std::shared_ptr<uint8_t> map_file_huge(const os::File& f, uint64_t offset, size_t bytes) {
    const size_t len = round_up(bytes, os::page_size());
    void* p = os::map_file(f, offset, len, kHugePage);
    if (!p) return nullptr;
    os::advise_huge_pages(p, len);  // pages read in from disk come as 2 MiB folios
    guard_mapping(p, len);
    return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [len](uint8_t* q) {
        unguard_mapping(q);
        os::unmap_file(q, len);
    });
}

}  // namespace phi2cpu
