// Diagonal format (DynaDiag): y = x @ W.T and the values gradient.
//
// Geometry: P = max(out, in) candidate diagonals of length D = min(out, in).
// Entry j of diagonal s joins "short" index j with "long" index (j + s) mod P.
// A product reads x along one side and writes y along the other; when y is
// on the long side (forward with out >= in, or the input gradient with
// out < in) the call is "dst_long", else "dst_short".
//
// diag_mm, batches of 1-2 rows (diag_mm_runs): per diagonal and batch row, a
// plain multiply-add along the diagonal's (at most two) contiguous runs, so the
// values stream once, prefetched ahead; each thread owns a contiguous share of
// the diagonals and a private accumulator row, summed at the end.
//
// diag_mm, medium batches (diag_mm_tiles): the output is cut into tiles of TW = 2 SIMD vectors x NB batch
// rows (NB = 8 when x is the short side, 4 when it is the long one, so that NB rows of x stay in L1;
// remainders NB/2, ..., 1). A tile keeps its accumulators in registers over all diagonals that touch it;
// each diagonal costs two vector loads of values (reused NB times) and 2 NB loads of x, all contiguous
// because a diagonal is contiguous along both sides. x is read in place (float32, float64; half precision
// is converted once): only tiles that cross the wrap point or the end of the short side read small side
// copies of x and of the values at those cyclic positions (zeros where the diagonal has no entry). With
// dst_long, a tile only meets the diagonals whose offsets lie in one cyclic window, found once per call
// (SortedOffsets). Each thread takes a contiguous share of the batch rows (and, with
// more threads than blocks of rows, of the tiles), and runs its tiles in chunks of output columns, each
// over all its rows, so that the values a chunk reads stay in L2.
//
// diag_mm, large batches (diag_mm_lanes, float32 and float64 with at least LANES_MIN_VECTORS SIMD vectors
// of batch rows per thread): batch-major, like a dense GEMM's packed panels. Each thread takes a contiguous share of the
// batch rows in lane groups of 1-2 vectors (the vectors left over after an even share are shared out by
// output index), and transposes a group's rows of x into xT (source index,
// lanes), so that source index u is one aligned run of lanes, padded cyclically at the ends. A register
// block holds LANE_ROWS output indices x the group's lanes; each diagonal that touches it adds, per output
// index, a broadcast value times the xT row its diagonal reads there: the block's rows read LANE_ROWS
// consecutive xT rows, aligned, with no side copies. (The tiled kernel's x loads start at the offset of
// each diagonal, so most of them straddle two cache lines.) The diagonals go chunk by chunk of the xT rows
// they read (LANE_CHUNK_BYTES, about L1), the partial sums waiting in a per-group buffer between chunks; a
// block's diagonals in a chunk are runs of the sorted offsets (SortedOffsets, in O(1)), and those whose end
// falls inside the block (dst_long) take their values from a side copy of each diagonal around its two ends,
// zeros (or the cyclic wrap) past them, in a loop of their own (checked row by row instead, they cost 10-12%
// of b16-fc1 at batch 256). The last chunk's
// results are staged STAGE_ROWS output indices at a time and written to y through the 16 x 16 register
// transpose. The rows past the last whole vector, when they are few (LONG_MAX_TAIL, SHORT_MAX_TAIL), go to
// diag_mm_runs (dst_long) or to diag_mm_tiles with all threads sharing the tiles (dst_short) instead.
//
// The forward product takes an optional bias (null for none, and for the input gradient): it seeds the
// accumulators, so y = x @ W.T + bias is one call.
//
// diag_values_grad: dV[k, j] = sum_b S[b, j] * L[b, (j + s_k) mod P], with S
// the short-side operand and L the long-side one (padded copies). A work item
// is one tile of W entries of G = 8 diagonals: the S vector of each batch row
// is loaded once and multiplied into G accumulators.

namespace dst {

// Batches up to this size take diag_mm_runs, larger ones the register-tiled kernel ...
constexpr int64_t RUNS_MAX_BATCH = 2;
// ... or, float32 and float64 with at least this many SIMD vectors of batch rows per thread, the batch-major
// one (half precision would convert element by element in its transposes: float16 at batch 256 ran 15%
// slower than the tiles, which convert a vector at a time).
constexpr int64_t LANES_MIN_VECTORS = 2;
// The batch rows past the last whole SIMD vector of the batch-major kernel, when there are at most this many,
// go to diag_mm_runs (dst_long) or to diag_mm_tiles (dst_short) instead of a lane group of their own, which
// costs as much as a full vector of rows. Measured (2 threads, 90%, float32, ViT-B/16 linears): 5 rows
// (batch 197) took 19-46 us less per layer, 8 rows (batch 200) 39 us less with dst_short, 21 us more
// with dst_long.
constexpr int64_t LONG_MAX_TAIL = 6, SHORT_MAX_TAIL = 8;

// Position pos of the cyclic long axis, if it lies on the short side: pos mod P when < D, else -1.
inline int64_t cyc(int64_t pos, int64_t P, int64_t D) {
    int64_t m = pos % P;
    if (m < 0) m += P;
    return m < D ? m : -1;
}

// Batch blocks of nb rows, then the remainder as blocks of nb/2, nb/4, ..., 1.
inline std::vector<std::pair<int64_t, int>> row_blocks(int64_t B, int nb) {
    std::vector<std::pair<int64_t, int>> blocks;
    int64_t b = 0;
    for (; b + nb <= B; b += nb) blocks.push_back({b, nb});
    for (int n = nb / 2; n >= 1; n /= 2)
        if (B - b >= n) {
            blocks.push_back({b, n});
            b += n;
        }
    return blocks;
}

// The K offsets (in [0, P)) sorted, with what finds the ones in a cyclic interval in O(1).
struct SortedOffsets {
    std::vector<int64_t> order;  // (K,) the diagonals by ascending offset (stable)
    std::vector<int64_t> soff;   // (K,) soff[i] = off[order[i]]
    std::vector<int64_t> below;  // (P + 1,) below[p]: how many offsets are < p
    int64_t P, K;

    SortedOffsets(const int64_t* off, int64_t K_, int64_t P_) : order(K_), soff(K_), below(P_ + 1), P(P_), K(K_) {
        for (int64_t k = 0; k < K; ++k) order[k] = k;
        if (!std::is_sorted(off, off + K))
            std::stable_sort(order.begin(), order.end(), [off](int64_t a, int64_t b) { return off[a] < off[b]; });
        for (int64_t k = 0; k < K; ++k) soff[k] = off[order[k]];
        for (int64_t p = 0, k = 0; p <= P; ++p) {
            while (k < K && soff[k] < p) ++k;
            below[p] = k;
        }
    }

