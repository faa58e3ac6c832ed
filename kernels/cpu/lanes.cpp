// Lane-packed copy of a condensed weight (SRigL's constant fan-in), for float32 products at batch <= LANES_BATCH
// on AVX-512: y[b, rows[i]] = sum_j v[i, j] * x[b, idx[i, j]], as condensed_mm computes it.
//
// The active rows are taken GROUP = 48 at a time (a group), one row per lane of three 16-lane vectors. A group's
// entries are laid out in steps: a step has a window start s and, for each lane, one entry of that lane's row
// whose index lies in [s, s + LANES_WINDOW) (its offset from s, one byte, and its value), or a zero value where the
// row has none. A step costs two loads of x's window, and per vector one permute of the window by the offsets
// (vpermt2ps) and one multiply-add: no gather (on this project's AMD EPYC, Zen 5, a hardware gather loads about
// one element per cycle, and the scalar loads that replace it one or two).
//
// Steps are scheduled earliest deadline first: each step starts at the smallest next index of the group's rows,
// and every row whose next entry falls in the window takes it. On random constant fan-in masks at 90% sparsity
// (768 -> 3072 and 3072 -> 768) this makes about 1.5 lane slots per entry, so the copy is ~1.25x the bytes of the
// condensed values and int16 indices: the price of gather-free steps. Groups of 16 rows make 1.4 slots per entry,
// but load x's window for every 16 lanes; measured (2 threads, 768 -> 3072, batch 1): 16 rows 14.6 us, 32 rows
// 12.2 us, 48 rows 11.5 us, 64 rows 11.6 us, against 32 us for condensed_mm's assembled gathers.
//
// Layout of the copy (one byte buffer, LanesLayout::bytes(G, S, Z) bytes for G groups, S steps in all and Z
// ablated output columns):
//   float    values[S][GROUP]   the lanes' values, 0 in lanes with no entry
//   int64_t  first[G + 1]       group g's steps are [first[g], first[g + 1])
//   int32_t  rows[G][GROUP]     the output column of each lane, -1 for the lanes past the last active row
//   int32_t  idle[Z]            the output columns of no active row (their bias, or 0)
//   uint16_t start[S]           each step's window start
//   uint8_t  offset[S][GROUP]   each lane's index minus the window start (0 in lanes with no entry)

namespace dst {

constexpr int LANES = 16;
constexpr int GROUP_VECTORS = 3;
constexpr int GROUP = LANES * GROUP_VECTORS;
constexpr int64_t LANES_WINDOW = 32;
constexpr int64_t LANES_BATCH = 2;
// Window starts are 16-bit, so inputs up to this many.
constexpr int64_t LANES_MAX_IN = 65535;
// The values are prefetched (into L2) this many bytes ahead of the step that reads them, the offsets a quarter
// of that (a step holds four times the bytes of values as of offsets), for weights that are in no cache.
// Measured (2 threads, 90%): the ViT-B/16 token stack with cold caches 1.81 -> 1.60 ms; 2 KiB ahead 1.67 ms, 8 KiB
// 1.61 ms. One prefetch per step for the values (its first vector; the hardware prefetchers fetch the lines
// between) and one per U steps of lanes_group for the offsets (2 at batch 1, 1 at batch 2), against one per line:
// b16-fc1 and fc2 at batch 1 warm 0.95-0.98x the time (a prefetch takes a load slot even when the line is in
// L2), cold 0.95-1.0x (Zen 4, interleaved); with none, warm 0.89-0.90x but cold 0.96-1.19x.
constexpr int64_t PREFETCH_BYTES = 4096;

struct LanesLayout {
    float* values;
    int64_t* first;
    int32_t* rows;
    int32_t* idle;
    uint16_t* start;
    uint8_t* offset;

