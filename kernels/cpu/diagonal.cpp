// Diagonal format (DynaDiag): y = x @ W.T and the values gradient.
//
// Geometry: P = max(out, in) candidate diagonals of length D = min(out, in).
// Entry j of diagonal s joins "short" index j with "long" index (j + s) mod P.
// A product reads x along one side and writes y along the other; when y is
// on the long side (forward with out >= in, or the input gradient with
// out < in) the call is "dst_long", else "dst_short".
//
// diag_mm, batches of 1-2 rows (diag_mm_runs): per batch row and diagonal, a
// plain multiply-add along the diagonal's (at most two) contiguous runs, so the
// values stream once, prefetched ahead; each thread owns a contiguous share of
// the diagonals and a private accumulator row, summed at the end.
//
// diag_mm, larger batches: the output is cut into tiles of W lanes (one SIMD
// vector) x NB batch rows (NB = 8, remainders 4/2/1). A tile keeps its NB accumulators in
// registers over all diagonals that touch it; each diagonal costs one vector
// load of values (reused NB times) and NB loads of x, all contiguous because
// a diagonal is contiguous along both sides. x is first copied, padded, into
// xe so that tiles crossing the wrap point or the end of the short side read
// plain contiguous memory (zeros where the diagonal has no entry). With
// dst_long, a tile only meets the diagonals whose offsets lie in one cyclic
// window; they are found by binary search over the sorted offsets.
//
// The forward product takes an optional bias (null for none, and for the input gradient): it seeds the
// accumulators, so y = x @ W.T + bias is one call.
//
// diag_values_grad: dV[k, j] = sum_b S[b, j] * L[b, (j + s_k) mod P], with S
// the short-side operand and L the long-side one (padded copies). A work item
// is one tile of W entries of G = 8 diagonals: the S vector of each batch row
// is loaded once and multiplied into G accumulators.

namespace dst {

// Batches up to this size take diag_mm_runs, larger ones the register-tiled kernel.
constexpr int64_t RUNS_MAX_BATCH = 2;

// Position pos of the cyclic long axis, if it lies on the short side: pos mod P when < D, else -1.
inline int64_t cyc(int64_t pos, int64_t P, int64_t D) {
    int64_t m = pos % P;
    if (m < 0) m += P;
    return m < D ? m : -1;
}

// Batch blocks of 8 rows, then the remainder as blocks of 4, 2, 1.
inline std::vector<std::pair<int64_t, int>> row_blocks(int64_t B) {
    std::vector<std::pair<int64_t, int>> blocks;
    int64_t b = 0;
    for (; b + 8 <= B; b += 8) blocks.push_back({b, 8});
    for (int nb : {4, 2, 1})
        if (B - b >= nb) {
            blocks.push_back({b, nb});
            b += nb;
        }
    return blocks;
}

// Copy rows of src (width n) into dst (width ld >= n), converting to A; dst[b, p] for p >= n
// comes from src column extra[p - n] (or 0 where that is -1).
template <class T, class A>
void pad_rows(const T* src, int64_t B, int64_t n, A* dst, int64_t ld, const std::vector<int64_t>& extra, int nt) {
#pragma omp parallel for num_threads(nt) schedule(static) if (B * ld > 4 * PARALLEL_MIN_WORK)
    for (int64_t b = 0; b < B; ++b) {
        const T* s = src + b * n;
        A* d = dst + b * ld;
        for (int64_t p = 0; p < n; ++p) d[p] = convert(s[p], static_cast<A*>(nullptr));
        for (int64_t p = n; p < ld; ++p) {
            const int64_t c = extra[p - n];
            d[p] = c >= 0 ? convert(s[c], static_cast<A*>(nullptr)) : A(0);
        }
    }
}

template <class T>
struct DiagMM {
    using A = typename Acc<T>::A;
    using V = typename Acc<T>::V;
    static constexpr int W = lanes<T>();

    const T* v;
    const int64_t* off;    // (K,), as given
    const int64_t* soff;   // dst_long: offsets sorted ascending
    const int64_t* order;  // dst_long: soff[i] = off[order[i]]
    const A* xe;           // padded x, (B, lde)
    int64_t lde;
    const T* vtail;  // dst_long: (K, 2W) values at cyclic positions [D - W, D + W)
    const T* vwrap;  // dst_long: (K, 2W) values at cyclic positions [P - W, P + W)
    const T* vlast;  // dst_short: (K, W) values of the last, partial tile
    const A* bvec;  // bias, zero-padded to whole tiles (zeros without a bias)
    T* y;
    int64_t ndst, P, D, K;

