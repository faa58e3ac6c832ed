// The round trip of a cache line between two threads of the kernels' OpenMP pool.
//
// Every multi-threaded kernel call pays a few such trips: the pool's wake-up, its barriers and the join, and
// the reads of another thread's partial sums (diag_mm_runs). On a virtual machine the host may place the
// two vCPUs near each other (same core complex, ~110 ns per trip on the CI's AMD EPYC) or far apart
// (~540 ns), and a call of a few microseconds (batch 1) then takes 20-30% longer. The suites record this
// figure beside each case group so that a reader can tell the two placements apart.

#include <omp.h>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace {

struct alignas(64) Flag {
    std::atomic<int64_t> value{0};
    char pad[64 - sizeof(std::atomic<int64_t>)];
};

constexpr int64_t WARM_TRIPS = 64;

}  // namespace

// Mean nanoseconds per round trip over `trips` trips (after a few untimed ones) between threads 0 and 1 of a
// two-thread parallel region: thread 0 writes a counter, thread 1 waits for it and answers on a second cache
// line, thread 0 waits for the answer. -1 when the region gets fewer than two threads or trips < 1.
extern "C" double dst_core_round_trip_ns(int64_t trips) {
    if (trips < 1) return -1;
    Flag ping, pong;
    double ns = -1;
#pragma omp parallel num_threads(2)
    {
        if (omp_get_num_threads() == 2) {
            const bool first = omp_get_thread_num() == 0;
            std::chrono::steady_clock::time_point start;
            for (int64_t i = 1; i <= WARM_TRIPS + trips; ++i) {
                if (first) {
                    if (i == WARM_TRIPS + 1) start = std::chrono::steady_clock::now();
                    ping.value.store(i, std::memory_order_release);
                    while (pong.value.load(std::memory_order_acquire) != i) {
                    }
                } else {
                    while (ping.value.load(std::memory_order_acquire) != i) {
                    }
                    pong.value.store(i, std::memory_order_release);
                }
            }
            if (first)
                ns = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count() /
                     double(trips);
        }
    }
    return ns;
}