    // The sorted offsets in the cyclic interval [lo, lo + len), len <= P: [first, first + count), wrapping at
    // K (first may be K).
    void interval(int64_t lo, int64_t len, int64_t& first, int64_t& count) const {
        if (lo < 0 || lo >= P) {
            lo %= P;
            if (lo < 0) lo += P;
        }
        const int64_t hi = lo + len;
        first = below[lo];
        if (len <= 0)
            count = 0;
        else if (len >= P)
            count = K;
        else
            count = hi <= P ? below[hi] - below[lo] : (K - below[lo]) + below[hi - P];
    }
};

// v as type A: the storage type itself, or the accumulator type.
template <class A, class T>
inline A as(T v) {
    if constexpr (std::is_same<T, A>::value)
        return v;
    else
        return convert(v, static_cast<A*>(nullptr));
}

// Rows of dst (width n + extra.size()) from the B rows of src (row stride lds), as type A: dst[b, p] is
// src[b, p] for p < n, then src[b, extra[p - n]] (0 where that is -1).
template <class T, class A>
void copy_rows(const T* src, int64_t B, int64_t lds, int64_t n, const std::vector<int64_t>& extra, A* dst, int nt) {
    const int64_t m = int64_t(extra.size()), ld = n + m;
    const int64_t* e = extra.data();
#pragma omp parallel for num_threads(nt) schedule(static) if (B * ld > PARALLEL_MIN_WORK)
    for (int64_t b = 0; b < B; ++b) {
        const T* s = src + b * lds;
        A* d = dst + b * ld;
        for (int64_t p = 0; p < n; ++p) d[p] = as<A>(s[p]);
        for (int64_t i = 0; i < m; ++i) d[n + i] = e[i] >= 0 ? as<A>(s[e[i]]) : A{};
    }
}

// Output tiles of the large-batch kernel are TILE_VECTORS SIMD vectors wide.
constexpr int TILE_VECTORS = 2;
// Batch rows per tile: with dst_long, x is the short side, so 8 rows of it stay in L1 while the values
// stream; with dst_short, x is the long side and 4 rows are what L1 holds.
constexpr int LONG_ROWS = 8, SHORT_ROWS = 4;
// Bytes of values per chunk of output tiles (see diag_mm): a share of L2.
constexpr int64_t CHUNK_BYTES = 512 << 10;

template <class T>
struct DiagMM {
    using A = typename Acc<T>::A;
    using V = typename Acc<T>::V;
    static constexpr int W = lanes<T>(), NV = TILE_VECTORS, TW = NV * W;

    const T* v;
    const int64_t* off;     // (K,), as given
    const int64_t* soff;    // dst_long: offsets sorted ascending
    const int64_t* order;   // dst_long: soff[i] = off[order[i]]
    const int64_t* wfirst;  // dst_long: per tile, the first sorted diagonal touching it ...
    const int64_t* wcount;  // ... and how many do, cyclically
    const A* xa;     // x in the accumulator type, (B, nsrc): x itself for float32 and float64
    int64_t nsrc;
    const A* xside;  // x at the cyclic positions of vside (dst_long), [P - TW, P + TW) (dst_short): (B, lds)
    int64_t lds;
    const T* vside;  // dst_long: (K, 4 TW) values at cyclic positions [D - TW, D + TW) then [P - TW, P + TW)
    const T* vlast;  // dst_short: (K, TW) values of the last, partial tile
    const A* bvec;   // bias, zero-padded to whole tiles (zeros without a bias)
    T* y;
    int64_t ndst, P, D, K;

    template <int NB>
    void init(V (&acc)[NB][NV], int64_t t0) const {
        for (int i = 0; i < NB; ++i)
            for (int q = 0; q < NV; ++q) acc[i][q] = vload(bvec + t0 + q * W);
    }

    // acc[i] += w * x[row i, xp + ...] over the tile's NV vectors.
    template <int NB>
    static void madd(V (&acc)[NB][NV], const T* vp, const A* xp, int64_t lde) {
        V w[NV];
        for (int q = 0; q < NV; ++q) w[q] = vload(vp + q * W);
        for (int i = 0; i < NB; ++i)
            for (int q = 0; q < NV; ++q) acc[i][q] += w[q] * vload(xp + i * lde + q * W);
    }

    template <int NB>
    void store(const V (&acc)[NB][NV], int64_t b0, int64_t t0) const {
        for (int q = 0; q < NV; ++q) {
            const int64_t n = std::min<int64_t>(W, ndst - t0 - q * W);
            if (n <= 0) break;
            for (int i = 0; i < NB; ++i) vstore(y + (b0 + i) * ndst + t0 + q * W, acc[i][q], int(n));
        }
    }

    template <int NB>
    void tile_long(int64_t b0, int64_t t) const {
        const int64_t t0 = t * TW;
        V acc[NB][NV];
        init(acc, t0);
        int64_t idx = wfirst[t];
        const int64_t count = wcount[t];
        const A* xb = xa + b0 * nsrc;
        const A* sb = xside + b0 * lds;
        for (int64_t n = 0; n < count; ++n, ++idx) {
            if (idx == K) idx = 0;
            int64_t j0 = t0 - soff[idx];
            if (j0 < 0) j0 += P;
            const int64_t k = order[idx];
            if (j0 + TW <= D) {
                madd(acc, v + k * D + j0, xb + j0, nsrc);
            } else if (j0 < D) {  // crosses the end of the short side
                const int64_t i0 = j0 - D + TW;
                madd(acc, vside + k * 4 * TW + i0, sb + i0, lds);
            } else {  // starts before the wrap point
                const int64_t i0 = j0 - P + TW;
                madd(acc, vside + k * 4 * TW + 2 * TW + i0, sb + 2 * TW + i0, lds);
            }
        }
        store(acc, b0, t0);
    }

    template <int NB>
    void tile_short(int64_t b0, int64_t t) const {
        const int64_t t0 = t * TW;
        V acc[NB][NV];
        init(acc, t0);
        const A* xb = xa + b0 * nsrc;
        const A* sb = xside + b0 * lds;
        const int64_t* o = off;
        const int64_t n = K, p = P, ld = nsrc, ls = lds;
        const T* vp = t0 + TW <= D ? v + t0 : vlast;  // the last, partial tile reads vlast
        const int64_t vs = t0 + TW <= D ? D : TW;
        for (int64_t k = 0; k < n; ++k, vp += vs) {
            int64_t u0 = t0 + o[k];
            if (u0 >= p) u0 -= p;
            if (u0 + TW <= p)
                madd(acc, vp, xb + u0, ld);
            else  // crosses the wrap point
                madd(acc, vp, sb + (u0 - p + TW), ls);
        }
        store(acc, b0, t0);
    }

