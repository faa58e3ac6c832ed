// Tile-packed copy of a diagonal weight (DynaDiag), for float32 forward products at batch <= DIAG_PACK_BATCH on
// AVX-512: y[b] = x[b] @ W.T (+ bias), as diag_mm computes it (geometry at the top of diagonal.cpp).
//
// The outputs are cut into tiles of 16 (one vector). A tile's entries are, diagonal by diagonal (in the order of
// the offsets), the runs of its lanes that a diagonal reaches with consecutive inputs: 16 values, zeros in the
// lanes outside the run, and the input of lane 0 (x[start + l] is lane l's input; start may lie outside x). A
// diagonal meets a tile in one run, or two where its inputs wrap around the long side inside the tile. A run's
// lanes are the tile's lanes whose input start + l lies in [0, nin): a run ends where the diagonal ends (dst_long:
// at input D = nin) or where its inputs wrap (past nin - 1, or below 0 for the lanes before the wrap), so the call
// computes each entry's lane mask from its start and stores none. A tile holds its full runs (all 16 lanes) first,
// then the partial ones (about 5% of the entries at 90% sparsity on the ViT-B/16 shapes). A call streams a
// thread's tiles front to back: per entry one load of values, one load of x (masked for a partial run) and a
// multiply-add into one of four accumulators, no gather, no shared accumulator row, no reduction between threads.
// The full runs first, unmasked, against every entry's mask computed from its start: b16-fc1 and fc2 at batch 1
// warm 0.96-1.0x, batch 2 0.90-0.95x, the ViT-B/16 token stack (batch 1, weights from memory) 0.91-0.93x the
// time (2 threads, 90%, AMD EPYC Zen 4, interleaved).
//
// Why: diag_mm_runs, the kernel this copy replaces at batch 1-2, reads each diagonal once into a private row of
// accumulators that the threads sum at the end. Its loop loads the accumulator and stores it back for every
// vector (misaligned where the outputs are the long side), and the sum waits on a barrier and reads the other
// thread's row. Measured (raw kernels, 2 threads, 90%, interleaved, AMD EPYC Zen 5, with the stored masks below):
// b16-fc1 768 -> 3072 at batch 1 warm 0.68-0.77x, cold (caches evicted before each call) 0.85-1.03x the time of
// diag_mm_runs; b16-fc2 warm 0.83x, cold 0.89-0.97x; batch 2 0.55-0.66x. Earlier register tiles that read the
// layer's own (K, D) values met each tile's diagonals in short slices, which the hardware prefetchers follow
// badly from memory (cold 1.3-2x slower, README); here each thread's values are one sequential stream.
//
// Layout of the copy (one byte buffer, DiagPackLayout::bytes(T, E) bytes for T tiles and E entries):
//   float    values[E][16]   the entries' values (zeros outside each run)
//   int64_t  first[T + 1]    tile t's entries are [first[t], first[t + 1])
//   int64_t  partial[T]      tile t's partial runs are [partial[t], first[t + 1])
//   int16_t  start[E]        the input of lane 0, in [-15, P); so P <= DIAG_PACK_MAX_LONG
// About 1.05x the bytes of the (K, D) values: 2 bytes per 64 of values, and the partial runs at a diagonal's
// ends. The first layout stored an int32 start and a 16-bit lane mask per entry (1.12x the values; the
// memory-bound token stack ran 7-9% slower than with diag_mm_runs); this one, against it: b16-fc1 and fc2 at
// batch 1 warm 0.92-1.02x, cold 0.88-1.0x.

