// model/fault_guard.h on Linux and macOS: a SIGBUS handler.
#include "model/fault_guard.h"

#include <signal.h>
#include <sys/mman.h>

#include <atomic>
#include <cstdint>
#include <mutex>

namespace phi2cpu {
namespace {

// Slots are written under the mutex and read lock-free by the handler: `lo` is set last when a slot
// is filled and cleared first when it is emptied, so the handler never sees half a slot.
constexpr int kSlots = 256;
struct Slot {
    std::atomic<uintptr_t> lo{0}, hi{0};
    std::atomic<bool> faulted{false};
};
Slot slots[kSlots];
std::mutex slots_mutex;
struct sigaction previous;
bool installed = false;

void on_sigbus(int sig, siginfo_t* info, void* ctx) {
    const uintptr_t a = uintptr_t(info->si_addr);
    for (Slot& s : slots) {
        const uintptr_t lo = s.lo.load(std::memory_order_acquire);
        if (!lo || a < lo || a >= s.hi.load(std::memory_order_acquire)) continue;
        // mmap is a plain system call on the platforms this runs on, safe in a handler in practice.
        void* p = ::mmap(reinterpret_cast<void*>(lo), s.hi.load() - lo, PROT_READ,
                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED) break;
        s.faulted.store(true, std::memory_order_release);
        return;  // the faulting read runs again and reads zeros
    }
    if (previous.sa_flags & SA_SIGINFO) {
        previous.sa_sigaction(sig, info, ctx);
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
    } else {
        // Not ours: restore the default action; the read faults again and the process dies of it.
        ::signal(SIGBUS, SIG_DFL);
    }
}

Slot* find(uintptr_t lo) {
    for (Slot& s : slots)
        if (s.lo.load() == lo) return &s;
    return nullptr;
}

}  // namespace

bool guard_mapping(const void* p, size_t n) {
    if (!p || !n) return false;
    std::lock_guard<std::mutex> lock(slots_mutex);
    if (!installed) {
        struct sigaction sa = {};
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        if (::sigaction(SIGBUS, &sa, &previous) != 0) return false;
        installed = true;
    }
    Slot* s = find(0);
    if (!s) return false;
    s->faulted.store(false);
    s->hi.store(uintptr_t(p) + n);
    s->lo.store(uintptr_t(p), std::memory_order_release);
    return true;
}

void unguard_mapping(const void* p) {
    std::lock_guard<std::mutex> lock(slots_mutex);
    if (Slot* s = p ? find(uintptr_t(p)) : nullptr) {
        s->lo.store(0, std::memory_order_release);
        s->hi.store(0);
    }
}

bool mapping_faulted(const void* p) {
    const Slot* s = p ? find(uintptr_t(p)) : nullptr;
    return s && s->faulted.load(std::memory_order_acquire);
}

}  // namespace phi2cpu
