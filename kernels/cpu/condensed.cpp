// Condensed format (SRigL's constant fan-in): y[b, rows[i]] = sum_j v[i, j] * x[b, idx[i, j]].
//
// Small batches (B <= SMALL_BATCH) run gather-dots along each active row (for float32 with AVX-512:
// hardware gathers, or on CPUs where those are slow vectors assembled from scalar loads), each thread on
// its own share of the rows. Larger batches work on transposed
// operands, padded to Bp = a multiple of the SIMD width W: xT (in, Bp), so every nonzero is one
// broadcast multiply-add over a contiguous run of batch lanes. The lanes are
// split into groups (one group per thread when there are enough); a row's accumulators for its
// group stay in registers while it goes through a pass over its entries (PASS_BYTES).
//
// condensed_mm        per row and lane group (at most FORWARD_VECTORS vectors, its slice of xT stored
//                     contiguously): acc += v[i, j] * xT[idx[i, j], group]; then scattered into y's
//                     column rows[i], plus bias[rows[i]] when a bias is given (null for none).
//                     Ablated columns get their bias (or 0).
// values_grad         dV[i, j] = <dyT[i, :], xT[idx[i, j], :]>, four entries at a time.
// input_grad          dxT[idx[i, j], group] += v[i, j] * dyT[i, group], the dy vectors of a row held in
//                     registers; race-free because each thread owns its lane group (or, when there are
//                     fewer groups than threads, a private dxT that is summed afterwards).
//
// Indices are range-checked by the thread that uses them, just before it does (vectorized, a
// few percent of the time); a bad one makes the call return BAD_INDEX without touching memory
// out of bounds.

namespace dst {

constexpr int64_t SMALL_BATCH = 2;
constexpr int MAX_VECTORS = 8;
// The gradients' lane groups are sized so that the slice of xT (or dxT) one group reads, rows x group width,
// stays within this many bytes (an L2-sized share), but at least MIN_VECTORS vectors wide.
constexpr int64_t GROUP_BYTES = 1 << 20;
constexpr int64_t MIN_VECTORS = 2;

inline int64_t group_vectors(int64_t rows) {
    return std::clamp<int64_t>(GROUP_BYTES / (rows * VBYTES), MIN_VECTORS, MAX_VECTORS);
}
constexpr int64_t ROW_CHUNK = 32;
// A chunk's rows go through their entries in passes, [k p / np, k (p + 1) / np) in pass p, np = the lane group's
// slice bytes / PASS_BYTES (at least 1). Indices sorted within a row (as the condensed format stores them) then
// keep each pass on about 1 / np of the slice, which stays in L1 while the chunk's rows use it; the sums keep
// their order. Measured (AMD EPYC Zen 5, 2 threads, 90%, float32, raw kernel, median ratio of 30 interleaved
// rounds): b16-fc2 at batch 256 (slice 384 KiB, np = 6) 0.92x the time of one pass; 32 and 48 KiB were slower
// than 64, 96 and 128 KiB no better.
constexpr int64_t PASS_BYTES = 64 << 10;
// Rows of fewer entries take them one at a time (raw kernel, batch 256, 10% of the inputs, against one entry a
// step: 64 -> 256 (k = 6) 1.12x and 128 -> 256 (k = 13) 1.05x the time in four-entry steps, 160 -> 256 (k = 16)
// 0.98x, 256 -> 256 0.97x; k = 6 and 13 now 1.02-1.07x).
constexpr int64_t FOUR_STEPS_MIN_K = 16;
// The forward product's lane groups: at most this many vectors, whose rows accumulate four at a time (each x
// row of a group's slice is then two cache lines, and 4 rows x 2 vectors of accumulators leave registers for
// the broadcasts). Measured (AMD EPYC Zen 5, 2 threads, 90%, float32) against 4 vectors x 2 rows: b16-fc1 at
// batch 256 850 -> 715 us, b16-fc2 710 -> 665 us, b16-qkv at batch 197 445 -> 400 us; 4 x 3, 4 x 4, 3 x 4,
// 2 x 6 and 2 x 8 fell in between.
constexpr int64_t FORWARD_VECTORS = 2;
// Small batches: bytes ahead of the current entry at which the values and indices are prefetched (into
// L2), so that weights that are in no cache stream in while earlier rows are gathered.
constexpr int64_t PREFETCH_BYTES = 4096;

// Eight non-negative indices from p, read as 64-bit words.
inline void unpack8(const int16_t* p, uint32_t c[8]) {
    uint64_t w[2];
    std::memcpy(w, p, sizeof w);
    for (int l = 0; l < 8; ++l) c[l] = uint16_t(w[l / 4] >> (16 * (l % 4)));
}
inline void unpack8(const int32_t* p, uint32_t c[8]) {
    uint64_t w[4];
    std::memcpy(w, p, sizeof w);
    for (int l = 0; l < 8; ++l) c[l] = uint32_t(w[l / 2] >> (32 * (l % 2)));
}

// indices_ok for rows [i0, i1) of idx (n_active, k); on failure sets *bad (shared by the team).
template <class I>
bool claim_rows(const I* idx, int64_t k, int64_t nin, int64_t i0, int64_t i1, int* bad) {
    if (indices_ok(idx + i0 * k, (i1 - i0) * k, nin)) return true;
#pragma omp atomic write
    *bad = 1;
    return false;
}

// Lane groups: nv vectors split evenly into groups of at most `most` vectors, at least min(nt, nv) of them.
struct LaneGroups {
    int64_t nv, ng;
    LaneGroups(int64_t nv_, int nt, int64_t most)
        : nv(nv_), ng(std::max(ceil_div(nv_, most), std::min<int64_t>(nt, nv_))) {}
    int64_t begin(int64_t g) const { return g * nv / ng; }
    int size(int64_t g) const { return int(begin(g + 1) - begin(g)); }
};

// The forward product's work items (lane group, chunk of rows), group by group; of np threads, thread q takes
// the items that start in its share [total q / np, total (q + 1) / np) of the vector-weighted total, so that
// groups of unequal widths (13 vectors: 3, 3, 3, 4) split evenly.
struct ForwardShares {
    const LaneGroups& lg;
    int64_t nchunks, total;
    std::vector<int64_t> start;  // (ng + 1,) the first weighted item of each group

