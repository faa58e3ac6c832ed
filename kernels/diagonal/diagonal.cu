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
// Launch geometry (grids and blocks are sized in dstbench/kernels/cuda/launches.py):
//   diag_fwd_small    B < 16. block (DIAG_ROWS, DIAG_SPLIT_K), grid (ceil(n_out / DIAG_ROWS),
//                     ceil(B / DIAG_SMALL_BATCH)). A warp owns DIAG_ROWS consecutive output
//                     columns; warp ty takes diagonals ty, ty + DIAG_SPLIT_K, ...; partial sums
//                     meet in shared memory. Consecutive threads read consecutive values[k, j]
//                     and x[b, c], so every load is coalesced (up to the wrap-around).
//   diag_fwd_tiled    B >= 16. block (DIAG_TILE_ROWS, DIAG_TILE_GROUPS), grid
//                     (ceil(n_out / DIAG_TILE_ROWS), ceil(B / (DIAG_TILE_GROUPS * DIAG_TILE_RB))).
//                     Each thread owns one output column and DIAG_TILE_RB batch rows. Offsets
//                     are walked in ranges of DIAG_SPAN; for each non-empty range the block
//                     stages the window of x those diagonals read (DIAG_TILE_ROWS + DIAG_SPAN - 1
//                     columns per batch row) in shared memory, so nearby diagonals share loads.
//   diag_values_grad  block (DIAG_GRAD_COLS, DIAG_GRAD_SPLIT_B), grid (ceil(D / DIAG_GRAD_COLS),
//                     ceil(n_diag / DIAG_GRAD_DIAGS)). Thread (tx, ty) owns entry j of
//                     DIAG_GRAD_DIAGS diagonals over the batch rows ty, ty + DIAG_GRAD_SPLIT_B, ...
#include "common.cuh"

#define DIAG_WINDOW (DIAG_TILE_ROWS + DIAG_SPAN - 1)
#define DIAG_TILE_BATCH (DIAG_TILE_GROUPS * DIAG_TILE_RB)

static_assert(DIAG_SMALL_BATCH <= DIAG_SPLIT_K, "diag_fwd_small finishes one batch row per warp");
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

// diag_fwd_tiled's x window for output columns [r0, r0 + DIAG_TILE_ROWS) and offsets
// [s0, s0 + DIAG_SPAN): window position i holds x column wrap(window_base + i, P).
__device__ __forceinline__ long long window_base(int r0, int s0, bool tall) {
    return tall ? (long long)r0 - s0 - (DIAG_SPAN - 1) : (long long)r0 + s0;
}

// Window position of the entry of diagonal s0 + s_rel in column r0 + r_local.
__device__ __forceinline__ int window_pos(int r_local, int s_rel, bool tall) {
    return tall ? r_local + (DIAG_SPAN - 1 - s_rel) : r_local + s_rel;
}

extern "C" __global__ void diag_fwd_small(const scalar_t* __restrict__ x, const long long* __restrict__ offsets,
                                          const scalar_t* __restrict__ values, scalar_t* __restrict__ y,
                                          int batch, int n_out, int n_in, int n_diag, int tall) {
    __shared__ acc_t partial[DIAG_SPLIT_K][DIAG_SMALL_BATCH][DIAG_ROWS];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int r = blockIdx.x * DIAG_ROWS + tx;
    const int b0 = blockIdx.y * DIAG_SMALL_BATCH;
    const int d = min(n_out, n_in);

    acc_t acc[DIAG_SMALL_BATCH];
#pragma unroll
    for (int bb = 0; bb < DIAG_SMALL_BATCH; ++bb) acc[bb] = 0;
    if (r < n_out) {
        for (int k = ty; k < n_diag; k += DIAG_SPLIT_K) {
            int c, j;
            if (!diag_entry(r, (int)offsets[k], n_out, n_in, tall, &c, &j)) continue;
            const acc_t v = dst::to_acc(values[(long long)k * d + j]);
#pragma unroll
            for (int bb = 0; bb < DIAG_SMALL_BATCH; ++bb)
                if (b0 + bb < batch) acc[bb] += v * dst::to_acc(x[(long long)(b0 + bb) * n_in + c]);
        }
    }
#pragma unroll
    for (int bb = 0; bb < DIAG_SMALL_BATCH; ++bb) partial[ty][bb][tx] = acc[bb];
    __syncthreads();

    const int b = b0 + ty;  // warp ty < DIAG_SMALL_BATCH finishes batch row b0 + ty
    if (ty < DIAG_SMALL_BATCH && r < n_out && b < batch) {
        acc_t sum = 0;
        for (int part = 0; part < DIAG_SPLIT_K; ++part) sum += partial[part][ty][tx];
        dst::store(&y[(long long)b * n_out + r], sum);
    }
}

extern "C" __global__ void diag_fwd_tiled(const scalar_t* __restrict__ x, const long long* __restrict__ offsets,
                                          const scalar_t* __restrict__ values, scalar_t* __restrict__ y,
                                          int batch, int n_out, int n_in, int n_diag, int tall) {
    __shared__ acc_t xs[DIAG_TILE_BATCH][DIAG_WINDOW];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int tid = ty * DIAG_TILE_ROWS + tx;
    const int r0 = blockIdx.x * DIAG_TILE_ROWS;
    const int r = r0 + tx;
    const int b0 = blockIdx.y * DIAG_TILE_BATCH;
    const int rb0 = ty * DIAG_TILE_RB;  // this thread's first row in the batch tile
    const int p = max(n_out, n_in), d = min(n_out, n_in);

    acc_t acc[DIAG_TILE_RB];
#pragma unroll
    for (int rb = 0; rb < DIAG_TILE_RB; ++rb) acc[rb] = 0;

    // Diagonals [k_begin, k_end) are the next ones whose offsets fall below s0 + DIAG_SPAN.
    // Sorted offsets all lie in [s0, s0 + DIAG_SPAN) and read the staged window; an offset
    // out of order (below s0) reads x from global memory instead, so any order is correct.
    int k_begin = 0;
    for (int s0 = 0; s0 < p && k_begin < n_diag; s0 += DIAG_SPAN) {
        int k_end = k_begin;
        while (k_end < n_diag && offsets[k_end] < s0 + DIAG_SPAN) ++k_end;
        if (k_end == k_begin) continue;  // uniform across the block

        const long long base = window_base(r0, s0, tall);
        __syncthreads();  // the previous window is no longer read
        for (int e = tid; e < DIAG_TILE_BATCH * DIAG_WINDOW; e += DIAG_TILE_ROWS * DIAG_TILE_GROUPS) {
            const int bb = e / DIAG_WINDOW, i = e % DIAG_WINDOW;
            const long long c = dst::wrap(base + i, p);
            xs[bb][i] = (b0 + bb < batch && c < n_in) ? dst::to_acc(x[(long long)(b0 + bb) * n_in + c]) : acc_t(0);
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
    const int k0 = blockIdx.y * DIAG_GRAD_DIAGS;

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
