// Condensed-format kernels (SRigL's constant fan-in): forward and both gradients.
//
// W (n_out, n_in) keeps fan_in weights in each of its n_active active rows:
// values (n_active, fan_in), indices (n_active, fan_in) of type index_t (column ids),
// active_rows (n_active,) int64. x (B, n_in), y (B, n_out); ablated rows of y stay 0
// (the caller zero-fills y when n_active < n_out).
//
// Launch geometry (sized in dstbench/kernels/cuda/launches.py). COND_WARPS warps per
// block; where a warp works on bt batch rows (bt a power of two <= 32), lane = e * bt + bl:
// bl picks the batch row b0 + bl, e one of 32 / bt slices of the entries, and the slices
// are summed with warp shuffles.
//   condensed_fwd          grid (ceil(n_active / rows_per_block), ceil(B / bt)). Warp w takes
//                          the block's active rows w, w + COND_WARPS, ... With stage = 1 the
//                          block first copies x[b0:b0 + bt, :] into shared memory as
//                          xs[c * bt + bl] (n_in * bt scalars) and every gather hits it; with
//                          stage = 0 (n_in too large for shared memory) x is xT (n_in, B)
//                          in global memory and gathers go through L1.
//   condensed_values_grad  block (32, COND_GRAD_SPLIT_B), grid (n_active, ceil(fan_in / 32)).
//                          Thread (tx, ty) owns entry tx of the row over the batch rows
//                          ty, ty + COND_GRAD_SPLIT_B, ...; shared memory sums the slices.
//   condensed_input_grad   grid (ceil(n_in / COND_WARPS), ceil(B / bt)). Warp w owns input
//                          column c and reads that column's entries from a transposed CSR
//                          (col_ptr (n_in + 1,), entries (nnz,): flat ids i * fan_in + t sorted by
//                          column), so each dx element is one deterministic sum: no atomics.
//                          dy arrives transposed, dyT (n_out, B), so a warp's batch lanes read
//                          consecutive addresses.
#include "common.cuh"

typedef DST_INDEX index_t;

// Sum v over the lanes of a warp that share lane % bt (all 32 lanes must call this).
__device__ __forceinline__ acc_t sum_slices(acc_t v, int bt) {
    for (int m = bt; m < 32; m <<= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

extern "C" __global__ void condensed_fwd(const scalar_t* __restrict__ x, const scalar_t* __restrict__ values,
                                         const index_t* __restrict__ indices, const long long* __restrict__ active_rows,
                                         scalar_t* __restrict__ y, int batch, int n_in, int n_out, int n_active,
                                         int fan_in, int bt, int rows_per_block, int stage) {
    DST_DYNAMIC_SHARED(smem);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int bl = lane % bt, e = lane / bt, n_slices = 32 / bt;
    const int b0 = blockIdx.y * bt;
    const int b = b0 + bl;

    // The x element of column c for this lane's batch row is src[c * stride + bl].
    const scalar_t* src;
    long long stride;
    if (stage) {
        scalar_t* xs = reinterpret_cast<scalar_t*>(smem);
        for (long long q = threadIdx.x; q < (long long)n_in * bt; q += blockDim.x) {
            const long long c = q / bt;
            const int row = b0 + (int)(q % bt);
            dst::store(&xs[q], row < batch ? dst::to_acc(x[(long long)row * n_in + c]) : acc_t(0));
        }
        __syncthreads();
        src = xs;
        stride = bt;
    } else {
        src = x + b0;  // x is xT (n_in, B)
        stride = batch;
    }

    const int row_begin = blockIdx.x * rows_per_block;
    const int row_end = min(n_active, row_begin + rows_per_block);
    for (int i = row_begin + warp; i < row_end; i += COND_WARPS) {
        acc_t acc = 0;
        if (b < batch) {
            for (int t = e; t < fan_in; t += n_slices) {
                const long long q = (long long)i * fan_in + t;
                acc += dst::to_acc(values[q]) * dst::to_acc(src[(long long)indices[q] * stride + bl]);
            }
        }
        acc = sum_slices(acc, bt);
        if (e == 0 && b < batch) dst::store(&y[(long long)b * n_out + active_rows[i]], acc);
    }
}

extern "C" __global__ void condensed_values_grad(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                                 const index_t* __restrict__ indices,
                                                 const long long* __restrict__ active_rows,
                                                 scalar_t* __restrict__ dvalues, int batch, int n_in, int n_out,
                                                 int fan_in) {
    __shared__ acc_t partial[COND_GRAD_SPLIT_B][32];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int i = blockIdx.x;
    const int t = blockIdx.y * 32 + tx;
    const long long q = (long long)i * fan_in + t;

    acc_t acc = 0;
    if (t < fan_in) {
        const long long row = active_rows[i];
        const long long c = indices[q];
        for (int b = ty; b < batch; b += COND_GRAD_SPLIT_B)
            acc += dst::to_acc(dy[(long long)b * n_out + row]) * dst::to_acc(x[(long long)b * n_in + c]);
    }
    partial[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && t < fan_in) {
        acc_t sum = 0;
        for (int part = 0; part < COND_GRAD_SPLIT_B; ++part) sum += partial[part][tx];
        dst::store(&dvalues[q], sum);
    }
}

extern "C" __global__ void condensed_input_grad(const scalar_t* __restrict__ dyt, const scalar_t* __restrict__ values,
                                                const long long* __restrict__ col_ptr,
                                                const long long* __restrict__ entries,
                                                const long long* __restrict__ active_rows, scalar_t* __restrict__ dx,
                                                int batch, int n_in, int fan_in, int bt) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int bl = lane % bt, e = lane / bt, n_slices = 32 / bt;
    const int b = blockIdx.y * bt + bl;
    const int c = blockIdx.x * COND_WARPS + warp;

    acc_t acc = 0;
    if (c < n_in && b < batch) {
        for (long long q = col_ptr[c] + e; q < col_ptr[c + 1]; q += n_slices) {
            const long long entry = entries[q];
            const long long row = active_rows[entry / fan_in];
            acc += dst::to_acc(values[entry]) * dst::to_acc(dyt[row * batch + b]);
        }
    }
    acc = sum_slices(acc, bt);
    if (e == 0 && c < n_in && b < batch) dst::store(&dx[(long long)b * n_in + c], acc);
}