    template <int NB>
    void tile(bool dst_long, int64_t b0, int64_t t) const {
        if (dst_long)
            tile_long<NB>(b0, t);
        else
            tile_short<NB>(b0, t);
    }
};

// Bytes ahead of the current position at which the small-batch kernel prefetches the values: far enough
// to cover a memory latency when the weights are not in any cache (the cold case), near enough to stay
// within the thread's own stretch of values.
constexpr int64_t PREFETCH_BYTES = 8192;

// acc[i] += v[i] * x[i] for i < n: one contiguous run of a diagonal, a vector at a time (explicit vector
// loads, so that bfloat16 and float16 convert a vector at a time too); the values 512 and PREFETCH_BYTES
// bytes ahead are requested.
template <class T, class A>
inline void axpy(A* __restrict acc, const T* __restrict v, const T* __restrict x, int64_t n) {
    using V = typename Acc<T>::V;
    constexpr int64_t W = lanes<T>(), AHEAD = PREFETCH_BYTES / sizeof(T), NEAR = 512 / sizeof(T);
    int64_t i = 0;
    for (; i + W <= n; i += W) {
        __builtin_prefetch(v + i + NEAR);
        __builtin_prefetch(v + i + AHEAD, 0, 1);
        const V a = vload(acc + i) + vload(v + i) * vload(x + i);
        std::memcpy(acc + i, &a, sizeof a);
    }
    for (; i < n; ++i) acc[i] += to_acc(v[i]) * to_acc(x[i]);
}

// Small batches: for each diagonal and batch row (the diagonal's values read once for all rows),
// acc[t] += v[j] * x[u] along the diagonal, in at most two contiguous runs (split at the wrap point). Each
// thread takes a contiguous share of the diagonals, so it streams one stretch of the values front to back
// (what the hardware prefetchers follow best when the weights come from memory), into private accumulator
// rows of all ndst columns; the shares are then summed, with the bias, column range by column range.
template <class T>
int diag_mm_runs(const T* x, const int64_t* off, const T* v, const T* bias, T* y, int64_t B, int64_t nsrc,
                 int64_t ndst, int64_t K, bool dst_long, int nt) {
    using A = typename Acc<T>::A;
    const int64_t P = std::max(nsrc, ndst), D = std::min(nsrc, ndst);
    const int parts = B * K * D > PARALLEL_MIN_WORK ? std::max(1, std::min<int>(nt, int(K))) : 1;
    Scratch<A> acc(int64_t(parts) * B * ndst);
    if (!acc.ok()) return NO_MEMORY;
#pragma omp parallel num_threads(parts)
    {
        const int64_t p = omp_get_thread_num(), np = omp_get_num_threads();
        const int64_t k0 = K * p / np, k1 = K * (p + 1) / np;
        std::memset(static_cast<void*>(acc.p + p * B * ndst), 0, B * ndst * sizeof(A));
        for (int64_t k = k0; k < k1; ++k) {
            const int64_t s = off[k];
            const T* vk = v + k * D;
            for (int64_t b = 0; b < B; ++b) {
                const T* xb = x + b * nsrc;
                A* ab = acc.p + (p * B + b) * ndst;
                if (dst_long) {  // t = j + s, or j + s - P past the wrap; x and v at j
                    const int64_t n1 = std::min(D, P - s);
                    axpy(ab + s, vk, xb, n1);
                    axpy(ab, vk + n1, xb + n1, D - n1);
                } else {  // t = j; x at j + s, or j + s - P past the wrap
                    const int64_t n1 = std::min(D, P - s);
                    axpy(ab, vk, xb + s, n1);
                    axpy(ab + n1, vk + n1, xb, D - n1);
                }
            }
        }
#pragma omp barrier
        const int64_t ta = ndst * p / np, tb = ndst * (p + 1) / np;
        for (int64_t b = 0; b < B; ++b) sum_shares(acc.p + b * ndst, B * ndst, int(np), bias, y + b * ndst, ta, tb);
    }
    return OK;
}

template <class T>
int diag_mm_tiles(const T* x, const int64_t* off, const T* v, const T* bias, T* y, int64_t B, int64_t nsrc,
                  int64_t ndst, int64_t K, bool dst_long, int nt, bool share_tiles = false) {
    using A = typename Acc<T>::A;
    const int64_t P = std::max(nsrc, ndst), D = std::min(nsrc, ndst);
    DiagMM<T> m{};
    constexpr int TW = DiagMM<T>::TW;
    m.v = v;
    m.off = off;
    m.y = y;
    m.ndst = ndst;
    m.P = P;
    m.D = D;
    m.K = K;
    const int64_t ntiles = ceil_div(ndst, TW);
    std::vector<int64_t> side, wfirst, wcount;
    std::vector<T> vside, vlast;
    std::optional<SortedOffsets> so;
    if (dst_long) {  // x is the short side (width D)
        so.emplace(off, K, P);
        for (int64_t i = 0; i < 2 * TW; ++i) side.push_back(cyc(D - TW + i, P, D));
        for (int64_t i = 0; i < 2 * TW; ++i) side.push_back(cyc(P - TW + i, P, D));
        vside.resize(K * 4 * TW);
        copy_rows(v, K, D, 0, side, vside.data(), nt);
        m.order = so->order.data();
        m.soff = so->soff.data();
        m.vside = vside.data();
        wfirst.resize(ntiles);
        wcount.resize(ntiles);
        // the tile at t0 meets the diagonals with j0 = t0 - s in (-TW, D), cyclically
        for (int64_t t = 0; t < ntiles; ++t) so->interval(t * TW - D + 1, std::min(P, D + TW - 1), wfirst[t], wcount[t]);
        m.wfirst = wfirst.data();
        m.wcount = wcount.data();
    } else {  // x is the long side (width P)
        for (int64_t i = 0; i < 2 * TW; ++i) side.push_back(cyc(P - TW + i, P, P));
        const int64_t last = (D - 1) / TW * TW;
        if (last + TW > D) {
            std::vector<int64_t> cols(TW);
            for (int64_t i = 0; i < TW; ++i) cols[i] = last + i < D ? last + i : -1;
            vlast.resize(K * TW);
            copy_rows(v, K, D, 0, cols, vlast.data(), nt);
        }
        m.vlast = vlast.data();
    }
    constexpr bool SAME = std::is_same<T, A>::value;
    m.nsrc = nsrc;
    m.lds = int64_t(side.size());
    Scratch<A> xconv(SAME ? 0 : B * nsrc), xside(B * m.lds), bvec(ntiles * TW, true);
    if (!xconv.ok() || !xside.ok() || !bvec.ok()) return NO_MEMORY;
    for (int64_t t = 0; bias && t < ndst; ++t) bvec.p[t] = to_acc(bias[t]);
    m.bvec = bvec.p;
    if constexpr (SAME) {
        m.xa = x;
    } else {
        copy_rows(x, B, nsrc, nsrc, {}, xconv.p, nt);
        m.xa = xconv.p;
    }
    copy_rows(x, B, nsrc, 0, side, xside.p, nt);
    m.xside = xside.p;

    const auto blocks = row_blocks(B, dst_long ? LONG_ROWS : SHORT_ROWS);
    const int64_t nblocks = int64_t(blocks.size());
    // A chunk of C output tiles runs over all of a thread's batch blocks before the next chunk: the values
    // it reads (about K x C x TW) stay in L2 meanwhile.
    const int64_t C = std::max<int64_t>(1, CHUNK_BYTES / (K * TW * int64_t(sizeof(T))));
    const int64_t work = B * K * D;
#pragma omp parallel num_threads(nt) if (work > PARALLEL_MIN_WORK)
    {
        // Rows first: the threads form ng = min(threads, blocks) groups, each with a contiguous share of the
        // batch blocks (the rows that torch's row-parallel ops before and after give the same thread, so x
        // and y stay in its caches); the threads of a group share out its tiles. share_tiles: one group (a
        // few rows, which would otherwise split unevenly, 4 + 1).
        const int64_t p = omp_get_thread_num(), np = omp_get_num_threads();
        const int64_t ng = share_tiles ? 1 : std::min(np, nblocks);
        const int64_t g = p * ng / np, q0 = (g * np + ng - 1) / ng, q1 = ((g + 1) * np + ng - 1) / ng;
        const int64_t b0 = g * nblocks / ng, b1 = (g + 1) * nblocks / ng;
        const int64_t ta = (p - q0) * ntiles / (q1 - q0), tb = (p - q0 + 1) * ntiles / (q1 - q0);
        for (int64_t c0 = ta; c0 < tb; c0 += C)
            for (int64_t bi = b0; bi < b1; ++bi)
                for (int64_t t = c0; t < std::min(tb, c0 + C); ++t) {
                    const auto& blk = blocks[bi];
                    switch (blk.second) {
                        case 8: m.template tile<8>(dst_long, blk.first, t); break;
                        case 4: m.template tile<4>(dst_long, blk.first, t); break;
                        case 2: m.template tile<2>(dst_long, blk.first, t); break;
                        default: m.template tile<1>(dst_long, blk.first, t); break;
                    }
                }
    }
    return OK;
}

// Output indices per register block of the batch-major kernel, and SIMD vectors of lanes per group at most
// (run_group handles 1 and 2). A block costs, per diagonal, LANE_ROWS broadcasts and LANE_ROWS x
// LANE_VECTORS loads and FMAs; between chunks it loads and stores its LANE_ROWS x LANE_VECTORS accumulators.
// Chosen by measurement (raw kernel, b16-fc1, batch 256, 2 threads): 2 vectors x 12 rows beat 2 x 6 and the
// earlier 4 x 6 with 48 KiB chunks (1.12 against 1.33 ms; README, design).
constexpr int LANE_ROWS = 12, LANE_VECTORS = 2;
static_assert(LANE_VECTORS <= 2, "DiagLanes::run_group instantiates groups of 1 and 2 vectors");
// Bytes of xT rows per chunk of the batch-major kernel (most of a 48 KiB L1, the rest for values and
// accumulators; 32 KiB times the same, within 3%, on the ViT shapes at batch 197 and 256).
constexpr int64_t LANE_CHUNK_BYTES = 40 << 10;
// Finished output indices staged (a multiple of 16 and of LANE_ROWS) before their transposed write to y.
constexpr int STAGE_ROWS = 48;
// Values ahead of a block's own (about 3 blocks) at which each diagonal's next values are prefetched: a chunk
// walks ~K / 10 diagonals at once, more streams than the hardware prefetcher follows, so weights that are in
// no cache (a model's layers one after another) would otherwise arrive one demand miss at a time.
constexpr int64_t VALUE_PREFETCH = 32;

template <class T>
struct DiagLanes {
    using A = typename Acc<T>::A;
    using V = typename Acc<T>::V;
    static constexpr int W = lanes<T>(), RM = LANE_ROWS;
    // Values per end in a diagonal's side copy.
    static constexpr int64_t SIDE = 2 * (RM - 1);
    struct Diag {
        int64_t s;      // offset
        const T* v;     // its values (D,)
        const T* side;  // dst_long: its values at short indices [1 - RM, RM - 1), then at [D - RM + 1, D + RM - 1),
                        // cyclic on the long axis (0 off the short side): 2 SIDE
    };
    // A run [first, first + count) of the sorted diagonals, cyclic: diag holds them twice, so no run wraps.
    struct Run {
        const Diag* first;
        int64_t count;
    };

