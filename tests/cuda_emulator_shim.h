// Host emulation of the CUDA built-ins dstbench's kernels use, for tests without a GPU.
//
// Force-included (g++ -include) before a kernel source compiled as C++20. A launch
// runs one std::thread per CUDA thread of a block and walks the grid block by block;
// __syncthreads is a block-wide std::barrier, __shfl_xor_sync exchanges through a
// slot array between two warp-wide barriers, __shared__ arrays are static storage
// (blocks run one after another), dynamic shared memory is refilled with 0xFF bytes
// (NaN for floats) at each launch so that reading an unstaged element shows up.
#pragma once
#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#define DST_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __align__(n) alignas(n)
#define DST_DYNAMIC_SHARED(name) unsigned char* name = emu::dynamic_shared.data()

using std::max;
using std::min;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

// fp16 / bf16 storage types with the conversion functions the kernels call.
struct __half {
    _Float16 v;
};
struct __nv_bfloat16 {
    std::uint16_t bits;
};
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { return __half{static_cast<_Float16>(f)}; }
inline float __bfloat162float(__nv_bfloat16 b) {
    std::uint32_t u = std::uint32_t(b.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) {  // round to nearest even; inputs are finite
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return __nv_bfloat16{std::uint16_t(u >> 16)};
}

namespace emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::vector<unsigned char> dynamic_shared;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
inline std::vector<double> shuffle_slots;

inline unsigned linear_thread() { return (thread_idx.z * block_dim.y + thread_idx.y) * block_dim.x + thread_idx.x; }

template <typename... Args, std::size_t... I>
std::tuple<Args...> unpack(void** args, std::index_sequence<I...>) {
    return std::tuple<Args...>(*static_cast<Args*>(args[I])...);
}

// Run kernel over the grid; args[i] points at the value of parameter i (as for cudaLaunchKernel).
template <typename... Args>
void launch(void (*kernel)(Args...), const unsigned* grid, const unsigned* block, std::size_t shared_bytes,
            void** args) {
    const auto values = unpack<Args...>(args, std::index_sequence_for<Args...>{});
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_dim = dim3{block[0], block[1], block[2]};
    const unsigned n = block[0] * block[1] * block[2];
    dynamic_shared.assign(shared_bytes + 16, 0xFF);
    block_barrier = std::make_unique<std::barrier<>>(n);
    warp_barriers.clear();
    for (unsigned w = 0; w < (n + 31) / 32; ++w)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, n - 32 * w)));
    shuffle_slots.assign(n, 0.0);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < n; ++t) {
        threads.emplace_back([&, t] {
            thread_idx = dim3{t % block[0], (t / block[0]) % block[1], t / (block[0] * block[1])};
            for (unsigned z = 0; z < grid[2]; ++z)
                for (unsigned y = 0; y < grid[1]; ++y)
                    for (unsigned x = 0; x < grid[0]; ++x) {
                        block_idx = dim3{x, y, z};
                        std::apply(kernel, values);
                        block_barrier->arrive_and_wait();  // the next block reuses shared memory
                    }
        });
    }
    for (auto& th : threads) th.join();
}
}  // namespace emu

#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline int __ffs(int x) { return __builtin_ffs(x); }

template <typename T>
T __shfl_xor_sync(unsigned, T value, int lane_mask) {
    const unsigned t = emu::linear_thread();
    auto& bar = *emu::warp_barriers[t / 32];
    emu::shuffle_slots[t] = static_cast<double>(value);
    bar.arrive_and_wait();
    const T other = static_cast<T>(emu::shuffle_slots[(t & ~31u) | ((t % 32) ^ unsigned(lane_mask))]);
    bar.arrive_and_wait();
    return other;
}

#define EMU_EXPORT(name)                                                                               \
    extern "C" void emu_##name(const unsigned* grid, const unsigned* block, std::size_t shared_bytes, \
                               void** args) {                                                          \
        emu::launch(name, grid, block, shared_bytes, args);                                            \
    }
