// Our own worker threads for the CPU kernels (no OpenMP: torch's OpenMP workers spin for a
// while after each torch op, and a second OpenMP runtime would fight them for the cores).
//
// Started on first use and kept for the next call, sleeping on a condition variable
// (never spinning). Jobs are "pull work until none is left" loops, so a job is correct with
// any number of threads: a call that finds the pool busy (another Python thread inside
// flashcka) just runs its job on the calling thread alone. A forked child gets a new pool.
#pragma once
#include <unistd.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace flashcka {

class Pool {
 public:
  // The process's pool (a new one after fork(): the parent's threads do not exist there).
  static Pool& get() {
    static std::mutex m;
    static Pool* pool = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lk(m);
    if (pool == nullptr || owner != getpid()) {  // the old pool is left alone (leaked)
      pool = new Pool();
      owner = getpid();
    }
    return *pool;
  }

  // Runs f(t) for t in [0, nt), t = 0 on the calling thread; returns when all are done and
  // rethrows the first exception any of them threw.
  void run(int nt, const std::function<void(int)>& f) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    std::exception_ptr err;
    if (nt <= 1 || !busy.owns_lock()) {
      f(0);
      return;
    }
    {
      std::lock_guard<std::mutex> lk(m_);
      while (static_cast<int>(threads_.size()) < nt - 1)
        threads_.emplace_back(&Pool::worker, this, static_cast<int>(threads_.size()) + 1);
      job_ = &f;
      job_nt_ = nt;
      pending_ = nt - 1;
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    try {
      f(0);
    } catch (...) {
      err = std::current_exception();
    }
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [&] { return pending_ == 0; });
    job_ = nullptr;
    if (!err) err = error_;
    lk.unlock();
    if (err) std::rethrow_exception(err);
  }

 private:
  Pool() = default;

  void worker(int id) {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lk(m_);
    for (;;) {
      wake_.wait(lk, [&] { return generation_ != seen && job_ != nullptr; });
      seen = generation_;
      if (id >= job_nt_) continue;
      const std::function<void(int)>* f = job_;
      lk.unlock();
      std::exception_ptr e;
      try {
        (*f)(id);
      } catch (...) {
        e = std::current_exception();
      }
      lk.lock();
      if (e && !error_) error_ = e;
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex busy_;  // one job at a time
  std::mutex m_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  const std::function<void(int)>* job_ = nullptr;
  int job_nt_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;
};

}  // namespace flashcka
