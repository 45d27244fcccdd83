// A persistent pool: the caller runs tasks alongside threads - 1 workers, which
// spin briefly after a job (decode issues hundreds of small jobs per frame and a
// sleeping vCPU takes tens of microseconds to wake) and then sleep on a condition variable.
#pragma once

#include <cstdint>
#include <functional>

namespace hk {

// Runs fn(0) ... fn(ntasks - 1), each once, across the pool; returns when all
// are done. One job at a time: concurrent callers are serialised.
void parallel_for(int ntasks, const std::function<void(int)>& fn);

// Threads used (the caller included): HIGGS_KERNELS_THREADS, else every core
// this process may run on.
int num_threads();
void set_num_threads(int n);  // n <= 0: back to the default

}  // namespace hk