    static int64_t bytes(int64_t groups, int64_t steps, int64_t idle) {
        return steps * GROUP * 4 + (groups + 1) * 8 + groups * GROUP * 4 + idle * 4 + steps * 2 + steps * GROUP;
    }
    LanesLayout(void* blob, int64_t groups, int64_t steps, int64_t nidle) {
        char* p = static_cast<char*>(blob);
        values = reinterpret_cast<float*>(p);
        first = reinterpret_cast<int64_t*>(p + steps * GROUP * 4);
        rows = reinterpret_cast<int32_t*>(first + groups + 1);
        idle = rows + groups * GROUP;
        start = reinterpret_cast<uint16_t*>(idle + nidle);
        offset = reinterpret_cast<uint8_t*>(start + steps);
    }
};

// The order in which the active rows fill groups: within each block of ORDER_BLOCK rows, by how far each row's
// entries run behind an even spread over the inputs at its worst window boundary, so that rows that lag together
// share the steps that wait for them (random 90% masks, 768 -> 3072, groups of 16: 1.36 lane slots per entry
// instead of 1.40; 3072 -> 768 stays at 1.41). Sorting all rows together gains 1% more, but then both threads
// write to every cache line of y, and the call ran 3x slower (AMD EPYC Zen 5, 2 threads); a block's outputs stay
// within 12 lines of y.
constexpr int64_t ORDER_BLOCK = 4 * GROUP;

template <class I>
std::vector<int64_t> group_order(const I* idx, int64_t n, int64_t k, int64_t nin) {
    std::vector<std::pair<double, int64_t>> key(n);
    std::vector<uint32_t> sorted(k);
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < k; ++j) sorted[j] = uint32_t(idx[i * k + j]);
        std::sort(sorted.begin(), sorted.end());
        double lag = 0;
        for (int64_t p = 0, j = 0; p < nin; p += LANES_WINDOW) {
            while (j < k && sorted[j] < p) ++j;
            lag = std::min(lag, double(j) - double(p) * double(k) / double(nin));
        }
        key[i] = {lag, i};
    }
    for (int64_t b = 0; b < n; b += ORDER_BLOCK) std::sort(key.begin() + b, key.begin() + std::min(n, b + ORDER_BLOCK));
    std::vector<int64_t> order(n);
    for (int64_t i = 0; i < n; ++i) order[i] = key[i].second;
    return order;
}

// The earliest-deadline-first steps of the rows row[0, m) (m <= GROUP): step(s, entry) is called once per step
// with its window start and, for each lane, the entry j of that lane's row it takes (-1 for none). Indices must
// be in range.
template <class I, class F>
void schedule_group(const I* idx, int64_t k, const int64_t* row, int m, F&& step) {
    std::vector<std::pair<uint32_t, int32_t>> order(m * k);  // (index, entry) of each lane's row, sorted
    for (int r = 0; r < m; ++r) {
        for (int64_t j = 0; j < k; ++j) order[r * k + j] = {uint32_t(idx[row[r] * k + j]), int32_t(j)};
        std::sort(order.begin() + r * k, order.begin() + (r + 1) * k);
    }
    std::vector<int64_t> next(m, 0);
    int32_t entry[GROUP];
    while (true) {
        uint32_t s = UINT32_MAX;
        for (int r = 0; r < m; ++r)
            if (next[r] < k) s = std::min(s, order[r * k + next[r]].first);
        if (s == UINT32_MAX) return;
        for (int r = 0; r < GROUP; ++r) {
            entry[r] = -1;
            if (r < m && next[r] < k && order[r * k + next[r]].first < s + LANES_WINDOW)
                entry[r] = order[r * k + next[r]++].second;
        }
        step(s, entry);
    }
}

