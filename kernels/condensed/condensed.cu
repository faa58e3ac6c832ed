// Condensed-format kernels (SRigL's constant fan-in): forward and both gradients.
//
// W (n_out, n_in) keeps fan_in weights in each of its n_active active rows:
// values (n_active, fan_in), indices (n_active, fan_in) of type index_t (column ids),
// active_rows (n_active,) int64, distinct. x (B, n_in), y (B, n_out); the caller fills the
// columns of ablated rows (0, or the bias) when n_active < n_out.
//
// Launch geometry (sized in dstbench/kernels/cuda/launches.py). COND_WARPS warps per
// block; where a warp works on bt batch rows (bt a power of two <= 32), lane = e * bt + bl:
// bl picks the batch row b0 + bl, e one of 32 / bt slices of the entries. Grid y is capped
// at CUDA's 65535; kernels that tile the batch over grid y loop over the batch tiles with
// stride gridDim.y, so any batch size runs.
//   condensed_fwd          grid (ceil(n_active / rows_per_block), min(ceil(B / bt), 65535)).
//                          Warp w takes the block's active rows w, w + COND_WARPS, ... With
//                          stage = 1 the block first copies x[b0:b0 + bt, :] into shared memory
//                          as xs[c * bt + bl] (n_in * bt scalars) and every gather hits it; with
//                          stage = 0 (n_in too large for shared memory) x is xT (n_in, B) in
//                          global memory and gathers go through L1. The slices of the entries
//                          are summed with warp shuffles. bias (n_out,) is added when not null.
//   condensed_fwd_batched* B >= 16, when BT * n_in scalars fit in shared memory (BT = 8, 16 or 32 batch
//                          rows, chosen by the launch; one extern "C" kernel per BT). grid
//                          (ceil(n_active / rows_per_block), min(ceil(B / BT), 65535)), block
//                          32 * COND_WARPS. The block stages x[b0:b0 + BT, :] transposed, element
//                          (c, bb) at xs[c * BT + (bb ^ (c & 3))]: a warp's staging store covers 4
//                          columns x 8 rows 4 apart, 32 distinct banks. A warp then works on
//                          256 / BT active rows at once, BT / 8 lanes per row (a group g), each lane
//                          owning 8 batch rows q + BT/8 * u; every entry is one broadcast value
//                          and index load and 8 shared loads for 8 FMAs. A lane visits its rows in
//                          the order u' = (u + g) & 7, so at BT = 32 the 8 groups of a warp read 8
//                          different 4-bank quads (the XOR only permutes banks inside a quad):
//                          no bank conflict whatever the gathered columns are.
//   condensed_values_grad  grid (ceil(n_active / COND_WARPS)). Warp w owns active row i and
//                          takes its entries 32 / bt at a time; the bt batch lanes of an entry
//                          read consecutive elements of xT (n_in, B) and dyT (n_out, B), so each
//                          gather of x is one coalesced run of the batch, not a random 4-byte
//                          load per batch row. The batch lanes are summed with warp shuffles.
//   condensed_input_grad   grid (ceil(n_in / COND_WARPS), min(ceil(B / bt), 65535)). Warp w owns
//                          input column c and reads that column's entries from the transposed
//                          pattern (col_ptr (n_in + 1,), entry_values (nnz,) flat ids i * fan_in + t
//                          sorted by column, entry_rows (nnz,) = active_rows[i], all int32; built
//                          once per pattern by launches.py), so each dx element is one
//                          deterministic sum: no atomics. dy arrives transposed, dyT (n_out, B),
//                          so a warp's batch lanes read consecutive addresses.
#include "common.cuh"

typedef DST_INDEX index_t;