    ForwardShares(const LaneGroups& lg_, int64_t nchunks_)
        : lg(lg_), nchunks(nchunks_), total(lg_.nv * nchunks_), start(lg_.ng + 1, 0) {
        for (int64_t g = 0; g < lg.ng; ++g) start[g + 1] = start[g] + lg.size(g) * nchunks;
    }
    // Thread q's chunks of group g, [first, second) (empty when first >= second).
    std::pair<int64_t, int64_t> chunks(int64_t g, int64_t q, int64_t np) const {
        const int64_t lo = total * q / np, hi = total * (q + 1) / np, nv = lg.size(g);
        return {std::max<int64_t>(0, ceil_div(lo - start[g], nv)), std::min(nchunks, ceil_div(hi - start[g], nv))};
    }
    // The threads that take chunks of group g: [first, second), consecutive since shares are.
    std::pair<int64_t, int64_t> users(int64_t g, int64_t np) const {
        int64_t q0 = np, q1 = 0;
        for (int64_t q = 0; q < np; ++q) {
            const auto [c0, c1] = chunks(g, q, np);
            if (c0 < c1) {
                q0 = std::min(q0, q);
                q1 = q + 1;
            }
        }
        return {std::min(q0, q1), q1};
    }
};

template <class T, class I>
struct Condensed {
    using A = typename Acc<T>::A;
    using V = typename Acc<T>::V;
    static constexpr int W = lanes<T>();
    // The batched forward's four-entry steps (accumulate_rows) and its passes (PASS_BYTES): float32 with int16
    // indices on AVX-512; the other types keep one entry per step and one pass (passes with a load per index and per
    // value were slower: README, design).
#if defined(__AVX512F__)
    static constexpr bool FOUR_STEPS = std::is_same<T, float>::value && sizeof(I) == 2 && W == 16;
#else
    static constexpr bool FOUR_STEPS = false;
#endif

    const T* v;
    const I* idx;
    const int64_t* rows;
    const T* bias;  // (nout,) or null
    int64_t n, k, nin, nout, B, Bp;

    A bias_of(int64_t i) const { return bias ? to_acc(bias[rows[i]]) : A(0); }