// The copy of the active rows `rows` (n, in [0, nout)) of v and idx (n, k): the rows and indices are checked,
// each group scheduled once, and the copy written into alloc(bytes), a buffer the caller owns; *steps is set to
// the steps in all. Returns BAD_ROW, DUP_ROW, BAD_INDEX or BAD_SHAPE for bad input, NO_MEMORY if alloc returns
// null.
template <class I>
int lanes_pack(const float* v, const I* idx, const int64_t* rows, int64_t n, int64_t k, int64_t nin, int64_t nout,
               void* (*alloc)(int64_t), int64_t* steps) {
    if (nin > LANES_MAX_IN) return BAD_SHAPE;
    if (!rows_ok(rows, n, nout)) return BAD_ROW;
    if (!indices_ok(idx, n * k, nin)) return BAD_INDEX;
    std::vector<int64_t> idle;  // the copy's layout holds nout - n idle columns: rows must be distinct
    if (!idle_columns(rows, n, nout, idle)) return DUP_ROW;
    const int64_t groups = ceil_div(n, int64_t(GROUP));
    const std::vector<int64_t> order = group_order(idx, n, k, nin);
    std::vector<int64_t> first(groups + 1, 0);
    std::vector<uint16_t> start;
    std::vector<int32_t> entries;  // (S, GROUP): each lane's entry of its row, -1 for none
    for (int64_t g = 0; g < groups; ++g) {
        first[g] = int64_t(start.size());
        schedule_group(idx, k, order.data() + g * GROUP, int(std::min<int64_t>(GROUP, n - g * GROUP)),
                       [&](uint32_t s, const int32_t* entry) {
                           start.push_back(uint16_t(s));
                           entries.insert(entries.end(), entry, entry + GROUP);
                       });
    }
    first[groups] = *steps = int64_t(start.size());
    void* blob = alloc(LanesLayout::bytes(groups, *steps, int64_t(idle.size())));
    if (!blob) return NO_MEMORY;
    const LanesLayout L(blob, groups, *steps, int64_t(idle.size()));
    std::copy(first.begin(), first.end(), L.first);
    std::copy(idle.begin(), idle.end(), L.idle);
    std::copy(start.begin(), start.end(), L.start);
    for (int64_t g = 0; g < groups; ++g) {
        const int64_t* row = order.data() + g * GROUP;
        const int m = int(std::min<int64_t>(GROUP, n - g * GROUP));
        for (int r = 0; r < GROUP; ++r) L.rows[g * GROUP + r] = r < m ? int32_t(rows[row[r]]) : -1;
        for (int64_t s = first[g]; s < first[g + 1]; ++s)
            for (int r = 0; r < GROUP; ++r) {
                const int32_t j = entries[s * GROUP + r];
                L.values[s * GROUP + r] = j >= 0 ? v[row[r] * k + j] : 0.f;
                L.offset[s * GROUP + r] = j >= 0 ? uint8_t(uint32_t(idx[row[r] * k + j]) - start[s]) : 0;
            }
    }
    return OK;
}

#if defined(__AVX512F__)
// y[b, rows of group g] for the NB batch rows of xp (each row nin + LANES_WINDOW long, zero past nin): a step's
// values and offsets are loaded once for all NB rows, and x's window once per row for the group's vectors. At
// least four chains of multiply-adds are in flight (their latency): U steps of each vector's accumulators.
template <int NB>
void lanes_group(const LanesLayout& L, int64_t g, const float* xp, int64_t ldx, const float* bias, float* y,
                 int64_t nout) {
    constexpr int U = (4 + NB * GROUP_VECTORS - 1) / (NB * GROUP_VECTORS);
    __m512 acc[NB][GROUP_VECTORS][U];
    for (int b = 0; b < NB; ++b)
        for (int q = 0; q < GROUP_VECTORS; ++q)
            for (int u = 0; u < U; ++u) acc[b][q][u] = _mm512_setzero_ps();
    const auto step = [&](int64_t s, int u) __attribute__((always_inline)) {
        __m512i at[GROUP_VECTORS];
        __m512 vs[GROUP_VECTORS];
        for (int q = 0; q < GROUP_VECTORS; ++q) {
            const int64_t e = s * GROUP + q * LANES;
            if (q == 0) __builtin_prefetch(L.values + e + PREFETCH_BYTES / sizeof(float), 0, 1);
            at[q] = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(L.offset + e)));
            vs[q] = _mm512_loadu_ps(L.values + e);
        }
        if (u == 0) __builtin_prefetch(L.offset + s * GROUP + PREFETCH_BYTES / sizeof(float), 0, 1);
        for (int b = 0; b < NB; ++b) {
            const float* w = xp + b * ldx + L.start[s];
            const __m512 lo = _mm512_loadu_ps(w), hi = _mm512_loadu_ps(w + LANES);
            for (int q = 0; q < GROUP_VECTORS; ++q)
                acc[b][q][u] = _mm512_fmadd_ps(vs[q], _mm512_permutex2var_ps(lo, at[q], hi), acc[b][q][u]);
        }
    };
    const int64_t s1 = L.first[g + 1];
    int64_t s = L.first[g];
    for (; s + U <= s1; s += U)
        for (int u = 0; u < U; ++u) step(s + u, u);
    for (; s < s1; ++s) step(s, 0);
    for (int b = 0; b < NB; ++b) {
        alignas(64) float out[GROUP];
        for (int q = 0; q < GROUP_VECTORS; ++q) {
            __m512 a = acc[b][q][0];
            for (int u = 1; u < U; ++u) a = _mm512_add_ps(a, acc[b][q][u]);
            _mm512_store_ps(out + q * LANES, a);
        }
        for (int r = 0; r < GROUP; ++r) {
            const int32_t c = L.rows[g * GROUP + r];
            if (c >= 0) y[b * nout + c] = out[r] + (bias ? bias[c] : 0.f);
        }
    }
}