namespace dst {

constexpr int64_t DIAG_PACK_BATCH = 2;
constexpr int64_t DIAG_TILE = 16;
// The longest long side the copy takes: its starts are int16, in [-(DIAG_TILE - 1), P).
constexpr int64_t DIAG_PACK_MAX_LONG = 32768;
// The values are prefetched (into L2) this many bytes ahead of the entry being read, for weights in no cache (the
// cold case; as PREFETCH_BYTES of diagonal.cpp), once per four full runs (256 bytes; the hardware prefetchers fetch
// the lines between). Measured against a prefetch per entry (2 threads, 90%, Zen 4, interleaved): b16-fc1 and fc2
// at batch 1 warm 0.94-0.96x the time (a prefetch takes a load slot even when the line is in L2), cold and the
// token stack within the noise (0.94-1.08x); without any prefetch, warm 0.91-0.94x but the stack 1.06-1.07x.
constexpr int64_t DIAG_PACK_AHEAD = 8192;

struct DiagPackLayout {
    float* values;
    int64_t* first;
    int64_t* partial;
    int16_t* start;

    static int64_t bytes(int64_t tiles, int64_t entries) { return entries * (64 + 2) + (2 * tiles + 1) * 8; }
    DiagPackLayout(void* blob, int64_t tiles, int64_t entries) {
        char* p = static_cast<char*>(blob);
        values = reinterpret_cast<float*>(p);
        first = reinterpret_cast<int64_t*>(p + entries * 64);
        partial = first + tiles + 1;
        start = reinterpret_cast<int16_t*>(partial + tiles);
    }
};

// A stretch of a diagonal's outputs whose inputs do not wrap around the long side.
struct DiagPiece {
    int64_t a, b, du;  // outputs [a, b), input t + du for output t
};

// For each diagonal k and each tile of the forward product's outputs (nout) that it reaches, emit(tile, k, lane0,
// lanes, input of lane 0, entry of lane 0 along the diagonal) once per run of consecutive inputs: a tile gets its
// runs diagonal by diagonal and, within a diagonal, lane by lane. O(K * D / DIAG_TILE) runs.
template <class F>
void diag_runs(const int64_t* off, int64_t K, int64_t nin, int64_t nout, F&& emit) {
    const int64_t P = std::max(nin, nout), D = std::min(nin, nout);
    const bool dst_long = nout >= nin;
    for (int64_t k = 0; k < K; ++k) {
        const int64_t s = off[k];
        // The diagonal's outputs in two pieces [a, b), inside each of which the input is t + du: dst_long
        // (t = (j + s) mod P, x at j) the wrapped entries j >= P - s at t = j + s - P come first, then t = j + s;
        // dst_short (t = j, x at (j + s) mod P) t + s up to P, then t + s - P.
        const DiagPiece pieces[2] = {
            dst_long ? DiagPiece{0, std::max<int64_t>(0, D - (P - s)), P - s} : DiagPiece{0, std::min(D, P - s), s},
            dst_long ? DiagPiece{s, s + std::min(D, P - s), -s} : DiagPiece{P - s, D, s - P}};
        for (const DiagPiece& piece : pieces) {
            for (int64_t t = piece.a; t < piece.b;) {
                const int64_t tile = t / DIAG_TILE, end = std::min(piece.b, (tile + 1) * DIAG_TILE), u = t + piece.du;
                emit(tile, k, t - tile * DIAG_TILE, end - t, u, dst_long ? u : t);
                t = end;
            }
        }
    }
}

// The copy of the diagonals off (K, in [0, P)) with values v (K, D): written into alloc(bytes), a buffer the
// caller owns; *entries is set to the entries in all. BAD_OFFSET for an offset out of range, BAD_SHAPE for a long
// side over DIAG_PACK_MAX_LONG, NO_MEMORY if alloc returns null.
inline int diag_pack(const int64_t* off, const float* v, int64_t K, int64_t nin, int64_t nout,
                     void* (*alloc)(int64_t), int64_t* entries) {
    const int64_t P = std::max(nin, nout), D = std::min(nin, nout), tiles = ceil_div(nout, DIAG_TILE);
    if (P > DIAG_PACK_MAX_LONG) return BAD_SHAPE;
    for (int64_t k = 0; k < K; ++k)
        if (off[k] < 0 || off[k] >= P) return BAD_OFFSET;
    // a run is full where it covers all DIAG_TILE lanes (then its inputs start..start + 15 all lie in x)
    const auto full = [](int64_t l, int64_t n) { return l == 0 && n == DIAG_TILE; };
    std::vector<int64_t> first(tiles + 1, 0), nfull(tiles, 0);
    diag_runs(off, K, nin, nout, [&](int64_t tile, int64_t, int64_t l, int64_t n, int64_t, int64_t) {
        ++first[tile + 1];
        nfull[tile] += full(l, n);
    });
    for (int64_t t = 0; t < tiles; ++t) first[t + 1] += first[t];
    *entries = first[tiles];
    void* blob = alloc(DiagPackLayout::bytes(tiles, *entries));
    if (!blob) return NO_MEMORY;
    const DiagPackLayout L(blob, tiles, *entries);
    std::copy(first.begin(), first.end(), L.first);
    std::vector<int64_t> next_full(first.begin(), first.end() - 1), next_partial(tiles);
    for (int64_t t = 0; t < tiles; ++t) next_partial[t] = L.partial[t] = first[t] + nfull[t];
    diag_runs(off, K, nin, nout, [&](int64_t tile, int64_t k, int64_t l, int64_t n, int64_t u0, int64_t j0) {
        const int64_t e = full(l, n) ? next_full[tile]++ : next_partial[tile]++;
        float* w = L.values + e * DIAG_TILE;
        std::fill(w, w + DIAG_TILE, 0.f);
        // along the run, the entry j advances with the lane (dst_long: j = u; dst_short: j = t)
        std::copy(v + k * D + j0, v + k * D + j0 + n, w + l);
        L.start[e] = int16_t(u0 - l);
    });
    return OK;
}

#if defined(__AVX512F__)
// y[b, tiles t0..t1) for the NB batch rows of x (each nin long): per entry one load of values for all rows, one
// load of x per row (masked for a partial run), into four accumulators per row in turn (the multiply-add's
// latency), summed with the bias at the tile's end.
template <int NB>
void diag_pack_tiles(const DiagPackLayout& L, const float* x, int64_t nin, const float* bias, float* y, int64_t nout,
                     int64_t t0, int64_t t1) {
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i in = _mm512_set1_epi32(int32_t(nin));
    for (int64_t tile = t0; tile < t1; ++tile) {
        __m512 acc[NB][4];
        for (int b = 0; b < NB; ++b)
            for (int q = 0; q < 4; ++q) acc[b][q] = _mm512_setzero_ps();
        const int64_t t = tile * DIAG_TILE, n = std::min(DIAG_TILE, nout - t);
        const __mmask16 om = __mmask16((1u << n) - 1);
        // a full entry: all 16 inputs lie in x, one plain load per row
        const auto full = [&](int64_t e, int q) __attribute__((always_inline)) {
            if (q == 0) __builtin_prefetch(L.values + e * DIAG_TILE + DIAG_PACK_AHEAD / sizeof(float), 0, 1);
            const __m512 w = _mm512_loadu_ps(L.values + e * DIAG_TILE);
            const float* u = x + L.start[e];
            for (int b = 0; b < NB; ++b) acc[b][q] = _mm512_fmadd_ps(w, _mm512_loadu_ps(u + b * nin), acc[b][q]);
        };
        // a partial one: the run's lanes are those of the tile (om) whose input s + l lies in [0, nin) (unsigned
        // compare); x is read there only
        const auto partial = [&](int64_t e, int q) __attribute__((always_inline)) {
            const __m512 w = _mm512_loadu_ps(L.values + e * DIAG_TILE);
            const int32_t s = L.start[e];
            const __mmask16 m = _mm512_mask_cmplt_epu32_mask(om, _mm512_add_epi32(_mm512_set1_epi32(s), lane), in);
            const float* u = x + s;
            for (int b = 0; b < NB; ++b) acc[b][q] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(m, u + b * nin), acc[b][q]);
        };
        int64_t e = L.first[tile];
        const int64_t e1 = L.partial[tile], e2 = L.first[tile + 1];
        for (; e + 4 <= e1; e += 4) {
            full(e, 0);
            full(e + 1, 1);
            full(e + 2, 2);
            full(e + 3, 3);
        }
        for (; e < e1; ++e) full(e, 0);
        for (; e + 2 <= e2; e += 2) {
            partial(e, 1);
            partial(e + 1, 2);
        }
        if (e < e2) partial(e, 3);
        const __m512 bb = bias ? _mm512_maskz_loadu_ps(om, bias + t) : _mm512_setzero_ps();
        for (int b = 0; b < NB; ++b) {
            const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[b][0], acc[b][1]), _mm512_add_ps(acc[b][2], acc[b][3]));
            _mm512_mask_storeu_ps(y + b * nout + t, om, _mm512_add_ps(sum, bb));
        }
    }
}