    // Small batches: y[b, rows[i]] = gather-dot of row i with x[b], for i in [i0, i1). Eight entries at
    // a time: their indices come in with two or four 64-bit loads (fewer load slots than one load each,
    // and the gathers of x are the bottleneck), the x values are packed into one vector and multiplied
    // with a vector load of the values.
    // Returns false, leaving y partly written, if an index of these rows is out of range.
    bool gather_rows(const T* x, int64_t i0, int64_t i1, T* y) const {
#if defined(__AVX512F__)
        if constexpr (std::is_same<T, float>::value) return gather_rows_avx512(x, i0, i1, y);
#endif
#if defined(__AVX512BF16__)
        if constexpr (std::is_same<T, bf16>::value && sizeof(I) <= 4) return gather_rows_bf16(x, i0, i1, y);
#endif
        if (!indices_ok(idx + i0 * k, (i1 - i0) * k, nin)) return false;
        typedef A G __attribute__((vector_size(8 * sizeof(A))));
        for (int64_t i = i0; i < i1; ++i) {
            const T* vi = v + i * k;
            const I* ii = idx + i * k;
            for (int64_t b = 0; b < B; ++b) {
                const T* xb = x + b * nin;
                G acc = G{};
                int64_t j = 0;
                for (; j + 8 <= k; j += 8) {
                    uint32_t c[8];
                    unpack8(ii + j, c);
                    const G xs = {to_acc(xb[c[0]]), to_acc(xb[c[1]]), to_acc(xb[c[2]]), to_acc(xb[c[3]]),
                                  to_acc(xb[c[4]]), to_acc(xb[c[5]]), to_acc(xb[c[6]]), to_acc(xb[c[7]])};
                    const G vs = {to_acc(vi[j]),     to_acc(vi[j + 1]), to_acc(vi[j + 2]), to_acc(vi[j + 3]),
                                  to_acc(vi[j + 4]), to_acc(vi[j + 5]), to_acc(vi[j + 6]), to_acc(vi[j + 7])};
                    acc += vs * xs;
                }
                A s = hsum(acc) + bias_of(i);
                for (; j < k; ++j) s += to_acc(vi[j]) * to_acc(xb[ii[j]]);
                y[b * nout + rows[i]] = from_acc<T>(s);
            }
        }
        return true;
    }

#if defined(__AVX512F__)
    // The indices of ij's first n <= 16 entries (lanes of m = the first n) as unsigned 32-bit lanes, 0 past n;
    // negative ids become >= 32768 (int16) or huge (int32), so a range check catches them.
    static __m512i load_indices(const I* ij, __mmask16 m) {
        if constexpr (sizeof(I) == 2) return _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, ij));
        return _mm512_maskz_loadu_epi32(m, ij);
    }

    // acc += v[j, j + 16) * x[idx[j, j + 16)] for the lanes of m: one hardware gather. Lanes whose index
    // is out of range load nothing and are added to *bad.
    static __m512 gather_fma(const float* vj, const I* ij, const float* x, __m512i limit, __mmask16 m,
                             __mmask16* bad, __m512 acc) {
        const __m512i c = load_indices(ij, m);
        __builtin_prefetch(vj + PREFETCH_BYTES / sizeof(float), 0, 1);  // the rows ahead, for cold weights
        __builtin_prefetch(ij + PREFETCH_BYTES / sizeof(I), 0, 1);
        const __mmask16 ok = _mm512_mask_cmplt_epu32_mask(m, c, limit);
        *bad |= __mmask16(m & ~ok);
        const __m512 xs = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), ok, c, x, 4);
        return _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, vj), xs, acc);
    }

    // (x[c(0)], ..., x[c(15)]) from scalar loads, four lanes at a time (vinsertps from memory), then joined.
    template <class C>
    __attribute__((always_inline)) static __m512 assemble16(const float* x, C c) {
        __m128 q[4];
        for (int h = 0; h < 4; ++h) {
            q[h] = _mm_load_ss(x + c(4 * h));
            q[h] = _mm_insert_ps(q[h], _mm_load_ss(x + c(4 * h + 1)), 0x10);
            q[h] = _mm_insert_ps(q[h], _mm_load_ss(x + c(4 * h + 2)), 0x20);
            q[h] = _mm_insert_ps(q[h], _mm_load_ss(x + c(4 * h + 3)), 0x30);
        }
        const __m256 lo = _mm256_insertf128_ps(_mm256_castps128_ps256(q[0]), q[1], 1);
        const __m256 hi = _mm256_insertf128_ps(_mm256_castps128_ps256(q[2]), q[3], 1);
        return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1);
    }

    // gather_fma without the gather instruction, for CPUs where it is slow (ASSEMBLED_GATHERS): the 16 x
    // values come from assemble16. The indices are range-checked first (int16 ones as 16-bit lanes, with no
    // widening); if any lane of m is out of range, nothing is loaded and acc is returned unchanged.
    static __m512 assemble_fma(const float* vj, const I* ij, const float* x, uint32_t nin, __mmask16 m,
                               __mmask16* bad, __m512 acc) {
        __builtin_prefetch(vj + PREFETCH_BYTES / sizeof(float), 0, 1);
        __builtin_prefetch(ij + PREFETCH_BYTES / sizeof(I), 0, 1);
        __mmask16 ok;
        if constexpr (sizeof(I) == 2)  // negative ids are >= 32768 as unsigned 16-bit values
            ok = _mm256_mask_cmplt_epu16_mask(m, _mm256_maskz_loadu_epi16(m, ij),
                                              _mm256_set1_epi16(int16_t(std::min<uint32_t>(nin, 32768))));
        else
            ok = _mm512_mask_cmplt_epu32_mask(m, _mm512_maskz_loadu_epi32(m, ij), _mm512_set1_epi32(int32_t(nin)));
        if (ok != m) {
            *bad |= __mmask16(m & ~ok);
            return acc;
        }
        __m512 xs;
        if (m == 0xffff) {
            uint32_t c[16];
            unpack8(ij, c);
            unpack8(ij + 8, c + 8);
            xs = assemble16(x, [&](int l) { return c[l]; });
        } else {  // a row's last, partial step: index 0 past its end, those lanes zeroed
            alignas(64) uint32_t c[16];
            _mm512_store_si512(c, load_indices(ij, m));
            xs = _mm512_maskz_mov_ps(m, assemble16(x, [&](int l) { return c[l]; }));
        }
        return _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, vj), xs, acc);
    }

    // y[b, rows[i]] for i in [i0, i1) (batch row b, yb = y + b * nout), two rows at a time so that two
    // gathers are in flight: each row is the sum of dot(values, indices, n, acc) over its entries, S at a
    // time (n = S, then the k % S left), reduced, plus its bias.
    template <int S, class Dot>
    __attribute__((always_inline)) void gather_dot_rows(int64_t i0, int64_t i1, T* yb, Dot dot) const {
        const int64_t kfull = k / S * S;
        const int tail = int(k % S);
        const auto row = [&](int64_t i, __m512 a) {
            yb[rows[i]] = from_acc<T>(_mm512_reduce_add_ps(a) + bias_of(i));
        };
        int64_t i = i0;
        for (; i + 2 <= i1; i += 2) {
            const T *v0 = v + i * k, *v1 = v0 + k;
            const I *c0 = idx + i * k, *c1 = c0 + k;
            __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
            for (int64_t j = 0; j < kfull; j += S) {
                a0 = dot(v0 + j, c0 + j, S, a0);
                a1 = dot(v1 + j, c1 + j, S, a1);
            }
            if (tail) {
                a0 = dot(v0 + kfull, c0 + kfull, tail, a0);
                a1 = dot(v1 + kfull, c1 + kfull, tail, a1);
            }
            row(i, a0);
            row(i + 1, a1);
        }
        for (; i < i1; ++i) {
            __m512 a = _mm512_setzero_ps();
            for (int64_t j = 0; j < kfull; j += S) a = dot(v + i * k + j, idx + i * k + j, S, a);
            if (tail) a = dot(v + i * k + kfull, idx + i * k + kfull, tail, a);
            row(i, a);
        }
    }

    // gather_rows for float32 with AVX-512: sixteen entries per hardware gather, the range check of the
    // indices riding along (gather_fma).
    bool gather_rows_avx512(const float* x, int64_t i0, int64_t i1, float* y) const {
        const uint32_t nlimit = uint32_t(std::min<int64_t>(nin, INT32_MAX));
        const __m512i limit = _mm512_set1_epi32(int32_t(nlimit));
        __mmask16 bad = 0;
        for (int64_t b = 0; b < B; ++b) {
            const float* xb = x + b * nin;
            if (ASSEMBLED_GATHERS) {
                const auto dot = [&](const float* vj, const I* ij, int n, __m512 acc) __attribute__((always_inline)) {
                    return assemble_fma(vj, ij, xb, nlimit, __mmask16((1u << n) - 1), &bad, acc);
                };
                gather_dot_rows<16>(i0, i1, y + b * nout, dot);
            } else {
                const auto dot = [&](const float* vj, const I* ij, int n, __m512 acc) __attribute__((always_inline)) {
                    return gather_fma(vj, ij, xb, limit, __mmask16((1u << n) - 1), &bad, acc);
                };
                gather_dot_rows<16>(i0, i1, y + b * nout, dot);
            }
        }
        return bad == 0;
    }
#endif