// y (B, nout) = x (B, nin) through the copy of n active rows, S steps; B <= LANES_BATCH.
int lanes_mm(const float* x, const void* blob, const float* bias, float* y, int64_t B, int64_t nin, int64_t nout,
             int64_t n, int64_t steps, int nt) {
    if (B > LANES_BATCH || nin > LANES_MAX_IN) return BAD_SHAPE;
    const int64_t groups = ceil_div(n, int64_t(GROUP)), ldx = nin + LANES_WINDOW;
    const LanesLayout L(const_cast<void*>(blob), groups, steps, nout - n);
    for (int64_t b = 0; b < B; ++b)
        for (int64_t z = 0; z < nout - n; ++z) y[b * nout + L.idle[z]] = bias ? bias[L.idle[z]] : 0.f;
    // Each thread pads its own copy of x: one copy written by the calling thread would be read by
    // the others from its core's cache on every call, which costs more than copying a few KiB.
    int failed = 0;
#pragma omp parallel num_threads(nt) if (B * steps * GROUP > PARALLEL_MIN_WORK) reduction(| : failed)
    {
        Scratch<float> xp(B * ldx);
        if (!xp.ok()) {
            failed = 1;
        } else {
            for (int64_t b = 0; b < B; ++b) {
                std::memcpy(xp.p + b * ldx, x + b * nin, nin * sizeof(float));
                std::memset(xp.p + b * ldx + nin, 0, LANES_WINDOW * sizeof(float));
            }
            int64_t g0, g1;
            thread_share(groups, g0, g1);
            for (int64_t g = g0; g < g1; ++g) {
                if (B == 2)
                    lanes_group<2>(L, g, xp.p, ldx, bias, y, nout);
                else
                    lanes_group<1>(L, g, xp.p, ldx, bias, y, nout);
            }
        }
    }
    return failed ? NO_MEMORY : OK;
}
#endif

}  // namespace dst

// Whether this build has the lane-packed product (AVX-512); without it dst_lanes_mm_f32 returns BAD_SHAPE.
extern "C" int dst_lanes_available() {
#if defined(__AVX512F__)
    return 1;
#else
    return 0;
#endif
}

// The copy's limits, for the Python side's mirror of them: the largest batch lanes_mm takes and the most inputs.
extern "C" void dst_lanes_limits(int64_t* batch, int64_t* max_in) {
    *batch = dst::LANES_BATCH;
    *max_in = dst::LANES_MAX_IN;
}

extern "C" int dst_lanes_mm_f32(const void* x, const void* blob, const void* bias, void* y, int64_t B, int64_t nin,
                                int64_t nout, int64_t n, int64_t steps, int nt) {
#if defined(__AVX512F__)
    return dst::lanes_mm(static_cast<const float*>(x), blob, static_cast<const float*>(bias), static_cast<float*>(y),
                         B, nin, nout, n, steps, nt);
#else
    return dst::BAD_SHAPE;
#endif
}

#define DST_LANES_ENTRY(ISUFFIX, I)                                                                              \
    extern "C" int dst_lanes_pack_f32_##ISUFFIX(const void* v, const void* idx, const int64_t* rows, int64_t n,  \
                                                int64_t k, int64_t nin, int64_t nout, void* (*alloc)(int64_t),   \
                                                int64_t* steps) {                                                \
        try {                                                                                                    \
            return dst::lanes_pack(static_cast<const float*>(v), static_cast<const I*>(idx), rows, n, k, nin,    \
                                   nout, alloc, steps);                                                          \
        } catch (const std::bad_alloc&) {                                                                        \
            return dst::NO_MEMORY;                                                                               \
        }                                                                                                        \
    }

DST_LANES_ENTRY(i16, int16_t)
DST_LANES_ENTRY(i32, int32_t)
