// Worker threads for the CPU kernels.
//
// When the process has GNU OpenMP loaded (torch's CPU wheels bring libgomp.so.1), a job runs
// on that runtime's own team (GOMP_parallel, looked up at run time; nothing is linked):
// torch's workers keep spinning for a while after every torch op, and a thread of ours
// would fight them for the two cores (measured: a second thread of our own straight after
// a torch op gained nothing on 0.4-1.5 ms Grams), whereas the spinning worker picks our job
// up at once. Otherwise (no libgomp, or a forked child of the process that first used the
// pool: GNU OpenMP's team does not survive fork) our own threads, started on first use and
// kept, sleeping on a condition variable, never spinning.
//
// Jobs are "pull work until none is left" loops, so a job is correct with any number of
// threads: a call that finds our pool busy (another Python thread inside flashcka), or an
// OpenMP team smaller than asked (nested in a parallel region), runs with fewer.
#pragma once
#include <dlfcn.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace flashcka {

// GNU OpenMP's entry points, when the process has the library loaded (by torch).
struct Gomp {
  using Parallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
  using ThreadNum = int (*)();
  Parallel parallel = nullptr;
  ThreadNum thread_num = nullptr;
  pid_t pid = 0;  // the process that looked them up: a forked child does not use them

  static const Gomp& get() {
    static const Gomp g = [] {
      Gomp r;
      r.pid = getpid();
      if (void* h = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_NOLOAD)) {
        r.parallel = reinterpret_cast<Parallel>(dlsym(h, "GOMP_parallel"));
        r.thread_num = reinterpret_cast<ThreadNum>(dlsym(h, "omp_get_thread_num"));
        if (r.thread_num == nullptr) r.parallel = nullptr;
      }
      return r;
    }();
    return g;
  }
  bool usable() const { return parallel != nullptr && pid == getpid(); }
};

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
    if (nt <= 1) {
      f(0);
      return;
    }
    const Gomp& g = Gomp::get();
    if (g.usable()) {
      run_gomp(g, nt, f);
      return;
    }
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    std::exception_ptr err;
    if (!busy.owns_lock()) {
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

  // f(omp_get_thread_num()) on an OpenMP team of (up to) nt threads.
  static void run_gomp(const Gomp& g, int nt, const std::function<void(int)>& f) {
    struct Call {
      const std::function<void(int)>* f;
      Gomp::ThreadNum thread_num;
      std::atomic<bool> failed{false};
      std::exception_ptr error;
    } call{&f, g.thread_num, {false}, nullptr};
    g.parallel(
        [](void* p) {
          Call& c = *static_cast<Call*>(p);
          try {
            (*c.f)(c.thread_num());
          } catch (...) {  // nothing may unwind through the OpenMP runtime
            if (!c.failed.exchange(true)) c.error = std::current_exception();
          }
        },
        &call, unsigned(nt), 0);
    if (call.error) std::rethrow_exception(call.error);
  }

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