    const Diag* diag;         // (2K,) the diagonals by ascending offset, then again
    const SortedOffsets* so;  // their offsets
    const A* bvec;            // (ndst,) bias, zeros without one
    int64_t P, D, ndst;

    // The diagonals whose offsets lie in the cyclic interval [lo, lo + len).
    Run window(int64_t lo, int64_t len) const {
        int64_t first, count;
        so->interval(lo, len, first, count);
        return {diag + first, count};
    }

    // acc[i] += vp[i] * xT row i (NV vectors at xp + i NV W), i < R.
    template <int R, int NV>
    static void madd(V (&acc)[R][NV], const T* vp, const A* xp) {
        for (int i = 0; i < R; ++i) {
            const V b = splat<V>(to_acc(vp[i]));
            for (int q = 0; q < NV; ++q) acc[i][q] += b * vload(xp + (i * NV + q) * W);
        }
    }

    // Output indices [t, t + R) for the group's lanes: out = in (or the bias, in == null) + the products of the
    // diagonals in `inner` and in `ends`; in and out are (R, NV W). xt holds xT row u at u (dst_short, u in
    // [0, P + RM - 1), cyclic) or short index j at j + RM - 1 (dst_long, j in [1 - RM, D + RM - 1) on the
    // cyclic long axis, zero where that passes the short side). dst_short: output t + i reads u = t + i + s,
    // values at t + i. dst_long: it reads j = j0 + i, j0 = t - s (cyclic, in (-RM, D)), values at j; the
    // `inner` diagonals have all R rows on the short side, the `ends` ones (a block that passes an end of
    // the diagonal) read their R values from the diagonal's side copy of that end (Diag::side).
    template <bool LONG, int R, int NV>
    void block(int64_t t, Run inner, const Run (&ends)[2], const A* xt, const A* in, A* out) const {
        constexpr int64_t ld = NV * W;
        V acc[R][NV];
        for (int i = 0; i < R; ++i)
            for (int q = 0; q < NV; ++q) acc[i][q] = in ? vload(in + i * ld + q * W) : splat<V>(bvec[t + i]);
        const Diag* const stop = inner.first + inner.count;
        for (const Diag* d = inner.first; d != stop; ++d) {
            const T* vp;  // the block's values of this diagonal, and the xT rows they multiply
            const A* xp;
            if constexpr (LONG) {
                int64_t j0 = t - d->s;
                if (j0 < 0) j0 += P;
                vp = d->v + j0;
                xp = xt + (j0 + RM - 1) * ld;
            } else {
                int64_t u = t + d->s;
                if (u >= P) u -= P;
                vp = d->v + t;
                xp = xt + u * ld;
            }
            __builtin_prefetch(vp + VALUE_PREFETCH);
            madd<R, NV>(acc, vp, xp);
        }
        for (const Run& e : ends)  // their values past the diagonal's ends from its side copies
            for (const Diag* d = e.first; d != e.first + e.count; ++d) {
                int64_t j0 = t - d->s;
                if (j0 < 0) j0 += P;
                if (j0 > P - RM) j0 -= P;
                const T* vp = j0 < 0        ? d->side + (j0 + RM - 1)
                              : j0 > D - RM ? d->side + SIDE + (j0 - (D - RM + 1))
                                            : d->v + j0;
                madd<R, NV>(acc, vp, xt + (j0 + RM - 1) * ld);
            }
        for (int i = 0; i < R; ++i)
            for (int q = 0; q < NV; ++q) std::memcpy(out + i * ld + q * W, &acc[i][q], sizeof(V));
    }