#if defined(__AVX512BF16__)
    // The indices of entries 2m and 2m + 1 of ij's next 32 (the lanes of m, 0 elsewhere) as 16 unsigned
    // 32-bit lanes each; negative int16 and int32 indices become huge, so the range check catches them.
    static void pair_indices(const I* ij, __mmask32 m, __m512i& even, __m512i& odd) {
        if constexpr (sizeof(I) == 2) {  // dword m holds entries 2m (low half) and 2m + 1 (high half)
            const __m512i d = _mm512_maskz_loadu_epi16(m, ij);
            even = _mm512_and_si512(d, _mm512_set1_epi32(0xffff));
            odd = _mm512_srli_epi32(d, 16);
        } else {
            const __m512i lo = _mm512_maskz_loadu_epi32(__mmask16(m), ij);
            const __m512i hi = _mm512_maskz_loadu_epi32(__mmask16(m >> 16), ij + 16);
            const __m512i e = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            even = _mm512_permutex2var_epi32(lo, e, hi);
            odd = _mm512_permutex2var_epi32(lo, _mm512_add_epi32(e, _mm512_set1_epi32(1)), hi);
        }
    }

    // What both bfloat16 pair dots start with, for the first n <= 32 entries of a step: their mask m, the even
    // and odd entries' indices (pair_indices) and lane masks me, mo, which of those are in range (oke, oko),
    // and the prefetches of the rows ahead (for cold weights).
    struct Pairs {
        __mmask32 m;
        __mmask16 me, mo, oke, oko;
        __m512i even, odd;
        __mmask16 out_of_range() const { return __mmask16((me & ~oke) | (mo & ~oko)); }
    };
    static Pairs pairs(const bf16* vj, const I* ij, __m512i limit, int n) {
        Pairs p;
        p.m = __mmask32((uint64_t(1) << n) - 1);
        p.me = __mmask16((1u << ((n + 1) / 2)) - 1);
        p.mo = __mmask16((1u << (n / 2)) - 1);
        pair_indices(ij, p.m, p.even, p.odd);
        __builtin_prefetch(vj + PREFETCH_BYTES / sizeof(bf16), 0, 1);
        __builtin_prefetch(ij + PREFETCH_BYTES / sizeof(I), 0, 1);
        p.oke = _mm512_mask_cmplt_epu32_mask(p.me, p.even, limit);
        p.oko = _mm512_mask_cmplt_epu32_mask(p.mo, p.odd, limit);
        return p;
    }

    // acc += the first n of the 32 entries of vj, ij times x at their indices, by pairs on vdpbf16ps: two
    // gathers of 16 32-bit words from x (index i's word holds x[i] in its low half; x has a spare element at
    // its end for the word at nin - 1), the odd entries' shifted into the high halves. Lanes whose index is
    // out of range load nothing and are added to *bad.
    static __m512 gather_dot(const bf16* vj, const I* ij, const bf16* x, __m512i limit, int n, __mmask16* bad,
                             __m512 acc) {
        const Pairs p = pairs(vj, ij, limit, n);
        *bad |= p.out_of_range();
        const __m512i z = _mm512_setzero_si512();
        const __m512i xe = _mm512_mask_i32gather_epi32(z, p.oke, p.even, x, 2);
        const __m512i xo = _mm512_mask_i32gather_epi32(z, p.oko, p.odd, x, 2);
        const __m512i xs = _mm512_mask_blend_epi16(0xaaaaaaaau, xe, _mm512_slli_epi32(xo, 16));
        return _mm512_dpbf16_ps(acc, as_bh(_mm512_maskz_loadu_epi16(p.m, vj)), as_bh(xs));
    }

    // gather_dot without the gather instruction (ASSEMBLED_GATHERS): after the range check of the n entries,
    // each 32-bit word pairs x at an even entry's index (low half) with x at the next entry's (high half),
    // from scalar loads, and the 16 words are inserted four per 128-bit lane, then joined. If any index is
    // out of range, nothing is loaded and acc is returned unchanged.
    static __m512 assemble_dot(const bf16* vj, const I* ij, const bf16* x, __m512i limit, int n, __mmask16* bad,
                               __m512 acc) {
        const Pairs p = pairs(vj, ij, limit, n);
        if (p.out_of_range()) {
            *bad |= p.out_of_range();
            return acc;
        }
        const uint16_t* xw = reinterpret_cast<const uint16_t*>(x);
        const auto words = [&](auto e, auto o) __attribute__((always_inline)) {  // the 16 words, 4 per xmm
            __m128i q[4];
            for (int h = 0; h < 4; ++h) {
                const auto w = [&](int l) { return int(xw[e(l)] | uint32_t(xw[o(l)]) << 16); };
                q[h] = _mm_cvtsi32_si128(w(4 * h));
                q[h] = _mm_insert_epi32(q[h], w(4 * h + 1), 1);
                q[h] = _mm_insert_epi32(q[h], w(4 * h + 2), 2);
                q[h] = _mm_insert_epi32(q[h], w(4 * h + 3), 3);
            }
            const __m256i lo = _mm256_inserti128_si256(_mm256_castsi128_si256(q[0]), q[1], 1);
            const __m256i hi = _mm256_inserti128_si256(_mm256_castsi128_si256(q[2]), q[3], 1);
            return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
        };
        __m512i xs;
        if (n == 32) {
            xs = words([&](int l) { return uint32_t(int32_t(ij[2 * l])); },
                       [&](int l) { return uint32_t(int32_t(ij[2 * l + 1])); });
        } else {  // a row's last, partial step: x[0] past its end, those halves zeroed
            const auto at = [&](int j) { return j < n ? uint32_t(int32_t(ij[j])) : 0u; };
            xs = _mm512_maskz_mov_epi16(p.m, words([&](int l) { return at(2 * l); },
                                                   [&](int l) { return at(2 * l + 1); }));
        }
        return _mm512_dpbf16_ps(acc, as_bh(_mm512_maskz_loadu_epi16(p.m, vj)), as_bh(xs));
    }

    // gather_rows for bfloat16 with AVX512-BF16 (int16 and int32 indices): 32 entries per pair of gathers
    // (or, with ASSEMBLED_GATHERS, per assemble_dot) and one vdpbf16ps, each batch row of x first copied with
    // a spare element.
    bool gather_rows_bf16(const bf16* x, int64_t i0, int64_t i1, bf16* y) const {
        const __m512i limit = _mm512_set1_epi32(int32_t(std::min<int64_t>(nin, INT32_MAX)));
        std::vector<bf16> xs(nin + 2);
        __mmask16 bad = 0;
        for (int64_t b = 0; b < B; ++b) {
            std::memcpy(xs.data(), x + b * nin, nin * sizeof(bf16));
            if (ASSEMBLED_GATHERS) {
                const auto dot = [&](const bf16* vj, const I* ij, int n, __m512 acc) __attribute__((always_inline)) {
                    return assemble_dot(vj, ij, xs.data(), limit, n, &bad, acc);
                };
                gather_dot_rows<32>(i0, i1, y + b * nout, dot);
            } else {
                const auto dot = [&](const bf16* vj, const I* ij, int n, __m512 acc) __attribute__((always_inline)) {
                    return gather_dot(vj, ij, xs.data(), limit, n, &bad, acc);
                };
                gather_dot_rows<32>(i0, i1, y + b * nout, dot);
            }
        }
        return bad == 0;
    }
