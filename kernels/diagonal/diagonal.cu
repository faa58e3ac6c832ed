// Diagonal-format kernels (DynaDiag): y = x @ W.T and the values gradient.
//
// One product: x (B, n_in), y (B, n_out), W (n_out, n_in) given by n_diag
// diagonals. P = max(n_out, n_in), D = min(n_out, n_in); offsets (n_diag,) int64
// in [0, P); values (n_diag, D). Diagonal s holds
//   W[(j + s) % n_out, j]  when n_out >= n_in ("tall"),
//   W[j, (j + s) % n_in]   otherwise ("wide"), for j in [0, D).
// The forward kernels take `tall`, which picks the gather formula: 1 for y = x @ W.T with
// W tall (n_out >= n_in), 0 for W wide; the input gradient dx = dy @ W is the same kernel
// with n_out/n_in swapped and `tall` flipped. The flag cannot be derived from the product's
// shape: for a square W, x @ W.T and dy @ W have the same shape but opposite formulas.
//
// Launch geometry (grids and blocks are sized in dstbench/kernels/cuda/launches.py). Grid y
// is capped at CUDA's 65535; kernels that tile a dimension over grid y loop over the tiles
// with stride gridDim.y, so any size runs.
//   diag_fwd_small    B < 16. block DIAG_SMALL_THREADS (1-D), grid (ceil(n_out / cols),
//                     ceil(B / DIAG_SMALL_BATCH)), cols in {8, 16, 32} chosen by the launch so
//                     that small layers still fill the GPU. Thread t owns output column
//                     t % cols and the diagonals t / cols, t / cols + n_slices, ...
//                     (n_slices = DIAG_SMALL_THREADS / cols), DIAG_SMALL_BATCH batch rows each;
//                     partial sums meet in shared memory. cols consecutive threads read
//                     consecutive values[k, j] and x[b, c] (whole 32-byte sectors in float32).
//   diag_fwd_tiled    B >= 16. block (DIAG_TILE_ROWS, DIAG_TILE_GROUPS), grid
//                     (ceil(n_out / DIAG_TILE_ROWS), min(ceil(B / DIAG_TILE_BATCH), 65535)).
//                     Each thread owns one output column and DIAG_TILE_RB batch rows. The
//                     offsets are walked in windows of DIAG_SPAN: each step jumps to the window
//                     of the next unprocessed offset (empty windows cost nothing) and stages the
//                     x columns its diagonals read (DIAG_WINDOW per batch row) in shared memory,
//                     so nearby diagonals share loads. Staging wraps the column once per window
//                     and then by subtraction, with no division per element.
//   diag_fwd_staged*  B >= 16, when the x tile fits in shared memory (the launch picks the tile:
//                     BT = 4, 8, 16 or 32 batch rows, one extern "C" kernel per BT, so the
//                     accumulators stay in registers). block DIAG_STAGED_THREADS (1-D), grid
//                     (ceil(n_out / DIAG_STAGED_THREADS), min(ceil(B / BT), 65535)), dynamic shared
//                     memory BT * n_in scalars. The block copies x[b0:b0 + BT, :] into shared memory
//                     with coalesced loads (row-major, as in x); then thread t owns output column
//                     r = blockIdx.x * DIAG_STAGED_THREADS + t and all BT rows, and walks every
//                     diagonal: one value load (consecutive threads read consecutive values[k, j])
//                     and BT shared loads (consecutive threads read consecutive columns: no bank
//                     conflict) for BT FMAs. Any offset order; no window bookkeeping.
//   diag_values_grad  block (DIAG_GRAD_COLS, DIAG_GRAD_SPLIT_B), grid (ceil(D / DIAG_GRAD_COLS),
//                     min(ceil(n_diag / DIAG_GRAD_DIAGS), 65535)). Thread (tx, ty) owns entry j of
//                     DIAG_GRAD_DIAGS diagonals over the batch rows ty, ty + DIAG_GRAD_SPLIT_B, ...
//
// bias (n_out,) is added by the forward kernels when not null (nullptr: no bias).
#include "common.cuh"

#define DIAG_WINDOW (DIAG_TILE_ROWS + DIAG_SPAN - 1)
#define DIAG_TILE_BATCH (DIAG_TILE_GROUPS * DIAG_TILE_RB)
#define DIAG_SMALL_MIN_COLS 8

static_assert(DIAG_SMALL_THREADS % 32 == 0, "diag_fwd_small runs whole warps");
static_assert(DIAG_SMALL_MIN_COLS * DIAG_SMALL_BATCH <= DIAG_SMALL_THREADS,
              "diag_fwd_small finishes every (column, batch row) of a block in one pass");
