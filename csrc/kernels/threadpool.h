// A persistent pool: parallel_for hands out chunks of [0, n) to the workers and the calling
// thread, and returns when all are done. One parallel_for runs at a time.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace phi2cpu {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads) : n_threads_(std::max(1, n_threads)) {
        for (int i = 1; i < n_threads_; i++) workers_.emplace_back([this] { worker_loop(); });
    }
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lk(mu_);
            stop_ = true;
        }
        cv_start_.notify_all();
        for (auto& t : workers_) t.join();
    }
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
            active_ = int(workers_.size());
            generation_++;
        }
        cv_start_.notify_all();
        run_chunks();
        std::unique_lock<std::mutex> lk(mu_);
        cv_done_.wait(lk, [this] { return active_ == 0; });
        job_ = nullptr;
    }

private:
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
            {
                std::unique_lock<std::mutex> lk(mu_);
                cv_start_.wait(lk, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
            }
            run_chunks();
            {
                std::lock_guard<std::mutex> lk(mu_);
                if (--active_ == 0) cv_done_.notify_one();
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
    int active_ = 0;
    uint64_t generation_ = 0;
    bool stop_ = false;
};

}  // namespace phi2cpu