#endif

    // out[r] (+)= sum over entries j in [j0, j1) of v[i + r, j] * xg[idx[i + r, j], lanes] for rows i, ..., i + R - 1
    // and the NV vectors of lanes of the lane group's slice xg (nin, NV * W); out starts from the bias when `first`.
    // Several rows at a time keep more multiply-adds in flight: with few vectors a row's chain of dependent
    // multiply-adds is the limit (AMD EPYC Zen 5, 2 threads, b16-fc2 at batch 16: 113 -> 69 us with two rows; at
    // batch 197: 710 -> 646 us). Float32 with int16 indices takes four entries a row at a time: their indices in one
    // 64-bit load, their values in one 128-bit load whose lanes are broadcast by permutes, so that each entry's
    // multiply-adds cost one load per vector and little more (the loop is bound by loads; measured as for
    // PASS_BYTES: b16-fc1 at batch 256, one pass, 0.87x the time of a load per index and per value; eight entries at
    // a time, 1.34x).
    template <int NV, int R, bool FOUR>
    __attribute__((always_inline)) void accumulate_rows(const A* xg, int64_t i, int64_t j0, int64_t j1, bool first,
                                                        A (*out)[NV * W]) const {
        constexpr int64_t ld = NV * W;
        V acc[R][NV];
        for (int r = 0; r < R; ++r)
            for (int q = 0; q < NV; ++q) acc[r][q] = first ? splat<V>(bias_of(i + r)) : vload(out[r] + q * W);
        const T* vi = v + i * k;
        const I* ii = idx + i * k;
        int64_t j = j0;
#if defined(__AVX512F__)
        if constexpr (FOUR) {
            for (; j + 4 <= j1; j += 4) {
                uint64_t c[R];
                __m512 vs[R];
                for (int r = 0; r < R; ++r) {
                    std::memcpy(&c[r], ii + j + r * k, sizeof c[r]);
                    vs[r] = _mm512_castps128_ps512(_mm_loadu_ps(vi + j + r * k));
                }
                for (int u = 0; u < 4; ++u)
                    for (int r = 0; r < R; ++r) {
                        const V a = V(_mm512_permutexvar_ps(_mm512_set1_epi32(u), vs[r]));
                        const A* p = xg + int64_t(uint16_t(c[r] >> (16 * u))) * ld;
                        for (int q = 0; q < NV; ++q) acc[r][q] += a * vload(p + q * W);
                    }
            }
        }
#endif
        for (; j < j1; ++j) {
            for (int r = 0; r < R; ++r) {
                const V a = splat<V>(to_acc(vi[j + r * k]));
                const A* p = xg + int64_t(ii[j + r * k]) * ld;
                for (int q = 0; q < NV; ++q) acc[r][q] += a * vload(p + q * W);
            }
        }
        for (int r = 0; r < R; ++r) std::memcpy(out[r], acc[r], sizeof acc[r]);
    }

    // y[:, rows[i]] for i in [i0, i1) (at most ROW_CHUNK rows) and lanes [c0, c0 + NV * W), from the lane
    // group's slice xg (nin, NV * W) of x transposed, in passes over the entries (PASS_BYTES).
    // The rows' results are staged in `out` and then written batch row by batch row, so each
    // batch row of y is touched once per chunk (one page, not one per row); float32 runs of 16 rows
    // that fill 16 consecutive columns go through registers 16 x 16 at a time.
    template <int NV>
    void mm_rows(const A* xg, int64_t c0, int64_t i0, int64_t i1, T* y) const {
        alignas(64) A out[ROW_CHUNK][NV * W];
        // One loop or the other for the whole call: with both in one function, rows of few entries ran 10% slower.
        const auto accumulate = [&](auto four) {
            const int64_t np =
                four() ? std::clamp<int64_t>(nin * NV * W * int64_t(sizeof(A)) / PASS_BYTES, 1, std::max<int64_t>(k, 1))
                       : 1;
            for (int64_t pass = 0; pass < np; ++pass) {
                const int64_t j0 = k * pass / np, j1 = k * (pass + 1) / np;
                int64_t i = i0;
                for (; i + 4 <= i1; i += 4) accumulate_rows<NV, 4, four()>(xg, i, j0, j1, pass == 0, out + (i - i0));
                for (; i + 2 <= i1; i += 2) accumulate_rows<NV, 2, four()>(xg, i, j0, j1, pass == 0, out + (i - i0));
                if (i < i1) accumulate_rows<NV, 1, four()>(xg, i, j0, j1, pass == 0, out + (i - i0));
            }
        };
        if (FOUR_STEPS && k >= FOUR_STEPS_MIN_K)
            accumulate(std::integral_constant<bool, FOUR_STEPS>{});
        else
            accumulate(std::false_type{});
        const int64_t nb = std::min<int64_t>(NV * W, B - c0);
        for (int64_t g = i0; g < i1; g += 16) {  // 16 rows at a time
            const int64_t ge = std::min(i1, g + 16);
            int64_t l0 = 0;
            if constexpr (HAVE_TRANSPOSE16 && std::is_same<T, float>::value) {
                bool run = ge - g == 16;  // the 16 rows fill 16 consecutive columns of y
                for (int64_t i = g + 1; run && i < ge; ++i) run = rows[i] == rows[g] + (i - g);
                for (; run && l0 + 16 <= nb; l0 += 16)
                    transpose16(&out[g - i0][l0], NV * W, y + (c0 + l0) * nout + rows[g], nout);
            }
            for (int64_t l = l0; l < nb; ++l) {
                T* yb = y + (c0 + l) * nout;
                for (int64_t i = g; i < ge; ++i) yb[rows[i]] = from_acc<T>(out[i - i0][l]);
            }
        }
    }

    // Small batches: dv[i, j] = sum_b dy[b, rows[i]] * x[b, idx[i, j]] for i in [i0, i1).
    void gather_grad_rows(const T* dy, const T* x, int64_t i0, int64_t i1, T* dv) const {
        for (int64_t i = i0; i < i1; ++i) {
            const I* ii = idx + i * k;
            T* di = dv + i * k;
            A d[SMALL_BATCH];
            for (int64_t b = 0; b < B; ++b) d[b] = to_acc(dy[b * nout + rows[i]]);
#pragma omp simd
            for (int64_t j = 0; j < k; ++j) {
                A s = 0;
                for (int64_t b = 0; b < B; ++b) s += d[b] * to_acc(x[b * nin + ii[j]]);
                di[j] = from_acc<T>(s);
            }
        }
    }

    // dv[i, j] = <dyT[i, :], xT[idx[i, j], :]> over all Bp lanes for i in [i0, i1); four entries
    // share each load of dyT.
    void dot_rows(const A* dyT, const A* xT, int64_t i0, int64_t i1, T* dv) const {
        const int64_t nv = Bp / W;
        for (int64_t i = i0; i < i1; ++i) {
            const A* d = dyT + i * Bp;
            const I* ii = idx + i * k;
            T* di = dv + i * k;
            int64_t j = 0;
            for (; j + 4 <= k; j += 4) {
                const A* p0 = xT + int64_t(ii[j]) * Bp;
                const A* p1 = xT + int64_t(ii[j + 1]) * Bp;
                const A* p2 = xT + int64_t(ii[j + 2]) * Bp;
                const A* p3 = xT + int64_t(ii[j + 3]) * Bp;
                V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
                for (int64_t q = 0; q < nv; ++q) {
                    const V dq = vload(d + q * W);
                    a0 += dq * vload(p0 + q * W);
                    a1 += dq * vload(p1 + q * W);
                    a2 += dq * vload(p2 + q * W);
                    a3 += dq * vload(p3 + q * W);
                }
                di[j] = from_acc<T>(hsum(a0));
                di[j + 1] = from_acc<T>(hsum(a1));
                di[j + 2] = from_acc<T>(hsum(a2));
                di[j + 3] = from_acc<T>(hsum(a3));
            }
            for (; j < k; ++j) {
                const A* p = xT + int64_t(ii[j]) * Bp;
                V a = V{};
                for (int64_t q = 0; q < nv; ++q) a += vload(d + q * W) * vload(p + q * W);
                di[j] = from_acc<T>(hsum(a));
            }
        }
    }

    // Small batches: acc[b, idx[i, j]] += v[i, j] * dy[b, rows[i]] for i in [i0, i1).
    void scatter_small_rows(const T* dy, int64_t i0, int64_t i1, A* acc) const {
        for (int64_t i = i0; i < i1; ++i) {
            const T* vi = v + i * k;
            const I* ii = idx + i * k;
            for (int64_t b = 0; b < B; ++b) {
                const A d = to_acc(dy[b * nout + rows[i]]);
                A* m = acc + b * nin;
                for (int64_t j = 0; j < k; ++j) m[ii[j]] += to_acc(vi[j]) * d;
            }
        }
    }

    // buf[idx[i, j], lanes] += v[i, j] * dyT[i, lanes] for i in [i0, i1), lanes [c0, c0 + NV * W).
    template <int NV>
    void scatter_rows(const A* dyT, int64_t c0, int64_t i0, int64_t i1, A* buf) const {
        for (int64_t i = i0; i < i1; ++i) {
            V d[NV];
            for (int q = 0; q < NV; ++q) d[q] = vload(dyT + i * Bp + c0 + q * W);
            const T* vi = v + i * k;
            const I* ii = idx + i * k;
            for (int64_t j = 0; j < k; ++j) {
                const A a = to_acc(vi[j]);
                A* p = buf + int64_t(ii[j]) * Bp + c0;
                for (int q = 0; q < NV; ++q) {
                    const V t = vload(p + q * W) + a * d[q];
                    std::memcpy(p + q * W, &t, sizeof t);
                }
            }
        }
    }
};