    // The block of R rows at t over chunk [a, a + len) of the keys (see group).
    template <bool LONG, int NV, int R>
    void chunk_block(int64_t t, int64_t a, int64_t len, const A* xt, const A* in, A* out) const {
        Run inner, ends[2] = {{diag, 0}, {diag, 0}};
        if constexpr (LONG) {
            // Keys k = j0 + RM - 1 in [k0, k1) are the offsets s in [t + RM - k1, t + RM - k0), cyclically; a
            // block lies inside the diagonal for j0 in [0, D - R], i.e. keys [RM - 1, D - R + RM).
            const auto keys = [&](int64_t k0, int64_t k1) {
                k0 = std::max(k0, a);
                k1 = std::min(k1, a + len);
                return window(t + RM - k1, k1 - k0);
            };
            ends[0] = keys(0, RM - 1);
            inner = keys(RM - 1, D - R + RM);
            ends[1] = keys(std::max<int64_t>(RM - 1, D - R + RM), a + len);
        } else {
            inner = window(a - t, len);
        }
        block<LONG, R, NV>(t, inner, ends, xt, in, out);
    }

    template <bool LONG, int NV, int R = RM>
    void block_of(int rows, int64_t t, int64_t a, int64_t len, const A* xt, const A* in, A* out) const {
        if constexpr (R == 1)
            chunk_block<LONG, NV, 1>(t, a, len, xt, in, out);
        else if (rows == R)
            chunk_block<LONG, NV, R>(t, a, len, xt, in, out);
        else
            block_of<LONG, NV, R - 1>(rows, t, a, len, xt, in, out);
    }

    // All outputs of one lane group into y (nb, ndst), row-major, nb <= NV W batch rows. The diagonals go
    // chunk by chunk of the xT rows they read (keys: u for dst_short, j0 + RM - 1 for dst_long, of a
    // block's first output), so that the rows a chunk reads stay in L1; between chunks the partial sums
    // wait in yt (ndst, NV W), and the last chunk's are staged and written to y.
    template <bool LONG, int NV>
    void group(const A* xt, A* yt, T* y, int64_t nb, int64_t tlo, int64_t thi) const {
        constexpr int64_t ld = NV * W;
        alignas(64) A stage[STAGE_ROWS * ld];
        const int64_t keys = LONG ? std::min(P, D + RM - 1) : P;
        const int64_t C = std::max<int64_t>(RM, LANE_CHUNK_BYTES / (ld * int64_t(sizeof(A))));
        for (int64_t a = 0; a < keys; a += C) {
            const int64_t len = std::min(C, keys - a);
            const bool last = a + len == keys;
            for (int64_t t0 = tlo; t0 < thi; t0 += STAGE_ROWS) {
                const int64_t n = std::min<int64_t>(STAGE_ROWS, thi - t0);
                if (last)  // the next stage's lines of y, for writing: in a model they are in no cache
                    for (int64_t l = 0; l < nb; ++l)
                        for (int64_t c = t0 + STAGE_ROWS; c < std::min<int64_t>(thi, t0 + 2 * STAGE_ROWS); c += W)
                            __builtin_prefetch(y + l * ndst + c, 1, 3);
                for (int64_t t = t0; t < t0 + n; t += RM)
                    block_of<LONG, NV>(int(std::min<int64_t>(RM, t0 + n - t)), t, a, len, xt, a ? yt + t * ld : nullptr,
                                       last ? stage + (t - t0) * ld : yt + t * ld);
                if (last) transpose_rect(stage, ld, nullptr, y + t0, ndst, 0, n, n, 0, nb);
            }
        }
    }