// Sum v over the lanes of a warp that share lane % bt, i.e. over the slices e (all 32 lanes call this).
__device__ __forceinline__ acc_t sum_slices(acc_t v, int bt) {
    for (int m = bt; m < 32; m <<= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

// Sum v over the lanes of a warp that share lane / bt, i.e. over the batch lanes bl (all 32 lanes call this).
__device__ __forceinline__ acc_t sum_batch_lanes(acc_t v, int bt) {
    for (int m = 1; m < bt; m <<= 1) v += __shfl_xor_sync(0xffffffffu, v, m);
    return v;
}

extern "C" __global__ void condensed_fwd(const scalar_t* __restrict__ x, const scalar_t* __restrict__ values,
                                         const index_t* __restrict__ indices, const long long* __restrict__ active_rows,
                                         const scalar_t* __restrict__ bias, scalar_t* __restrict__ y, int batch,
                                         int n_in, int n_out, int n_active, int fan_in, int bt, int rows_per_block,
                                         int stage) {
    DST_DYNAMIC_SHARED(smem);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int shift = __ffs(bt) - 1;  // bt = 1 << shift
    const int bl = lane & (bt - 1), e = lane >> shift, n_slices = 32 >> shift;
    const int row_begin = blockIdx.x * rows_per_block;
    const int row_end = min(n_active, row_begin + rows_per_block);

    for (int b0 = blockIdx.y * bt; b0 < batch; b0 += gridDim.y * bt) {
        const int b = b0 + bl;
        // The x element of column c for this lane's batch row is src[c * stride + bl].
        const scalar_t* src;
        long long stride;
        if (stage) {
            scalar_t* xs = reinterpret_cast<scalar_t*>(smem);
            __syncthreads();  // the previous batch tile is no longer read
            for (int q = threadIdx.x; q < n_in * bt; q += blockDim.x) {
                const int c = q >> shift, row = b0 + (q & (bt - 1));
                dst::store(&xs[q], row < batch ? dst::to_acc(x[(long long)row * n_in + c]) : acc_t(0));
            }
            __syncthreads();
            src = xs;
            stride = bt;
        } else {
            src = x + b0;  // x is xT (n_in, B)
            stride = batch;
        }

        for (int i = row_begin + warp; i < row_end; i += COND_WARPS) {
            acc_t acc = 0;
            if (b < batch) {
                for (int t = e; t < fan_in; t += n_slices) {
                    const long long q = (long long)i * fan_in + t;
                    acc += dst::to_acc(values[q]) * dst::to_acc(src[(long long)indices[q] * stride + bl]);
                }
            }
            acc = sum_slices(acc, bt);
            if (e == 0 && b < batch) {
                const long long row = active_rows[i];
                if (bias) acc += dst::to_acc(bias[row]);
                dst::store(&y[(long long)b * n_out + row], acc);
            }
        }
    }
}

// condensed_fwd_batched with BT batch rows per block (see the header).
template <int BT>
__device__ __forceinline__ void condensed_fwd_batched(const scalar_t* __restrict__ x,
                                                      const scalar_t* __restrict__ values,
                                                      const index_t* __restrict__ indices,
                                                      const long long* __restrict__ active_rows,
                                                      const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
                                                      int batch, int n_in, int n_out, int n_active, int fan_in,
                                                      int rows_per_block) {
    static_assert(BT == 8 || BT == 16 || BT == 32, "8 batch rows per lane, at most one warp per row group");
    constexpr int LANES = BT / 8;        // lanes per active row
    constexpr int GROUPS = 32 / LANES;   // active rows per warp
    DST_DYNAMIC_SHARED(smem);
    scalar_t* xs = reinterpret_cast<scalar_t*>(smem);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / LANES, q = lane % LANES;
    const int row_begin = blockIdx.x * rows_per_block;
    const int row_end = min(n_active, row_begin + rows_per_block);
    const int n_in4 = (n_in + 3) & ~3;

    for (int b0 = blockIdx.y * BT; b0 < batch; b0 += gridDim.y * BT) {
        __syncthreads();  // the previous batch tile is no longer read
        for (int e = threadIdx.x; e < n_in4 * BT; e += 32 * COND_WARPS) {
            const int m = e & 3, h = (e >> 2) & 7, rest = e >> 5;
            const int c = (rest / LANES) * 4 + m, bb = rest % LANES + LANES * h;
            if (c < n_in) {
                const int b = b0 + bb;
                if (b < batch)
                    xs[c * BT + (bb ^ m)] = x[(long long)b * n_in + c];
                else
                    dst::store(&xs[c * BT + (bb ^ m)], acc_t(0));
            }
        }
        __syncthreads();

        for (int i = row_begin + warp * GROUPS + g; i < row_end; i += COND_WARPS * GROUPS) {
            acc_t acc[8];
#pragma unroll
            for (int u = 0; u < 8; ++u) acc[u] = 0;
            const long long base = (long long)i * fan_in;
            for (int t = 0; t < fan_in; ++t) {
                const int c = (int)indices[base + t];
                const acc_t v = dst::to_acc(values[base + t]);
                const scalar_t* col = xs + c * BT;
                const int m = c & 3;
#pragma unroll
                for (int u = 0; u < 8; ++u) acc[u] += v * dst::to_acc(col[(q + LANES * ((u + g) & 7)) ^ m]);
            }
            const long long row = active_rows[i];
            const acc_t b_row = bias ? dst::to_acc(bias[row]) : acc_t(0);
#pragma unroll
            for (int u = 0; u < 8; ++u) {
                const int b = b0 + q + LANES * ((u + g) & 7);
                if (b < batch) dst::store(&y[(long long)b * n_out + row], acc[u] + b_row);
            }
        }
    }
}

#define COND_BATCHED_ARGS                                                                                    \
    const scalar_t *__restrict__ x, const scalar_t *__restrict__ values, const index_t *__restrict__ indices, \
        const long long *__restrict__ active_rows, const scalar_t *__restrict__ bias, scalar_t *__restrict__ y, \
        int batch, int n_in, int n_out, int n_active, int fan_in, int rows_per_block
#define COND_BATCHED_CALL(BT) \
    condensed_fwd_batched<BT>(x, values, indices, active_rows, bias, y, batch, n_in, n_out, n_active, fan_in, \
                              rows_per_block)

extern "C" __global__ void condensed_fwd_batched8(COND_BATCHED_ARGS) { COND_BATCHED_CALL(8); }
extern "C" __global__ void condensed_fwd_batched16(COND_BATCHED_ARGS) { COND_BATCHED_CALL(16); }
extern "C" __global__ void condensed_fwd_batched32(COND_BATCHED_ARGS) { COND_BATCHED_CALL(32); }

extern "C" __global__ void condensed_values_grad(const scalar_t* __restrict__ dyt, const scalar_t* __restrict__ xt,
                                                 const index_t* __restrict__ indices,
                                                 const long long* __restrict__ active_rows,
                                                 scalar_t* __restrict__ dvalues, int batch, int n_active, int fan_in,
                                                 int bt) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int shift = __ffs(bt) - 1;  // bt = 1 << shift
    const int bl = lane & (bt - 1), e = lane >> shift, n_slices = 32 >> shift;
    const int i = blockIdx.x * COND_WARPS + warp;
    if (i >= n_active) return;  // uniform across the warp: no shuffle partner is missing

    const scalar_t* dy_row = dyt + active_rows[i] * batch;
    for (int t0 = 0; t0 < fan_in; t0 += n_slices) {
        const int t = t0 + e;
        const long long q = (long long)i * fan_in + t;
        acc_t acc = 0;
        if (t < fan_in) {
            const scalar_t* x_col = xt + (long long)indices[q] * batch;
            for (int b = bl; b < batch; b += bt) acc += dst::to_acc(dy_row[b]) * dst::to_acc(x_col[b]);
        }
        acc = sum_batch_lanes(acc, bt);
        if (bl == 0 && t < fan_in) dst::store(&dvalues[q], acc);
    }
}

extern "C" __global__ void condensed_input_grad(const scalar_t* __restrict__ dyt, const scalar_t* __restrict__ values,
                                                const int* __restrict__ col_ptr, const int* __restrict__ entry_values,
                                                const int* __restrict__ entry_rows, scalar_t* __restrict__ dx,
                                                int batch, int n_in, int bt) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int shift = __ffs(bt) - 1;  // bt = 1 << shift
    const int bl = lane & (bt - 1), e = lane >> shift, n_slices = 32 >> shift;
    const int c = blockIdx.x * COND_WARPS + warp;

    for (int b0 = blockIdx.y * bt; b0 < batch; b0 += gridDim.y * bt) {
        const int b = b0 + bl;
        acc_t acc = 0;
        if (c < n_in && b < batch) {
            for (int q = col_ptr[c] + e; q < col_ptr[c + 1]; q += n_slices)
                acc += dst::to_acc(values[entry_values[q]]) * dst::to_acc(dyt[(long long)entry_rows[q] * batch + b]);
        }
        acc = sum_slices(acc, bt);
        if (e == 0 && c < n_in && b < batch) dst::store(&dx[(long long)b * n_in + c], acc);
    }
}