// y (B, nout) = x (B, nin) @ W.T (+ bias) through the copy of E entries; B <= DIAG_PACK_BATCH. Each thread takes a
// contiguous run of tiles holding about an equal share of the entries, so it writes its own lines of y.
int diag_pack_mm(const float* x, const void* blob, const float* bias, float* y, int64_t B, int64_t nin, int64_t nout,
                 int64_t entries, int nt) {
    if (B > DIAG_PACK_BATCH || std::max(nin, nout) > DIAG_PACK_MAX_LONG) return BAD_SHAPE;
    const int64_t tiles = ceil_div(nout, DIAG_TILE);
    const DiagPackLayout L(const_cast<void*>(blob), tiles, entries);
#pragma omp parallel num_threads(nt) if (B * entries * DIAG_TILE > PARALLEL_MIN_WORK)
    {
        const int64_t p = omp_get_thread_num(), np = omp_get_num_threads();
        const auto bound = [&](int64_t q) {
            return int64_t(std::lower_bound(L.first, L.first + tiles, entries * q / np) - L.first);
        };
        // bound(0) is 0; the last share runs to the end, the tiles of no entries (bias only) after `entries` included
        const int64_t t0 = bound(p), t1 = p + 1 == np ? tiles : bound(p + 1);
        if (B == 2)
            diag_pack_tiles<2>(L, x, nin, bias, y, nout, t0, t1);
        else
            diag_pack_tiles<1>(L, x, nin, bias, y, nout, t0, t1);
    }
    return OK;
}
#endif

}  // namespace dst