    template <bool LONG>
    void run_group(int64_t nv, const A* xt, A* yt, T* y, int64_t nb, int64_t tlo, int64_t thi) const {
        switch (nv) {
            case 2: group<LONG, 2>(xt, yt, y, nb, tlo, thi); break;
            default: group<LONG, 1>(xt, yt, y, nb, tlo, thi); break;
        }
    }
};

template <class T>
int diag_mm_lanes(const T* x, const int64_t* off, const T* v, const T* bias, T* y, int64_t B, int64_t nsrc,
                  int64_t ndst, int64_t K, bool dst_long, int nt) {
    using A = typename Acc<T>::A;
    using M = DiagLanes<T>;
    constexpr int W = lanes<T>(), RM = LANE_ROWS;
    const int64_t P = std::max(nsrc, ndst), D = std::min(nsrc, ndst);
    const SortedOffsets so(off, K, P);
    // dst_long: each diagonal's values around its two ends (Diag::side); which short index (or -1, a zero) each
    // side position holds is the same for all diagonals (at).
    constexpr int64_t SIDE = M::SIDE;
    std::vector<T> sides(dst_long ? K * 2 * SIDE : 0);
    int64_t at[2 * SIDE];
    for (int64_t i = 0; i < SIDE && dst_long; ++i) {
        at[i] = cyc(1 - RM + i, P, D);
        at[SIDE + i] = cyc(D - RM + 1 + i, P, D);
    }
    std::vector<typename M::Diag> diag(2 * K);
    for (int64_t k = 0; k < 2 * K; ++k) {
        T* side = dst_long ? sides.data() + (k % K) * 2 * SIDE : nullptr;
        diag[k] = {so.soff[k % K], v + so.order[k % K] * D, side};
        for (int64_t i = 0; i < 2 * SIDE && dst_long && k < K; ++i) side[i] = at[i] >= 0 ? diag[k].v[at[i]] : T(0);
    }
    std::vector<A> bvec(ndst, A(0));
    for (int64_t t = 0; bias && t < ndst; ++t) bvec[t] = to_acc(bias[t]);
    const M m{diag.data(), &so, bvec.data(), P, D, ndst};
    // xT rows: u in [0, P + RM - 1) (dst_short), j in [1 - RM, D + RM - 1) (dst_long); see DiagLanes::block.
    const int64_t xrows = dst_long ? D + 2 * (RM - 1) : P + RM - 1, lead = dst_long ? RM - 1 : 0;
    const int64_t ldmax = LANE_VECTORS * W, nv = ceil_div(B, W), per_thread = (xrows + ndst) * ldmax;
    Scratch<A> buf(int64_t(nt) * per_thread);
    if (!buf.ok()) return NO_MEMORY;
#pragma omp parallel num_threads(nt) if (B * K * D > PARALLEL_MIN_WORK)
    {
        // Each thread owns nv / np whole vectors of batch rows, in groups of 1-2 (diag_mm gives each thread
        // >= 2); the nv % np vectors left over go in groups of their own whose output indices the threads share
        // out (in STAGE_ROWS steps), so that an odd vector (batch 197: 13) does not fall to one thread alone.
        const int64_t p = omp_get_thread_num(), np = omp_get_num_threads(), per = nv / np, left = nv - per * np;
        const int64_t own = ceil_div(per, LANE_VECTORS), tail = ceil_div(left, LANE_VECTORS);
        const int64_t stages = ceil_div(ndst, STAGE_ROWS);  // this thread's share of a left-over group's outputs:
        const int64_t share_lo = std::min(ndst, stages * p / np * STAGE_ROWS);
        const int64_t share_hi = std::min(ndst, stages * (p + 1) / np * STAGE_ROWS);
        A* xt = buf.p + p * per_thread;
        A* yt = xt + xrows * ldmax;
        for (int64_t g = 0; g < own + tail; ++g) {
            // group gi of n splitting `span` vectors from `first`: its own, or the left-over ones
            const bool mine = g < own;
            const int64_t first = mine ? per * p : per * np, span = mine ? per : left;
            const int64_t gi = mine ? g : g - own, n = mine ? own : tail;
            const int64_t g0 = first + span * gi / n, g1 = first + span * (gi + 1) / n;
            const int64_t tlo = mine ? 0 : share_lo, thi = mine ? ndst : share_hi;
            if (tlo == thi) continue;
            const int64_t ld = (g1 - g0) * W, b0 = g0 * W, nb = std::min(B, g1 * W) - b0;
            transpose_rect(x + b0 * nsrc, nsrc, nullptr, xt + lead * ld, ld, 0, nb, ld, 0, nsrc);
            for (int64_t r = 0; r < xrows; ++r) {  // the cyclic padding rows, copies of others or zeros
                const int64_t j = r - lead;
                if (j >= 0 && j < nsrc) continue;
                const int64_t pos = cyc(j, P, nsrc);
                if (pos >= 0)
                    std::memcpy(xt + r * ld, xt + (pos + lead) * ld, ld * sizeof(A));
                else
                    std::memset(xt + r * ld, 0, ld * sizeof(A));
            }
            if (dst_long)
                m.template run_group<true>(g1 - g0, xt, yt, y + b0 * ndst, nb, tlo, thi);
            else
                m.template run_group<false>(g1 - g0, xt, yt, y + b0 * ndst, nb, tlo, thi);
        }
    }
    return OK;
}

#if defined(__AVX512BF16__)
// bfloat16, batches of 1-2 rows, on the AVX512-BF16 dot product: vdpbf16ps adds to each float lane the two
// products of a pair of bfloat16 lanes, so the diagonals go two at a time, each pair's values and x
// interleaved lane by lane in registers (vpunpcklwd / vpunpckhwd), no conversion to float. Like
// diag_mm_runs, each thread takes a contiguous share of the pairs, streams their values once and adds into
// private accumulator rows, summed at the end with the bias; the rows hold 32-output blocks in the lane
// order the unpacks give (see block_slot). The instruction treats denormal bfloat16 inputs as zero and
// flushes denormal results (DAZ / FTZ), and rounds each step to nearest even.
// Where output o of a 32-output block sits in the block's accumulators: unpacking two 32-lane bfloat16
// vectors pairs, in each 128-bit lane l, elements 8l + k (low half) and 8l + 4 + k (high half), k < 4, so
// the low product's float lane 4l + k holds output 8l + k and the high product's (slots 16..31) 8l + 4 + k.
inline int64_t block_slot(int64_t o) {
    return (o & ~int64_t(31)) + ((o & 4) ? 16 : 0) + 4 * ((o & 31) >> 3) + (o & 3);
}

// Lanes i < 32 with lo <= i < hi as a mask.
inline __mmask32 lane_mask(int64_t lo, int64_t hi) {
    lo = std::max<int64_t>(lo, 0);
    hi = std::min<int64_t>(hi, 32);
    if (hi <= lo) return 0;
    const uint64_t bits = ((uint64_t(1) << hi) - 1) & ~((uint64_t(1) << lo) - 1);
    return __mmask32(bits);
}

// 32 bfloat16 lanes from p + i for the lanes in m, zeros elsewhere; the masked-off lanes are not read (the
// address may lie outside the array there, which masked loads allow).
inline __m512i load_lanes(const bf16* p, int64_t i, __mmask32 m) {
    return _mm512_maskz_loadu_epi16(m, reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(p) + i * 2));
}

