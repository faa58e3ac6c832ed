// Shared helpers of dstbench's CUDA kernels: the scalar type of this compilation
// and float accumulation.
//
// Every compilation defines DST_SCALAR (float, double, __half or __nv_bfloat16)
// and the tile sizes (see dstbench/kernels/cuda/sources.py). Products accumulate
// in acc_t: double for double, float for everything else.
#pragma once

#ifndef DST_HOST_EMULATION
#include <cuda_fp16.h>
#include <cuda_bf16.h>
// Dynamic shared memory of a kernel, as raw bytes.
#define DST_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

typedef DST_SCALAR scalar_t;

namespace dst {

template <typename T> struct acc_type { typedef float type; };
template <> struct acc_type<double> { typedef double type; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

// Round an accumulator to the scalar type and store it (round to nearest even).
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// a mod m for any sign of a (m > 0).
__device__ __forceinline__ long long wrap(long long a, long long m) {
    const long long r = a % m;
    return r < 0 ? r + m : r;
}

}  // namespace dst

typedef dst::acc_type<scalar_t>::type acc_t;