// The largest batch dst_diag_pack_mm_f32 takes and the longest long side dst_diag_pack_f32 takes, for the Python
// side's mirror of them.
extern "C" void dst_diag_pack_limits(int64_t* batch, int64_t* max_long) {
    *batch = dst::DIAG_PACK_BATCH;
    *max_long = dst::DIAG_PACK_MAX_LONG;
}

extern "C" int dst_diag_pack_f32(const int64_t* off, const void* v, int64_t K, int64_t nin, int64_t nout,
                                 void* (*alloc)(int64_t), int64_t* entries) {
    try {
        return dst::diag_pack(off, static_cast<const float*>(v), K, nin, nout, alloc, entries);
    } catch (const std::bad_alloc&) {
        return dst::NO_MEMORY;
    }
}

// Without AVX-512 dst_diag_pack_mm_f32 returns BAD_SHAPE; dst_lanes_available (lanes.cpp, built with the same
// flags) says whether this build has it.
// The signature of dst_lanes_mm_f32 (kernels/cpu/caller.cpp calls both alike); k, the diagonals, is not needed.
extern "C" int dst_diag_pack_mm_f32(const void* x, const void* blob, const void* bias, void* y, int64_t B,
                                    int64_t nin, int64_t nout, int64_t /*k*/, int64_t entries, int nt) {
#if defined(__AVX512F__)
    return dst::diag_pack_mm(static_cast<const float*>(x), blob, static_cast<const float*>(bias),
                             static_cast<float*>(y), B, nin, nout, entries, nt);
#else
    return dst::BAD_SHAPE;
#endif
}