    // dst_long: the sorted-offset range (first, count, cyclic) of diagonals touching tile t0.
    void window(int64_t t0, int64_t& first, int64_t& count) const {
        if (D + W - 1 >= P) {
            first = 0;
            count = K;
            return;
        }
        int64_t lo = t0 - D + 1;
        if (lo < 0) lo += P;
        const int64_t hi = lo + D + W - 2;  // inclusive, may pass P
        first = std::lower_bound(soff, soff + K, lo) - soff;
        if (hi < P)
            count = (std::lower_bound(soff, soff + K, hi + 1) - soff) - first;
        else
            count = (K - first) + (std::lower_bound(soff, soff + K, hi - P + 1) - soff);
    }

    template <int NB>
    void tile_long(int64_t b0, int64_t t0) const {
        V acc[NB];
        for (int i = 0; i < NB; ++i) acc[i] = vload(bvec + t0);
        int64_t idx, count;
        window(t0, idx, count);
        const A* xb = xe + b0 * lde;
        for (int64_t n = 0; n < count; ++n, ++idx) {
            if (idx == K) idx = 0;
            const int64_t k = order[idx];
            int64_t j0 = t0 - soff[idx];
            if (j0 < 0) j0 += P;
            const T* vp;
            int64_t xo = j0;
            if (j0 + W <= D) {
                vp = v + k * D + j0;
            } else if (j0 < D) {
                vp = vtail + k * 2 * W + (j0 - D + W);
            } else {
                vp = vwrap + k * 2 * W + (j0 - P + W);
                xo = D + W + (j0 - P + W);
            }
            const V w = vload(vp);
            const A* xp = xb + xo;
            for (int i = 0; i < NB; ++i) acc[i] += w * vload(xp + i * lde);
        }
        const int n = int(std::min<int64_t>(W, ndst - t0));
        for (int i = 0; i < NB; ++i) vstore(y + (b0 + i) * ndst + t0, acc[i], n);
    }

    template <int NB>
    void tile_short(int64_t b0, int64_t t0) const {
        V acc[NB];
        for (int i = 0; i < NB; ++i) acc[i] = vload(bvec + t0);
        const bool full = t0 + W <= D;
        const A* xb = xe + b0 * lde;
        for (int64_t k = 0; k < K; ++k) {
            int64_t u0 = t0 + off[k];
            if (u0 >= P) u0 -= P;
            const V w = vload(full ? v + k * D + t0 : vlast + k * W);
            const A* xp = xb + u0;
            for (int i = 0; i < NB; ++i) acc[i] += w * vload(xp + i * lde);
        }
        const int n = int(std::min<int64_t>(W, ndst - t0));
        for (int i = 0; i < NB; ++i) vstore(y + (b0 + i) * ndst + t0, acc[i], n);
    }

