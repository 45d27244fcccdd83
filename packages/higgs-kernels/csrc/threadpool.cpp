#include "threadpool.h"

#include <pthread.h>
#include <sched.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace hk {
namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

int default_threads() {
  if (const char* env = std::getenv("HIGGS_KERNELS_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? int(n) : 1;
}

// state packs [job id : 20][task count : 22][next task : 22], so that claiming a
// task (one CAS) also proves it belongs to the job the worker has in hand.
constexpr int kIdxBits = 22;
constexpr uint64_t kIdxMask = (uint64_t(1) << kIdxBits) - 1;

inline uint64_t job_of(uint64_t s) {
  return s >> (2 * kIdxBits);
}
inline int count_of(uint64_t s) {
  return int((s >> kIdxBits) & kIdxMask);
}
inline int next_of(uint64_t s) {
  return int(s & kIdxMask);
}

class Pool {
 public:
  explicit Pool(int threads) : threads_(threads) {
    for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { work(); });
  }

  ~Pool() {
    stop_.store(true);
    epoch_.fetch_add(1);
    {
      std::lock_guard<std::mutex> lock(sleep_);
      wake_.notify_all();
    }
    for (auto& t : workers_) t.join();
  }

  int threads() const {
    return threads_;
  }

  void run(int ntasks, const std::function<void(int)>& fn) {
    if (ntasks <= 0) return;
    if (threads_ == 1 || ntasks == 1) {
      for (int i = 0; i < ntasks; ++i) fn(i);
      return;
    }
    std::lock_guard<std::mutex> lock(submit_);
    job_ = &fn;
    done_.store(0, std::memory_order_relaxed);
    uint64_t id = (job_of(state_.load(std::memory_order_relaxed)) + 1) & 0xfffff;
    uint64_t s = (id << (2 * kIdxBits)) | (uint64_t(ntasks) << kIdxBits);
    state_.store(s, std::memory_order_release);
    // seq_cst against the sleeper's count-then-check: either it sees the new
    // epoch or this sees it counted and wakes it.
    epoch_.fetch_add(1);
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(sleep_);
      wake_.notify_all();
    }
    int mine = drain(id);
    int total = done_.fetch_add(mine, std::memory_order_acq_rel) + mine;
    // A worker still on a task: wait, and on a loaded machine give it the core.
    for (int spins = 0; total < ntasks; ++spins) {
      if (spins < 4096) {
        cpu_relax();
      } else {
        std::this_thread::yield();
      }
      total = done_.load(std::memory_order_acquire);
    }
  }

 private:
  // Claims and runs tasks of job `id` until none is left; returns how many it ran.
  int drain(uint64_t id) {
    int ran = 0;
    uint64_t s = state_.load(std::memory_order_acquire);
    while (job_of(s) == id && next_of(s) < count_of(s)) {
      if (state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel)) {
        (*job_)(next_of(s));
        ++ran;
        s = state_.load(std::memory_order_acquire);
      }
    }
    return ran;
  }

  void work() {
    using clock = std::chrono::steady_clock;
    // Not epoch_'s value at start-up: a job or the destructor may already have
    // moved it on before this thread got to run.
    uint32_t seen = 0;
    for (;;) {
      // Spin a little before sleeping: the next job usually follows within
      // microseconds during decoding.
      auto deadline = clock::now() + std::chrono::microseconds(spin_us_);
      uint32_t e;
      int polls = 0;
      while ((e = epoch_.load(std::memory_order_acquire)) == seen) {
        // Busy for a moment, then yielding, so that on a loaded machine the
        // thread that would post the next job (MLX's) is not kept off a core.
        if (++polls < 512) {
          cpu_relax();
        } else {
          std::this_thread::yield();
        }
        if (polls % 64 == 0 && clock::now() > deadline) {
          std::unique_lock<std::mutex> lock(sleep_);
          sleepers_.fetch_add(1);
          wake_.wait(lock, [&] { return epoch_.load() != seen; });
          sleepers_.fetch_sub(1);
        }
      }
      seen = e;
      if (stop_.load()) return;
      uint64_t id = job_of(state_.load(std::memory_order_acquire));
      int ran = drain(id);
      if (ran) done_.fetch_add(ran, std::memory_order_acq_rel);
    }
  }

  int threads_;
  int spin_us_ = [] {
    const char* env = std::getenv("HIGGS_KERNELS_SPIN_US");
    return env ? std::atoi(env) : 300;
  }();
  std::vector<std::thread> workers_;
  std::mutex submit_;
  const std::function<void(int)>* job_ = nullptr;
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};
  std::atomic<uint32_t> epoch_{0};
  std::mutex sleep_;
  std::condition_variable wake_;
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

std::mutex pool_mutex;
std::shared_ptr<Pool> pool;
int wanted = 0;  // 0: default

void forget_pool_in_child() {
  // The workers do not exist in a forked child; drop the pool without joining
  // them (and leak it), a new one starts on first use.
  new std::shared_ptr<Pool>(std::move(pool));
}

std::shared_ptr<Pool> get_pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (!pool) {
    static bool registered = [] {
      pthread_atfork(nullptr, nullptr, forget_pool_in_child);
      return true;
    }();
    (void)registered;
    pool = std::make_shared<Pool>(wanted > 0 ? wanted : default_threads());
  }
  return pool;
}

}  // namespace

void parallel_for(int ntasks, const std::function<void(int)>& fn) {
  get_pool()->run(ntasks, fn);  // the reference keeps it alive meanwhile
}

int num_threads() {
  return get_pool()->threads();
}

void set_num_threads(int n) {
  std::lock_guard<std::mutex> lock(pool_mutex);
  wanted = n > 0 ? n : 0;
  pool.reset();
}

}  // namespace hk
