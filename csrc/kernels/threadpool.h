// A persistent pool: parallel_for hands out chunks of [0, n) to the workers and the calling
// thread, and returns when all are done. One parallel_for runs at a time.
//
// Decoding one token runs a few hundred short parallel sections, so waking a sleeping worker each
// time would cost a futex round trip per section: workers and the caller first spin briefly on an
// atomic, and block on a condition variable only when nothing arrives.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define PHI2CPU_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define PHI2CPU_CPU_RELAX() __asm__ __volatile__("yield")
#else
#define PHI2CPU_CPU_RELAX() std::this_thread::yield()
#endif

namespace phi2cpu {

class ThreadPool {
public:
    // Throws std::system_error when a worker cannot be started (thread or memory limits), after
    // stopping the ones already running: their condition variable must not be destroyed under them.
    explicit ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
        workers_.reserve(size_t(n_threads_ - 1));
        for (int i = 1; i < n_threads_; i++) {
            try {
                workers_.emplace_back([this] { worker_loop(); });
            } catch (const std::exception& e) {
                stop_workers();
                const auto* se = dynamic_cast<const std::system_error*>(&e);
                throw std::system_error(se ? se->code() : std::make_error_code(std::errc::not_enough_memory),
                                        "cannot start worker thread " + std::to_string(i + 1) + " of " +
                                            std::to_string(n_threads_));
            }
        }
    }
    ~ThreadPool() { stop_workers(); }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // fn(begin, end) over chunks of at most `grain` items.
    void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
        if (n <= 0) return;
        grain = std::max<int64_t>(1, grain);
        if (n_threads_ == 1 || n <= grain) {
            fn(0, n);
            return;
        }
        {
            std::lock_guard<std::mutex> lk(mu_);
            job_ = &fn;
            n_ = n;
            grain_ = grain;
            next_.store(0);
            active_.store(int(workers_.size()));
            generation_.fetch_add(1, std::memory_order_release);
        }
        cv_start_.notify_all();
        run_chunks();
        for (int spin = 0; active_.load(std::memory_order_acquire) != 0; spin++) {
            if (spin < kSpins) {
                PHI2CPU_CPU_RELAX();
                continue;
            }
            std::unique_lock<std::mutex> lk(mu_);
            cv_done_.wait(lk, [this] { return active_.load() == 0; });
        }
        job_ = nullptr;
    }

private:
    static constexpr int kSpins = 20000;  // ~50-100 us of pause before sleeping

    void stop_workers() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_.store(true);
        }
        cv_start_.notify_all();
        for (auto& t : workers_) t.join();
    }

    void run_chunks() {
        for (;;) {
            const int64_t b = next_.fetch_add(grain_);
            if (b >= n_) break;
            (*job_)(b, std::min(n_, b + grain_));
        }
    }

    void worker_loop() {
        uint64_t seen = 0;
        for (;;) {
            for (int spin = 0; spin < kSpins && generation_.load(std::memory_order_acquire) == seen && !stop_.load();
                 spin++)
                PHI2CPU_CPU_RELAX();
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_start_.wait(lk, [&] { return stop_.load() || generation_.load() != seen; });
                if (stop_.load()) return;
                seen = generation_.load();
            }
            run_chunks();
            if (active_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
                std::lock_guard<std::mutex> lk(mu_);
                cv_done_.notify_one();
            }
        }
    }

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex mu_;
    std::condition_variable cv_start_, cv_done_;
    const std::function<void(int64_t, int64_t)>* job_ = nullptr;
    int64_t n_ = 0, grain_ = 1;
    std::atomic<int64_t> next_{0};
    std::atomic<int> active_{0};
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> stop_{false};
};

}  // namespace phi2cpu