    template <int NB>
    void tile(bool dst_long, int64_t b0, int64_t t0) const {
        if (dst_long)
            tile_long<NB>(b0, t0);
        else
            tile_short<NB>(b0, t0);
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

// Small batches: for each batch row and diagonal, acc[t] += v[j] * x[u] along the diagonal, in at most
// two contiguous runs (split at the wrap point). Each thread takes a contiguous share of the diagonals,
// so it streams one stretch of the values front to back (what the hardware prefetchers follow best when
// the weights come from memory), into a private accumulator row of all ndst columns; the shares are then
// summed, with the bias, column range by column range.
template <class T>
int diag_mm_runs(const T* x, const int64_t* off, const T* v, const T* bias, T* y, int64_t B, int64_t nsrc,
                 int64_t ndst, int64_t K, bool dst_long, int nt) {
    using A = typename Acc<T>::A;
    const int64_t P = std::max(nsrc, ndst), D = std::min(nsrc, ndst);
    const int parts = B * K * D > PARALLEL_MIN_WORK ? std::max(1, std::min<int>(nt, int(K))) : 1;
    Scratch<A> acc(int64_t(parts) * B * ndst, true);
    if (!acc.ok()) return NO_MEMORY;
#pragma omp parallel num_threads(parts)
    {
        const int64_t p = omp_get_thread_num(), np = omp_get_num_threads();
        const int64_t k0 = K * p / np, k1 = K * (p + 1) / np;
        for (int64_t b = 0; b < B; ++b) {
            const T* xb = x + b * nsrc;
            A* ab = acc.p + (p * B + b) * ndst;
            for (int64_t k = k0; k < k1; ++k) {
                const int64_t s = off[k];
                const T* vk = v + k * D;
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
        for (int64_t b = 0; b < B; ++b) {
            T* yb = y + b * ndst;
            for (int64_t t = ta; t < tb; ++t) {
                A sum = bias ? to_acc(bias[t]) : A(0);
                for (int64_t q = 0; q < np; ++q) sum += acc.p[(q * B + b) * ndst + t];
                yb[t] = from_acc<T>(sum);
            }
        }
    }
    return OK;
}

template <class T>
int diag_mm(const T* x, const int64_t* off, const T* v, const T* bias, T* y, int64_t B, int64_t nsrc, int64_t ndst,
            int64_t K, bool dst_long, int nt) {
    using A = typename Acc<T>::A;
    constexpr int W = lanes<T>();
    const int64_t P = std::max(nsrc, ndst), D = std::min(nsrc, ndst);
    for (int64_t k = 0; k < K; ++k)
        if (off[k] < 0 || off[k] >= P) return BAD_OFFSET;
    if (B <= RUNS_MAX_BATCH) {
        return diag_mm_runs(x, off, v, bias, y, B, nsrc, ndst, K, dst_long, nt);
    }

    DiagMM<T> m{};
    m.v = v;
    m.off = off;
    m.y = y;
    m.ndst = ndst;
    m.P = P;
    m.D = D;
    m.K = K;
    std::vector<int64_t> extra, order(dst_long ? K : 0), soff(dst_long ? K : 0);
    std::vector<T> vtail, vwrap, vlast;
    if (dst_long) {  // x is the short side (width D)
        m.lde = D + 3 * W;
        for (int64_t p = D; p < D + W; ++p) extra.push_back(cyc(p, P, D));
        for (int64_t i = 0; i < 2 * W; ++i) extra.push_back(cyc(P - W + i, P, D));
        for (int64_t k = 0; k < K; ++k) order[k] = k;
        if (!std::is_sorted(off, off + K))
            std::stable_sort(order.begin(), order.end(), [off](int64_t a, int64_t b) { return off[a] < off[b]; });
        for (int64_t k = 0; k < K; ++k) soff[k] = off[order[k]];
        vtail.resize(K * 2 * W);
        vwrap.resize(K * 2 * W);
        for (int64_t i = 0; i < 2 * W; ++i) {
            const int64_t ct = cyc(D - W + i, P, D), cw = cyc(P - W + i, P, D);
            for (int64_t k = 0; k < K; ++k) {
                vtail[k * 2 * W + i] = ct >= 0 ? v[k * D + ct] : T{};
                vwrap[k * 2 * W + i] = cw >= 0 ? v[k * D + cw] : T{};
            }
        }
        m.order = order.data();
        m.soff = soff.data();
        m.vtail = vtail.data();
        m.vwrap = vwrap.data();
    } else {  // x is the long side (width P)
        m.lde = P + W;
        for (int64_t i = 0; i < W; ++i) extra.push_back(i % P);
        const int64_t last = (D - 1) / W * W;
        if (last + W > D) {
            vlast.resize(K * W);
            for (int64_t k = 0; k < K; ++k)
                for (int64_t i = 0; i < W; ++i) vlast[k * W + i] = last + i < D ? v[k * D + last + i] : T{};
        }
        m.vlast = vlast.data();
    }
    const int64_t ntiles = ceil_div(ndst, W);
    Scratch<A> xe(B * m.lde), bvec(ntiles * W, true);
    if (!xe.ok() || !bvec.ok()) return NO_MEMORY;
    for (int64_t t = 0; bias && t < ndst; ++t) bvec.p[t] = to_acc(bias[t]);
    m.bvec = bvec.p;
    pad_rows(x, B, nsrc, xe.p, m.lde, extra, nt);
    m.xe = xe.p;

    const auto blocks = row_blocks(B);
    const int64_t nitems = int64_t(blocks.size()) * ntiles;
    const int64_t work = B * K * D;
#pragma omp parallel for num_threads(nt) schedule(static) if (work > PARALLEL_MIN_WORK)
    for (int64_t item = 0; item < nitems; ++item) {
        const auto& blk = blocks[item / ntiles];
        const int64_t t0 = (item % ntiles) * W;
        switch (blk.second) {
            case 8: m.template tile<8>(dst_long, blk.first, t0); break;
            case 4: m.template tile<4>(dst_long, blk.first, t0); break;
            case 2: m.template tile<2>(dst_long, blk.first, t0); break;
            default: m.template tile<1>(dst_long, blk.first, t0); break;
        }
    }
    return OK;
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
    pad_rows(s, B, D, se.p, g.lds, std::vector<int64_t>(g.lds - D, -1), nt);
    std::vector<int64_t> wrap(W);
    for (int64_t i = 0; i < W; ++i) wrap[i] = i % P;
    pad_rows(l, B, P, le.p, g.ldl, wrap, nt);
    g.se = se.p;
    g.le = le.p;
    g.off = off;
    g.dv = dv;
    g.B = B;
    g.P = P;
    g.D = D;

    const auto groups = row_blocks(K);  // groups of 8, 4, 2, 1 diagonals
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