template <class F>
void dispatch_vectors(int nv, F&& f) {
    switch (nv) {
        case 8: f(std::integral_constant<int, 8>{}); break;
        case 7: f(std::integral_constant<int, 7>{}); break;
        case 6: f(std::integral_constant<int, 6>{}); break;
        case 5: f(std::integral_constant<int, 5>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        default: f(std::integral_constant<int, 1>{}); break;
    }
}

// Output columns of ablated rows (not in rows[0, n)) are their bias, or zero without one. Returns false, writing
// nothing, if a row appears twice (two rows would then write one column).
template <class T>
bool fill_idle_columns(const int64_t* rows, int64_t n, const T* bias, T* y, int64_t B, int64_t nout) {
    bool all = n == nout;  // the common case: rows = 0, 1, ..., nout - 1
    for (int64_t i = 0; all && i < n; ++i) all = rows[i] == i;
    if (all) return true;
    std::vector<int64_t> idle;
    if (!idle_columns(rows, n, nout, idle)) return false;
    for (int64_t b = 0; b < B && !idle.empty(); ++b)
        for (int64_t c : idle) y[b * nout + c] = bias ? bias[c] : T{};
    return true;
}

template <class T, class I>
int condensed_mm(const T* x, const T* v, const I* idx, const int64_t* rows, const T* bias, T* y, int64_t B,
                 int64_t nin, int64_t nout, int64_t n, int64_t k, int nt) {
    using A = typename Acc<T>::A;
    constexpr int W = lanes<T>();
    if (!rows_ok(rows, n, nout)) return BAD_ROW;
    if (!fill_idle_columns(rows, n, bias, y, B, nout)) return DUP_ROW;
    const Condensed<T, I> c{v, idx, rows, bias, n, k, nin, nout, B, ceil_div(B, W) * W};
    const int64_t work = B * n * k;
    int bad = 0;
    if (B <= SMALL_BATCH) {
#pragma omp parallel num_threads(nt) if (work > PARALLEL_MIN_WORK)
        {
            int64_t i0, i1;
            thread_share(n, i0, i1);
            if (!c.gather_rows(x, i0, i1, y)) {
#pragma omp atomic write
                bad = 1;
            }
        }
        return bad ? BAD_INDEX : OK;
    }
    // x transposed group by group: group g's lanes [b0, b0 + width) form the contiguous slice
    // xg + nin * b0 of shape (nin, width), zero-padded past B.
    const LaneGroups lg(c.Bp / W, nt, FORWARD_VECTORS);
    Scratch<A> xg(nin * c.Bp);
    if (!xg.ok()) return NO_MEMORY;
    const ForwardShares shares(lg, ceil_div(n, ROW_CHUNK));
    // Group g's slice, inputs [u0, u1).
    auto transpose_group = [&](int64_t g, int64_t u0, int64_t u1) {
        const int64_t b0 = lg.begin(g) * W, width = lg.size(g) * W;
        transpose_rect(x + b0 * nin, nin, nullptr, xg.p + nin * b0, width, 0, std::min(width, B - b0), width, u0, u1);
    };
#pragma omp parallel num_threads(nt) if (work > PARALLEL_MIN_WORK)
    {
        const int64_t p = omp_get_thread_num(), np = omp_get_num_threads();
        // A group one thread works on is transposed by that thread just before it starts on it (the slice
        // is then in its own L2: b16-fc2, batch 256, 1.43 -> 1.37 ms against transposing every group up
        // front with all threads). Groups shared by several threads are transposed first, by their users
        // together.
        bool any_shared = false;
        for (int64_t g = 0; g < lg.ng; ++g) {
            const auto [q0, q1] = shares.users(g, np);
            if (q1 - q0 < 2) continue;
            any_shared = true;
            if (p >= q0 && p < q1) transpose_group(g, nin * (p - q0) / (q1 - q0), nin * (p - q0 + 1) / (q1 - q0));
        }
        if (any_shared) {
#pragma omp barrier
        }
        // The chunks of rows whose indices this thread has checked: a thread meets the same rows in each of its
        // groups (batch 256, 2 threads: four), and checking them again cost 2-3% of the call.
        std::vector<uint8_t> checked(shares.nchunks, 0);
        for (int64_t g = 0; g < lg.ng; ++g) {
            const auto [c0, c1] = shares.chunks(g, p, np);
            if (c0 >= c1) continue;
            const auto [q0, q1] = shares.users(g, np);
            if (q1 - q0 < 2) transpose_group(g, 0, nin);
            const int64_t nv = lg.size(g), b0 = lg.begin(g) * W;
            for (int64_t chunk = c0; chunk < c1; ++chunk) {
                const int64_t i0 = chunk * ROW_CHUNK, i1 = std::min(n, i0 + ROW_CHUNK);
                if (!checked[chunk] && !claim_rows(idx, k, nin, i0, i1, &bad)) continue;
                checked[chunk] = 1;
                dispatch_vectors(nv, [&](auto v) { c.template mm_rows<v()>(xg.p + nin * b0, b0, i0, i1, y); });
            }
        }
    }
    return bad ? BAD_INDEX : OK;
}

template <class T, class I>
int condensed_values_grad(const T* dy, const T* x, const I* idx, const int64_t* rows, T* dv, int64_t B,
                          int64_t nin, int64_t nout, int64_t n, int64_t k, int nt) {
    using A = typename Acc<T>::A;
    constexpr int W = lanes<T>();
    if (!rows_ok(rows, n, nout)) return BAD_ROW;
    const Condensed<T, I> c{nullptr, idx, rows, nullptr, n, k, nin, nout, B, ceil_div(B, W) * W};
    const int64_t work = B * n * k;
    int bad = 0;
    if (B <= SMALL_BATCH) {
#pragma omp parallel num_threads(nt) if (work > PARALLEL_MIN_WORK)
        {
            int64_t i0, i1;
            thread_share(n, i0, i1);
            if (claim_rows(idx, k, nin, i0, i1, &bad)) c.gather_grad_rows(dy, x, i0, i1, dv);
        }
        return bad ? BAD_INDEX : OK;
    }
    Scratch<A> xT(nin * c.Bp), dyT(n * c.Bp);
    if (!xT.ok() || !dyT.ok()) return NO_MEMORY;
    transpose(x, B, nin, nullptr, nin, xT.p, c.Bp, c.Bp, nt);
    transpose(dy, B, nout, rows, n, dyT.p, c.Bp, c.Bp, nt);
#pragma omp parallel num_threads(nt) if (work > PARALLEL_MIN_WORK)
    {
        int64_t i0, i1;
        thread_share(n, i0, i1);
        if (claim_rows(idx, k, nin, i0, i1, &bad)) c.dot_rows(dyT.p, xT.p, i0, i1, dv);
    }
    return bad ? BAD_INDEX : OK;
}

template <class T, class I>
int condensed_input_grad(const T* dy, const T* v, const I* idx, const int64_t* rows, T* dx, int64_t B,
                         int64_t nin, int64_t nout, int64_t n, int64_t k, int nt) {
    using A = typename Acc<T>::A;
    constexpr int W = lanes<T>();
    if (!rows_ok(rows, n, nout)) return BAD_ROW;
    const Condensed<T, I> c{v, idx, rows, nullptr, n, k, nin, nout, B, ceil_div(B, W) * W};
    const int64_t work = B * n * k;
    int bad = 0;
    if (B <= SMALL_BATCH) {  // per-thread private dx, summed afterwards
        const int parts = work > PARALLEL_MIN_WORK ? std::max(nt, 1) : 1;
        Scratch<A> acc(parts * B * nin, true);
        if (!acc.ok()) return NO_MEMORY;
#pragma omp parallel num_threads(parts)
        {
            int64_t i0, i1;
            thread_share(n, i0, i1);
            if (claim_rows(idx, k, nin, i0, i1, &bad))
                c.scatter_small_rows(dy, i0, i1, acc.p + omp_get_thread_num() * B * nin);
        }
        sum_shares(acc.p, B * nin, int(parts), static_cast<const T*>(nullptr), dx, 0, B * nin);
        return bad ? BAD_INDEX : OK;
    }
    const LaneGroups lg(c.Bp / W, nt, group_vectors(nin));
    const int64_t parts = lg.ng >= nt ? 1 : std::max<int64_t>(1, nt / lg.ng);
    Scratch<A> dyT(n * c.Bp), buf(parts * nin * c.Bp, true);
    if (!dyT.ok() || !buf.ok()) return NO_MEMORY;
    transpose(dy, B, nout, rows, n, dyT.p, c.Bp, c.Bp, nt);
    const int64_t nitems = lg.ng * parts, size = nin * c.Bp;
#pragma omp parallel for num_threads(nt) schedule(static) if (work > PARALLEL_MIN_WORK)
    for (int64_t item = 0; item < nitems; ++item) {
        const int64_t g = item / parts, p = item % parts, i0 = p * n / parts, i1 = (p + 1) * n / parts;
        if (!claim_rows(idx, k, nin, i0, i1, &bad)) continue;
        dispatch_vectors(lg.size(g), [&](auto nv) {
            c.template scatter_rows<nv()>(dyT.p, lg.begin(g) * W, i0, i1, buf.p + p * size);
        });
    }
    if (parts > 1) {
#pragma omp parallel for num_threads(nt) schedule(static) if (size > PARALLEL_MIN_WORK)
        for (int64_t e = 0; e < size; ++e)
            for (int64_t p = 1; p < parts; ++p) buf.p[e] += buf.p[p * size + e];
    }
    transpose(buf.p, nin, c.Bp, nullptr, B, dx, nin, nin, nt);
    return bad ? BAD_INDEX : OK;
}

}  // namespace dst