static_assert((DIAG_SPAN & (DIAG_SPAN - 1)) == 0, "diag_fwd_tiled rounds offsets down to a window of DIAG_SPAN");
static_assert(DIAG_GRAD_DIAGS <= DIAG_GRAD_SPLIT_B, "diag_values_grad finishes one diagonal per warp");

// The entry of diagonal s in output column r: x column *c and position *j in values[k, :].
// False where the diagonal has no entry there (tall only). tall needs n_out >= n_in,
// !tall needs n_out <= n_in.
__device__ __forceinline__ bool diag_entry(int r, int s, int n_out, int n_in, bool tall, int* c, int* j) {
    if (tall) {
        int t = r - s;  // s < P = n_out, so t > -n_out
        if (t < 0) t += n_out;
        *c = t;
        *j = t;
        return t < n_in;
    }
    int t = r + s;  // r < n_out <= n_in and s < n_in, so t < 2 n_in
    if (t >= n_in) t -= n_in;
    *c = t;
    *j = r;
    return true;
}

// The bias of output column r as an accumulator (0 without a bias).
__device__ __forceinline__ acc_t bias_of(const scalar_t* __restrict__ bias, int r) {
    return bias ? dst::to_acc(bias[r]) : acc_t(0);
}

extern "C" __global__ void diag_fwd_small(const scalar_t* __restrict__ x, const long long* __restrict__ offsets,
                                          const scalar_t* __restrict__ values, const scalar_t* __restrict__ bias,
                                          scalar_t* __restrict__ y, int batch, int n_out, int n_in, int n_diag,
                                          int tall, int cols) {
    __shared__ acc_t partial[DIAG_SMALL_THREADS * DIAG_SMALL_BATCH];
    const int t = threadIdx.x;
    const int col = t % cols, slice = t / cols, n_slices = DIAG_SMALL_THREADS / cols;
    const int r = blockIdx.x * cols + col;
    const int b0 = blockIdx.y * DIAG_SMALL_BATCH;
    const int d = min(n_out, n_in);

    acc_t acc[DIAG_SMALL_BATCH];
#pragma unroll
    for (int bb = 0; bb < DIAG_SMALL_BATCH; ++bb) acc[bb] = 0;
    if (r < n_out) {
        for (int k = slice; k < n_diag; k += n_slices) {
            int c, j;
            if (!diag_entry(r, (int)offsets[k], n_out, n_in, tall, &c, &j)) continue;
            const acc_t v = dst::to_acc(values[(long long)k * d + j]);
#pragma unroll
            for (int bb = 0; bb < DIAG_SMALL_BATCH; ++bb)
                if (b0 + bb < batch) acc[bb] += v * dst::to_acc(x[(long long)(b0 + bb) * n_in + c]);
        }
    }
    // partial[(slice * DIAG_SMALL_BATCH + bb) * cols + col]
#pragma unroll
    for (int bb = 0; bb < DIAG_SMALL_BATCH; ++bb) partial[(slice * DIAG_SMALL_BATCH + bb) * cols + col] = acc[bb];
    __syncthreads();

    if (t < cols * DIAG_SMALL_BATCH) {  // thread t finishes column t % cols of batch row b0 + t / cols
        const int bb = t / cols, b = b0 + bb;
        if (r < n_out && b < batch) {
            acc_t sum = bias_of(bias, r);
            for (int part = 0; part < n_slices; ++part) sum += partial[(part * DIAG_SMALL_BATCH + bb) * cols + col];
            dst::store(&y[(long long)b * n_out + r], sum);
        }
    }
}

// diag_fwd_tiled's x window for output columns [r0, r0 + DIAG_TILE_ROWS) and offsets
// [s0, s0 + DIAG_SPAN): window position i holds x column (window_base + i) mod P.
__device__ __forceinline__ int window_base(int r0, int s0, bool tall) {
    return tall ? r0 - s0 - (DIAG_SPAN - 1) : r0 + s0;
}

// Window position of the entry of diagonal s0 + s_rel in column r0 + r_local.
__device__ __forceinline__ int window_pos(int r_local, int s_rel, bool tall) {
    return tall ? r_local + (DIAG_SPAN - 1 - s_rel) : r_local + s_rel;
}