// acc blocks [t0, t1) (multiples of 32) += the products of up to two diagonals: for each output t, a[t - ao]
// * xa[t - ao] for 0 <= t - ao < na, and likewise b with bo, nb (b null: none). dst_long reads x at the values'
// index (xa = xb = x); dst_short passes x shifted by each offset.
inline void pair_blocks(float* acc, int64_t t0, int64_t t1, const bf16* va, const bf16* xa, int64_t ao, int64_t na,
                        const bf16* vb, const bf16* xb, int64_t bo, int64_t nb) {
    constexpr int64_t AHEAD = PREFETCH_BYTES / 2;
    if (!vb) {  // a zero second diagonal
        vb = va;
        xb = xa;
        bo = ao;
        nb = 0;
    }
    for (int64_t t = t0; t < t1; t += 32) {
        const int64_t ia = t - ao, ib = t - bo;
        __m512i a, b, x, y;
        __builtin_prefetch(va + std::max<int64_t>(ia, 0) + AHEAD, 0, 1);
        if (ia >= 0 && ia + 32 <= na && ib >= 0 && ib + 32 <= nb) {  // both whole: plain loads
            a = _mm512_loadu_si512(va + ia);
            b = _mm512_loadu_si512(vb + ib);
            x = _mm512_loadu_si512(xa + ia);
            y = _mm512_loadu_si512(xb + ib);
        } else {
            const __mmask32 ma = lane_mask(-ia, na - ia), mb = lane_mask(-ib, nb - ib);
            a = load_lanes(va, ia, ma);
            b = load_lanes(vb, ib, mb);
            x = load_lanes(xa, ia, ma);
            y = load_lanes(xb, ib, mb);
        }
        const __m512 lo = _mm512_dpbf16_ps(_mm512_load_ps(acc + t), as_bh(_mm512_unpacklo_epi16(a, b)),
                                           as_bh(_mm512_unpacklo_epi16(x, y)));
        const __m512 hi = _mm512_dpbf16_ps(_mm512_load_ps(acc + t + 16), as_bh(_mm512_unpackhi_epi16(a, b)),
                                           as_bh(_mm512_unpackhi_epi16(x, y)));
        _mm512_store_ps(acc + t, lo);
        _mm512_store_ps(acc + t + 16, hi);
    }
}

int diag_mm_pairs(const bf16* x, const int64_t* off, const bf16* v, const bf16* bias, bf16* y, int64_t B,
                  int64_t nsrc, int64_t ndst, int64_t K, bool dst_long, int nt) {
    const int64_t P = std::max(nsrc, ndst), D = std::min(nsrc, ndst);
    // Outputs on an unwrapped axis: dst_long t = j + s in [0, P + D), folded mod P at the end; dst_short j < D.
    const int64_t lda = ceil_div(dst_long ? P + D : D, 32) * 32, npairs = ceil_div(K, 2);
    // dst_short reads x at j + s, up to P + D - 2: x extended cyclically, so no load wraps.
    const int64_t ldx = dst_long ? 0 : ceil_div(P + D + 32, 32) * 32;
    const int parts = B * K * D > PARALLEL_MIN_WORK ? std::max(1, std::min<int>(nt, int(npairs))) : 1;
    Scratch<float> acc(int64_t(parts) * B * lda, true);
    Scratch<bf16> xe(B * ldx);
    if (!acc.ok() || !xe.ok()) return NO_MEMORY;
    for (int64_t b = 0; b < B && !dst_long; ++b)
        for (int64_t u = 0; u < ldx; u += P) std::memcpy(xe.p + b * ldx + u, x + b * nsrc, std::min(P, ldx - u) * 2);
#pragma omp parallel num_threads(parts)
    {
        const int64_t p = omp_get_thread_num(), np = omp_get_num_threads();
        for (int64_t q = npairs * p / np; q < npairs * (p + 1) / np; ++q) {
            const int64_t k = 2 * q, s = off[k];
            const bool two = k + 1 < K;  // else the odd last diagonal, alone (s2 = s spans no more)
            const int64_t s2 = two ? off[k + 1] : s;
            const bf16 *va = v + k * D, *vb = two ? va + D : nullptr;
            for (int64_t b = 0; b < B; ++b) {
                float* ab = acc.p + (p * B + b) * lda;
                if (dst_long) {  // diagonal s covers t in [s, s + D), reading values and x at t - s
                    const bf16* xb = x + b * nsrc;
                    const int64_t lo = std::min(s, s2) & ~int64_t(31), hi = std::max(s, s2) + D;
                    if (!vb || hi - lo <= 2 * D) {
                        pair_blocks(ab, lo, hi, va, xb, s, D, vb, xb, s2, D);
                    } else {  // far apart: one at a time
                        pair_blocks(ab, s & ~int64_t(31), s + D, va, xb, s, D, nullptr, nullptr, 0, 0);
                        pair_blocks(ab, s2 & ~int64_t(31), s2 + D, vb, xb, s2, D, nullptr, nullptr, 0, 0);
                    }
                } else {  // output j reads values at j and x at j + s
                    const bf16* xr = xe.p + b * ldx;
                    pair_blocks(ab, 0, D, va, xr + s, 0, D, vb, xr + s2, 0, D);
                }
            }
        }
#pragma omp barrier
        const int64_t ta = ndst * p / np, tb = ndst * (p + 1) / np;
        for (int64_t b = 0; b < B; ++b)
            for (int64_t t = ta; t < tb; ++t) {
                float sum = bias ? to_acc(bias[t]) : 0.0f;
                for (int64_t q = 0; q < np; ++q) {
                    const float* ab = acc.p + (q * B + b) * lda;
                    sum += ab[block_slot(t)];
                    if (dst_long && t < D) sum += ab[block_slot(t + P)];
                }
                y[b * ndst + t] = from_acc<bf16>(sum);
            }
    }
    return OK;
}
#endif