// Sets ASSEMBLED_GATHERS (on = 0 or 1; -1 leaves it) and returns the setting it had.
extern "C" int dst_assembled_gathers(int on) {
    const int was = dst::ASSEMBLED_GATHERS;
    if (on >= 0) dst::ASSEMBLED_GATHERS = on != 0;
    return was;
}

#define DST_CONDENSED_ENTRY(SUFFIX, T, ISUFFIX, I)                                                               \
    extern "C" int dst_condensed_mm_##SUFFIX##_##ISUFFIX(const void* x, const void* v, const void* idx,            \
                                                          const int64_t* rows, const void* bias, void* y,          \
                                                          int64_t B, int64_t nin, int64_t nout, int64_t n,         \
                                                          int64_t k, int nt) {                                     \
        try {                                                                                                    \
            return dst::condensed_mm(static_cast<const T*>(x), static_cast<const T*>(v),                         \
                                     static_cast<const I*>(idx), rows, static_cast<const T*>(bias),              \
                                     static_cast<T*>(y), B, nin, nout, n, k, nt);                                \
        } catch (const std::bad_alloc&) {                                                                        \
            return dst::NO_MEMORY;                                                                               \
        }                                                                                                        \
    }                                                                                                            \
    extern "C" int dst_condensed_values_grad_##SUFFIX##_##ISUFFIX(                                               \
        const void* dy, const void* x, const void* idx, const int64_t* rows, void* dv, int64_t B, int64_t nin,     \
        int64_t nout, int64_t n, int64_t k, int nt) {                                                            \
        try {                                                                                                    \
            return dst::condensed_values_grad(static_cast<const T*>(dy), static_cast<const T*>(x),               \
                                              static_cast<const I*>(idx), rows, static_cast<T*>(dv), B, nin,     \
                                              nout, n, k, nt);                                                   \
        } catch (const std::bad_alloc&) {                                                                        \
            return dst::NO_MEMORY;                                                                               \
        }                                                                                                        \
    }                                                                                                            \
    extern "C" int dst_condensed_input_grad_##SUFFIX##_##ISUFFIX(                                                \
        const void* dy, const void* v, const void* idx, const int64_t* rows, void* dx, int64_t B, int64_t nin,     \
        int64_t nout, int64_t n, int64_t k, int nt) {                                                            \
        try {                                                                                                    \
            return dst::condensed_input_grad(static_cast<const T*>(dy), static_cast<const T*>(v),                \
                                             static_cast<const I*>(idx), rows, static_cast<T*>(dx), B, nin,      \
                                             nout, n, k, nt);                                                    \
        } catch (const std::bad_alloc&) {                                                                        \
            return dst::NO_MEMORY;                                                                               \
        }                                                                                                        \
    }

DST_CONDENSED_ENTRY(f32, float, i16, int16_t)
DST_CONDENSED_ENTRY(f32, float, i32, int32_t)
DST_CONDENSED_ENTRY(f64, double, i16, int16_t)
DST_CONDENSED_ENTRY(f64, double, i32, int32_t)
DST_CONDENSED_ENTRY(bf16, dst::bf16, i16, int16_t)
DST_CONDENSED_ENTRY(bf16, dst::bf16, i32, int32_t)
#if DST_HAVE_F16
DST_CONDENSED_ENTRY(f16, dst::f16, i16, int16_t)
DST_CONDENSED_ENTRY(f16, dst::f16, i32, int32_t)
#endif