extern "C" __global__ void diag_fwd_tiled(const scalar_t* __restrict__ x, const long long* __restrict__ offsets,
                                          const scalar_t* __restrict__ values, const scalar_t* __restrict__ bias,
                                          scalar_t* __restrict__ y, int batch, int n_out, int n_in, int n_diag,
                                          int tall) {
    __shared__ acc_t xs[DIAG_TILE_BATCH][DIAG_WINDOW];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int r0 = blockIdx.x * DIAG_TILE_ROWS;
    const int r = r0 + tx;
    const int rb0 = ty * DIAG_TILE_RB;  // this thread's first row in the batch tile
    const int p = max(n_out, n_in), d = min(n_out, n_in);
    const acc_t b_r = r < n_out ? bias_of(bias, r) : acc_t(0);

    for (int b0 = blockIdx.y * DIAG_TILE_BATCH; b0 < batch; b0 += gridDim.y * DIAG_TILE_BATCH) {
        acc_t acc[DIAG_TILE_RB];
#pragma unroll
        for (int rb = 0; rb < DIAG_TILE_RB; ++rb) acc[rb] = b_r;

        // Each step takes the window [s0, s0 + DIAG_SPAN) of the next unprocessed offset and the
        // diagonals [k_begin, k_end) that follow it with offsets below s0 + DIAG_SPAN. Sorted
        // offsets all lie in the window and read the staged x; an offset out of order (below s0)
        // reads x from global memory instead, so any order is correct. k_end > k_begin always.
        for (int k_begin = 0; k_begin < n_diag;) {
            const int s0 = (int)offsets[k_begin] - (int)offsets[k_begin] % DIAG_SPAN;
            int k_end = k_begin + 1;
            while (k_end < n_diag && offsets[k_end] < s0 + DIAG_SPAN) ++k_end;

            int w0 = window_base(r0, s0, tall) % p;  // the x column of window position 0
            if (w0 < 0) w0 += p;
            __syncthreads();  // the previous window is no longer read
            for (int bb = ty; bb < DIAG_TILE_BATCH; bb += DIAG_TILE_GROUPS) {
                const bool row_ok = b0 + bb < batch;
                for (int i = tx; i < DIAG_WINDOW; i += DIAG_TILE_ROWS) {
                    int c = w0 + i;
                    while (c >= p) c -= p;  // once for P >= DIAG_WINDOW
                    xs[bb][i] = (row_ok && c < n_in) ? dst::to_acc(x[(long long)(b0 + bb) * n_in + c]) : acc_t(0);
                }
            }
            __syncthreads();

            for (int k = k_begin; k < k_end; ++k) {
                const int s = (int)offsets[k];
                int c, j;
                if (r >= n_out || !diag_entry(r, s, n_out, n_in, tall, &c, &j)) continue;
                const acc_t v = dst::to_acc(values[(long long)k * d + j]);
                if (s >= s0) {
                    const int i = window_pos(tx, s - s0, tall);
#pragma unroll
                    for (int rb = 0; rb < DIAG_TILE_RB; ++rb) acc[rb] += v * xs[rb0 + rb][i];
                } else {
#pragma unroll
                    for (int rb = 0; rb < DIAG_TILE_RB; ++rb) {
                        const int b = b0 + rb0 + rb;
                        if (b < batch) acc[rb] += v * dst::to_acc(x[(long long)b * n_in + c]);
                    }
                }
            }
            k_begin = k_end;
        }

#pragma unroll
        for (int rb = 0; rb < DIAG_TILE_RB; ++rb) {
            const int b = b0 + rb0 + rb;
            if (r < n_out && b < batch) dst::store(&y[(long long)b * n_out + r], acc[rb]);
        }
    }
}

// diag_fwd_staged with BT batch rows per block (see the header).
template <int BT>
__device__ __forceinline__ void diag_fwd_staged(const scalar_t* __restrict__ x, const long long* __restrict__ offsets,
                                                const scalar_t* __restrict__ values,
                                                const scalar_t* __restrict__ bias, scalar_t* __restrict__ y,
                                                int batch, int n_out, int n_in, int n_diag, int tall) {
    DST_DYNAMIC_SHARED(smem);
    scalar_t* xs = reinterpret_cast<scalar_t*>(smem);  // xs[bb * n_in + c] = x[b0 + bb, c]
    const int r = blockIdx.x * DIAG_STAGED_THREADS + threadIdx.x;
    const int d = min(n_out, n_in);
    const acc_t b_r = r < n_out ? bias_of(bias, r) : acc_t(0);

    for (int b0 = blockIdx.y * BT; b0 < batch; b0 += gridDim.y * BT) {
        const int staged = min(BT, batch - b0) * n_in;  // rows past the batch are zero
        __syncthreads();  // the previous batch tile is no longer read
        for (int q = threadIdx.x; q < BT * n_in; q += DIAG_STAGED_THREADS) {
            if (q < staged)
                xs[q] = x[(long long)b0 * n_in + q];
            else
                dst::store(&xs[q], acc_t(0));
        }
        __syncthreads();

        acc_t acc[BT];
#pragma unroll
        for (int bb = 0; bb < BT; ++bb) acc[bb] = b_r;
        if (r < n_out) {
            for (int k = 0; k < n_diag; ++k) {
                int c, j;
                if (!diag_entry(r, (int)offsets[k], n_out, n_in, tall, &c, &j)) continue;
                const acc_t v = dst::to_acc(values[(long long)k * d + j]);
#pragma unroll
                for (int bb = 0; bb < BT; ++bb) acc[bb] += v * dst::to_acc(xs[bb * n_in + c]);
            }
        }
#pragma unroll
        for (int bb = 0; bb < BT; ++bb)
            if (r < n_out && b0 + bb < batch) dst::store(&y[(long long)(b0 + bb) * n_out + r], acc[bb]);
    }
}