template <class T>
int diag_mm(const T* x, const int64_t* off, const T* v, const T* bias, T* y, int64_t B, int64_t nsrc, int64_t ndst,
            int64_t K, bool dst_long, int nt) {
    const int64_t P = std::max(nsrc, ndst);
    for (int64_t k = 0; k < K; ++k)
        if (off[k] < 0 || off[k] >= P) return BAD_OFFSET;
    if (B <= RUNS_MAX_BATCH) {
#if defined(__AVX512BF16__)
        if constexpr (std::is_same<T, bf16>::value)
            return diag_mm_pairs(x, off, v, bias, y, B, nsrc, ndst, K, dst_long, nt);
#endif
        return diag_mm_runs(x, off, v, bias, y, B, nsrc, ndst, K, dst_long, nt);
    }
    if constexpr (std::is_same<T, typename Acc<T>::A>::value)
        if (ceil_div(B, lanes<T>()) >= LANES_MIN_VECTORS * nt) {
            const int64_t rest = B % lanes<T>();
            const int64_t tail = rest <= (dst_long ? LONG_MAX_TAIL : SHORT_MAX_TAIL) ? rest : 0;
            const int64_t whole = B - tail;
            const int status = diag_mm_lanes(x, off, v, bias, y, whole, nsrc, ndst, K, dst_long, nt);
            if (status != OK || tail == 0) return status;
            x += whole * nsrc;
            y += whole * ndst;
            return dst_long ? diag_mm_runs(x, off, v, bias, y, tail, nsrc, ndst, K, dst_long, nt)
                            : diag_mm_tiles(x, off, v, bias, y, tail, nsrc, ndst, K, dst_long, nt, true);
        }
    return diag_mm_tiles(x, off, v, bias, y, B, nsrc, ndst, K, dst_long, nt);
}

template <class T>
struct DiagGrad {
    using A = typename Acc<T>::A;
    using V = typename Acc<T>::V;
    static constexpr int W = lanes<T>();

    const A* se;  // short operand, (B, lds) zero-padded
    const A* le;  // long operand, (B, P + W) with cyclic padding
    int64_t lds, ldl;
    const int64_t* off;
    T* dv;
    int64_t B, P, D;

    template <int G>
    void tile(int64_t k0, int64_t t0) const {
        const A* lp[G];
        for (int g = 0; g < G; ++g) {
            int64_t u0 = t0 + off[k0 + g];
            if (u0 >= P) u0 -= P;
            lp[g] = le + u0;
        }
        V acc[G];
        for (int g = 0; g < G; ++g) acc[g] = V{};
        const A* sp = se + t0;
        for (int64_t b = 0; b < B; ++b) {
            const V s = vload(sp + b * lds);
            for (int g = 0; g < G; ++g) acc[g] += s * vload(lp[g] + b * ldl);
        }
        const int n = int(std::min<int64_t>(W, D - t0));
        for (int g = 0; g < G; ++g) vstore(dv + (k0 + g) * D + t0, acc[g], n);
    }
};

template <class T>
int diag_values_grad(const T* dy, const T* x, const int64_t* off, T* dv, int64_t B, int64_t nout, int64_t nin,
                     int64_t K, int nt) {
    using A = typename Acc<T>::A;
    constexpr int W = lanes<T>();
    const int64_t P = std::max(nout, nin), D = std::min(nout, nin);
    for (int64_t k = 0; k < K; ++k)
        if (off[k] < 0 || off[k] >= P) return BAD_OFFSET;
    const T* s = nout >= nin ? x : dy;
    const T* l = nout >= nin ? dy : x;

    DiagGrad<T> g{};
    g.lds = ceil_div(D, W) * W;
    g.ldl = P + W;
    Scratch<A> se(B * g.lds), le(B * g.ldl);
    if (!se.ok() || !le.ok()) return NO_MEMORY;
    copy_rows(s, B, D, D, std::vector<int64_t>(g.lds - D, -1), se.p, nt);
    std::vector<int64_t> wrap(W);
    for (int64_t i = 0; i < W; ++i) wrap[i] = i % P;
    copy_rows(l, B, P, P, wrap, le.p, nt);
    g.se = se.p;
    g.le = le.p;
    g.off = off;
    g.dv = dv;
    g.B = B;
    g.P = P;
    g.D = D;

    const auto groups = row_blocks(K, 8);  // groups of 8, 4, 2, 1 diagonals
    const int64_t ntiles = ceil_div(D, W), nitems = int64_t(groups.size()) * ntiles;
#pragma omp parallel for num_threads(nt) schedule(static) if (B * K * D > PARALLEL_MIN_WORK)
    for (int64_t item = 0; item < nitems; ++item) {
        const auto& grp = groups[item % groups.size()];
        const int64_t t0 = (item / groups.size()) * W;
        switch (grp.second) {
            case 8: g.template tile<8>(grp.first, t0); break;
            case 4: g.template tile<4>(grp.first, t0); break;
            case 2: g.template tile<2>(grp.first, t0); break;
            default: g.template tile<1>(grp.first, t0); break;
        }
    }
    return OK;
}

}  // namespace dst

#define DST_DIAG_ENTRY(SUFFIX, T)                                                                              \
    extern "C" int dst_diag_mm_##SUFFIX(const void* x, const int64_t* off, const void* v, const void* bias,      \
                                        void* y, int64_t B, int64_t nsrc, int64_t ndst, int64_t K, int dst_long,  \
                                        int nt) {                                                              \
        try {                                                                                                  \
            return dst::diag_mm(static_cast<const T*>(x), off, static_cast<const T*>(v),                       \
                                static_cast<const T*>(bias), static_cast<T*>(y), B, nsrc, ndst, K, dst_long != 0, \
                                nt);                                                                           \
        } catch (const std::bad_alloc&) {                                                                      \
            return dst::NO_MEMORY;                                                                             \
        }                                                                                                      \
    }                                                                                                          \
    extern "C" int dst_diag_values_grad_##SUFFIX(const void* dy, const void* x, const int64_t* off, void* dv,   \
                                                 int64_t B, int64_t nout, int64_t nin, int64_t K, int nt) {    \
        try {                                                                                                  \
            return dst::diag_values_grad(static_cast<const T*>(dy), static_cast<const T*>(x), off,             \
                                         static_cast<T*>(dv), B, nout, nin, K, nt);                            \
        } catch (const std::bad_alloc&) {                                                                      \
            return dst::NO_MEMORY;                                                                             \
        }                                                                                                      \
    }

DST_DIAG_ENTRY(f32, float)
DST_DIAG_ENTRY(f64, double)
DST_DIAG_ENTRY(bf16, dst::bf16)
#if DST_HAVE_F16
DST_DIAG_ENTRY(f16, dst::f16)
#endif