#define DIAG_STAGED_ARGS                                                                                          \
    const scalar_t *__restrict__ x, const long long *__restrict__ offsets, const scalar_t *__restrict__ values, \
        const scalar_t *__restrict__ bias, scalar_t *__restrict__ y, int batch, int n_out, int n_in, int n_diag,   \
        int tall
#define DIAG_STAGED_CALL(BT) diag_fwd_staged<BT>(x, offsets, values, bias, y, batch, n_out, n_in, n_diag, tall)

extern "C" __global__ void diag_fwd_staged4(DIAG_STAGED_ARGS) { DIAG_STAGED_CALL(4); }
extern "C" __global__ void diag_fwd_staged8(DIAG_STAGED_ARGS) { DIAG_STAGED_CALL(8); }
extern "C" __global__ void diag_fwd_staged16(DIAG_STAGED_ARGS) { DIAG_STAGED_CALL(16); }
extern "C" __global__ void diag_fwd_staged32(DIAG_STAGED_ARGS) { DIAG_STAGED_CALL(32); }

// dvalues[k, j] = sum_b f[b, j] * g[b, (j + offsets[k]) % P], where f is the operand of
// width D and g the one of width P: f = x, g = dy when tall; f = dy, g = x when wide.
extern "C" __global__ void diag_values_grad(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                                            const long long* __restrict__ offsets, scalar_t* __restrict__ dvalues,
                                            int batch, int n_out, int n_in, int n_diag) {
    __shared__ acc_t partial[DIAG_GRAD_SPLIT_B][DIAG_GRAD_DIAGS][DIAG_GRAD_COLS];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const bool tall = n_out >= n_in;
    const int p = max(n_out, n_in), d = min(n_out, n_in);
    const scalar_t* f = tall ? x : dy;
    const scalar_t* g = tall ? dy : x;
    const int j = blockIdx.x * DIAG_GRAD_COLS + tx;

    for (int k0 = blockIdx.y * DIAG_GRAD_DIAGS; k0 < n_diag; k0 += gridDim.y * DIAG_GRAD_DIAGS) {
        int g_col[DIAG_GRAD_DIAGS];
        acc_t acc[DIAG_GRAD_DIAGS];
#pragma unroll
        for (int kd = 0; kd < DIAG_GRAD_DIAGS; ++kd) {
            acc[kd] = 0;
            int t = k0 + kd < n_diag ? j + (int)offsets[k0 + kd] : 0;  // j < D <= P and offset < P
            g_col[kd] = t >= p ? t - p : t;
        }
        if (j < d) {
            for (int b = ty; b < batch; b += DIAG_GRAD_SPLIT_B) {
                const acc_t fv = dst::to_acc(f[(long long)b * d + j]);
#pragma unroll
                for (int kd = 0; kd < DIAG_GRAD_DIAGS; ++kd)
                    if (k0 + kd < n_diag) acc[kd] += fv * dst::to_acc(g[(long long)b * p + g_col[kd]]);
            }
        }
        __syncthreads();  // the previous group's sums are read
#pragma unroll
        for (int kd = 0; kd < DIAG_GRAD_DIAGS; ++kd) partial[ty][kd][tx] = acc[kd];
        __syncthreads();

        const int k = k0 + ty;  // warp ty < DIAG_GRAD_DIAGS finishes diagonal k0 + ty
        if (ty < DIAG_GRAD_DIAGS && j < d && k < n_diag) {
            acc_t sum = 0;
            for (int part = 0; part < DIAG_GRAD_SPLIT_B; ++part) sum += partial[part][ty][tx];
            dst::store(&dvalues[(long long)k * d + j], sum);
        }
    }
}
