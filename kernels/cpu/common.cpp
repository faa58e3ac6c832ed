// Shared parts of the CPU kernels: SIMD vector types, bfloat16 conversion,
// loads/stores, scratch buffers and a converting transpose.
//
// build.py prepends this file to diagonal.cpp, condensed.cpp and attention.cpp, making three
// translation units (with #line directives, so errors name the right file);
// everything here is inline or a template.
// Vectors are GCC/Clang vector extensions sized to the widest ISA the
// compiler targets (-march=native): 64 bytes with AVX-512, 32 with AVX, else 16.
// Accumulation is in float for float32 and bfloat16 data, double for float64.

#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <omp.h>
#include <optional>
#include <type_traits>
#include <vector>

namespace dst {

#if defined(__AVX512F__)
constexpr int VBYTES = 64;
#elif defined(__AVX__)
constexpr int VBYTES = 32;
#else
constexpr int VBYTES = 16;
#endif

typedef float vf __attribute__((vector_size(VBYTES)));
typedef double vd __attribute__((vector_size(VBYTES)));
typedef uint16_t vh __attribute__((vector_size(VBYTES / 2)));
typedef uint32_t vu __attribute__((vector_size(VBYTES)));

// Return codes of the extern "C" entry points (mirrored in kernels/cpu/__init__.py).
enum Status { OK = 0, BAD_OFFSET = 1, BAD_INDEX = 2, BAD_ROW = 3, NO_MEMORY = 4, BAD_SHAPE = 5, DUP_ROW = 6 };

// Work (multiply-adds) below which a call runs on one thread: a parallel
// region costs a few microseconds.
constexpr int64_t PARALLEL_MIN_WORK = 1 << 15;

// Whether the condensed kernels build their gathered vectors from scalar loads rather than with hardware
// gathers: by default where gathers are slow, on AMD CPUs (Zen 4 and 5 load about one element per cycle).
// __builtin_cpu_init comes first, as a static initializer may run before libgcc's. dst_assembled_gathers
// (condensed.cpp) switches it, so that tests run both paths on any CPU.
#if defined(__x86_64__) || defined(__i386__)
inline bool ASSEMBLED_GATHERS = (__builtin_cpu_init(), __builtin_cpu_is("amd"));
#else
inline bool ASSEMBLED_GATHERS = false;
#endif

struct bf16 {
    uint16_t bits;
};

// float16 storage is the compiler's _Float16 where it has one (GCC 12+ and Clang 15+ on x86 and Arm), whose
// conversions round to nearest even and use F16C / AVX-512 instructions when -march=native has them.
#if defined(__FLT16_MAX__)
#define DST_HAVE_F16 1
typedef _Float16 f16;
typedef _Float16 vhf __attribute__((vector_size(VBYTES / 2)));
#endif

template <class T>
struct Acc {  // float32, bfloat16 and float16 accumulate in float
    typedef float A;
    typedef vf V;
};
template <>
struct Acc<double> {
    typedef double A;
    typedef vd V;
};

template <class T>
constexpr int lanes() {
    return VBYTES / int(sizeof(typename Acc<T>::A));
}

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(bf16 v) {
    uint32_t u = uint32_t(v.bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

#if DST_HAVE_F16
inline float to_acc(f16 v) { return float(v); }
#endif

// Accumulator -> storage type; bfloat16 rounds to nearest even, NaN -> quiet NaN (as torch does); float16
// rounds to nearest even (the compiler's conversion).
template <class T>
inline T from_acc(typename Acc<T>::A a) {
    return a;
}
template <>
inline bf16 from_acc<bf16>(float a) {
    uint32_t u;
    std::memcpy(&u, &a, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16{uint16_t(u >> 16)};
}

#if DST_HAVE_F16
template <>
inline f16 from_acc<f16>(float a) {
    return f16(a);
}
#endif

// One element converted between storage and accumulator types; the unused pointer argument
// names the target type.
inline float convert(float v, float*) { return v; }
inline double convert(double v, double*) { return v; }
inline float convert(bf16 v, float*) { return to_acc(v); }
inline bf16 convert(float v, bf16*) { return from_acc<bf16>(v); }
#if DST_HAVE_F16
inline float convert(f16 v, float*) { return to_acc(v); }
inline f16 convert(float v, f16*) { return from_acc<f16>(v); }
#endif

inline vf vload(const float* p) {
    vf r;
    std::memcpy(&r, p, sizeof r);
    return r;
}
inline vd vload(const double* p) {
    vd r;
    std::memcpy(&r, p, sizeof r);
    return r;
}
#if DST_HAVE_F16
// With AVX-512 or F16C, one vcvtph2ps (GCC 12 turns __builtin_convertvector of _Float16 into scalar converts).
inline vf vload(const f16* p) {
    vf r;
#if defined(__AVX512F__)
    const __m512 c = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    std::memcpy(&r, &c, sizeof r);
#elif defined(__F16C__) && defined(__AVX__)
    const __m256 c = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    std::memcpy(&r, &c, sizeof r);
#else
    vhf h;
    std::memcpy(&h, p, sizeof h);
    r = __builtin_convertvector(h, vf);
#endif
    return r;
}
#endif
inline vf vload(const bf16* p) {
    vh h;
    std::memcpy(&h, p, sizeof h);
    vu u = __builtin_convertvector(h, vu) << 16;
    vf r;
    std::memcpy(&r, &u, sizeof r);
    return r;
}

// A vector of copies of a: a - 0 is a exactly (also for -0.0 and NaN), so the compiler emits one broadcast,
// straight from memory when a is a load. (V{} + a would keep an addition: it turns -0.0 into +0.0.)
template <class V, class A>
inline V splat(A a) {
    return a - V{};
}

// Store the first n lanes of v to p (storage type T).
template <class T, class V>
inline void vstore(T* p, const V& v, int n) {
    constexpr int W = int(sizeof(V) / sizeof(v[0]));
    if constexpr (std::is_same<T, typename std::remove_cv<decltype(v[0] + 0)>::type>::value) {
        if (n == W) {
            std::memcpy(p, &v, sizeof v);
            return;
        }
    }
    for (int l = 0; l < n; ++l) p[l] = from_acc<T>(v[l]);
}

// Sum of the lanes of v, by halving: each step adds the upper half onto the lower one.
template <class A, int BYTES>
inline A hsum_bytes(const void* v) {
    if constexpr (BYTES == int(sizeof(A))) {
        A a;
        std::memcpy(&a, v, sizeof a);
        return a;
    } else {
        typedef A half __attribute__((vector_size(BYTES / 2)));
        half lo, hi;
        std::memcpy(&lo, v, sizeof lo);
        std::memcpy(&hi, static_cast<const char*>(v) + BYTES / 2, sizeof hi);
        const half s = lo + hi;
        if constexpr (BYTES / 2 == int(sizeof(A)))
            return s[0];
        else
            return hsum_bytes<A, BYTES / 2>(&s);
    }
}

template <class V>
inline auto hsum(const V& v) -> decltype(v[0] + 0) {
    return hsum_bytes<decltype(v[0] + 0), int(sizeof(V))>(&v);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether the n condensed indices idx are all in [0, nin) (vectorized; used by condensed.cpp and lanes.cpp).
template <class I>
bool indices_ok(const I* idx, int64_t n, int64_t nin) {
    const uint32_t limit = uint32_t(std::min<int64_t>(nin, INT32_MAX));
    uint32_t bad = 0;  // negative ids wrap to huge unsigned values
#pragma omp simd reduction(| : bad)
    for (int64_t e = 0; e < n; ++e) bad |= uint32_t(uint32_t(int32_t(idx[e])) >= limit);
    return bad == 0;
}

// Whether the n active rows are all in [0, nout).
inline bool rows_ok(const int64_t* rows, int64_t n, int64_t nout) {
    for (int64_t i = 0; i < n; ++i)
        if (rows[i] < 0 || rows[i] >= nout) return false;
    return true;
}

// The output columns of no active row (in increasing order), from the n active rows (each in [0, nout)); false if
// a row appears twice. Used by condensed_mm (condensed.cpp) and the lane-packed copy (lanes.cpp).
inline bool idle_columns(const int64_t* rows, int64_t n, int64_t nout, std::vector<int64_t>& idle) {
    std::vector<char> active(nout, 0);
    for (int64_t i = 0; i < n; ++i) {
        if (active[rows[i]]) return false;
        active[rows[i]] = 1;
    }
    idle.clear();
    for (int64_t c = 0; c < nout; ++c)
        if (!active[c]) idle.push_back(c);
    return true;
}

// y[t] = bias[t] (0 without one) + sum over q < np of acc[q * ld + t], for t in [t0, t1): a vector of columns at a
// time (one scalar column at a time, this took 2 us of every diag_mm call, ViT-B/16 fc1 at batch 1: 3072 columns).
// Used to combine threads' private accumulators (diagonal.cpp, condensed.cpp).
template <class T, class A>
void sum_shares(const A* acc, int64_t ld, int np, const T* bias, T* y, int64_t t0, int64_t t1) {
    using V = typename Acc<T>::V;
    constexpr int64_t W = lanes<T>();
    int64_t t = t0;
    for (; t + W <= t1; t += W) {
        V sum = bias ? vload(bias + t) : V{};
        for (int q = 0; q < np; ++q) sum += vload(acc + q * ld + t);
        vstore(y + t, sum, int(W));
    }
    for (; t < t1; ++t) {
        A sum = bias ? to_acc(bias[t]) : A(0);
        for (int q = 0; q < np; ++q) sum += acc[q * ld + t];
        y[t] = from_acc<T>(sum);
    }
}

// This thread's share [i0, i1) of n items, inside a parallel region.
inline void thread_share(int64_t n, int64_t& i0, int64_t& i1) {
    const int64_t p = omp_get_thread_num(), np = omp_get_num_threads();
    i0 = p * n / np;
    i1 = (p + 1) * n / np;
}

#if defined(__AVX512BF16__)
// 32 bfloat16 lanes as the operand type of vdpbf16ps (each float lane of the result adds the products of one
// pair of them).
inline __m512bh as_bh(__m512i v) {
    __m512bh r;
    std::memcpy(&r, &v, sizeof r);
    return r;
}
#endif

// Freed scratch blocks of the calling thread, kept for reuse: a fresh multi-megabyte block
// costs a page fault per 4 KiB page on first touch, often more than the kernel itself.
class BlockCache {
   public:
    ~BlockCache() {
        for (const Block& b : free_) std::free(b.p);
    }
    void* take(size_t bytes, size_t& got) {
        size_t best = free_.size();
        for (size_t i = 0; i < free_.size(); ++i)
            if (free_[i].bytes >= bytes && (best == free_.size() || free_[i].bytes < free_[best].bytes)) best = i;
        if (best < free_.size()) {
            const Block b = free_[best];
            free_.erase(free_.begin() + best);
            got = b.bytes;
            return b.p;
        }
        got = bytes;
        return std::aligned_alloc(64, bytes);
    }
    void give(void* p, size_t bytes) {
        free_.push_back({p, bytes});
        if (free_.size() > MAX_BLOCKS) {  // drop the smallest
            auto smallest = std::min_element(free_.begin(), free_.end(),
                                             [](const Block& a, const Block& b) { return a.bytes < b.bytes; });
            std::free(smallest->p);
            free_.erase(smallest);
        }
    }

   private:
    struct Block {
        void* p;
        size_t bytes;
    };
    static constexpr size_t MAX_BLOCKS = 6;
    std::vector<Block> free_;
};

inline BlockCache& block_cache() {
    static thread_local BlockCache cache;
    return cache;
}

// 64-byte aligned scratch memory from the calling thread's BlockCache, returned on scope exit;
// ok() is false if allocation failed. Inside a parallel region each thread gets its own block.
template <class T>
struct Scratch {
    T* p = nullptr;
    size_t bytes = 0;
    explicit Scratch(int64_t n, bool zero = false) {
        const size_t want = size_t(ceil_div(std::max<int64_t>(n, 1) * int64_t(sizeof(T)), 64) * 64);
        p = static_cast<T*>(block_cache().take(want, bytes));
        if (p && zero) std::memset(static_cast<void*>(p), 0, want);
    }
    ~Scratch() {
        if (p) block_cache().give(p, bytes);
    }
    Scratch(const Scratch&) = delete;
    Scratch& operator=(const Scratch&) = delete;
    bool ok() const { return p != nullptr; }
};

#if defined(__AVX512F__)
// d[c * ldd + r] = s[r * lds + c] for r, c < 16: one 16 x 16 float block through registers (pairs of
// rows interleaved, then pairs of pairs, then the 128-bit quarters exchanged twice).
inline void transpose16(const float* s, int64_t lds, float* d, int64_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(s + i * lds);
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    // r[4g + k], quarter q: column 4q + k of rows 4g .. 4g + 3
    for (int g = 0; g < 4; ++g) {
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), e = _mm512_castps_pd(t[4 * g + 3]);
        r[4 * g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
        r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
    }
    for (int k = 0; k < 4; ++k) {
        const __m512 v0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88), v1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xDD);
        const __m512 v2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88);
        const __m512 v3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xDD);
        _mm512_storeu_ps(d + k * ldd, _mm512_shuffle_f32x4(v0, v2, 0x88));
        _mm512_storeu_ps(d + (4 + k) * ldd, _mm512_shuffle_f32x4(v1, v3, 0x88));
        _mm512_storeu_ps(d + (8 + k) * ldd, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        _mm512_storeu_ps(d + (12 + k) * ldd, _mm512_shuffle_f32x4(v1, v3, 0xDD));
    }
}
constexpr bool HAVE_TRANSPOSE16 = true;
#else
inline void transpose16(const float*, int64_t, float*, int64_t) {}
constexpr bool HAVE_TRANSPOSE16 = false;
#endif

// One rectangle of transpose(), on the calling thread: dst[c * ldd + r] = src[r * lds + (cols ? cols[c] : c)]
// for r0 <= r < rv, c0 <= c < c1, converted to TD, and dst[c * ldd + r] = 0 for rv <= r < r1; in 16 x 16
// blocks, the whole ones of float32 without cols through registers. The blocks go column block by column
// block (all of the rectangle's rows of src each time), except for a rectangle of more than ALONG_ROWS_BYTES
// whose src rows are the longer side (a batch's rows of x into a kernel's transposed slice, when x is in no
// core's L2): then strip of 16 rows by strip, each read front to back, 16 streams of src at a time instead of
// all the rows'. Measured (2 threads, 90%, batch 256, raw kernels, interleaved): b16-fc2 (x rows of 3072)
// 2-3% less time for the condensed and the diagonal kernels (645 -> 626 us, 580 -> 562 us); on b16-fc1 and
// b16-qkv (rows of 768) the diagonal kernel took 1-1.5% more, so smaller rectangles keep the column order.
constexpr int64_t ALONG_ROWS_BYTES = 256 << 10;
template <class TS, class TD>
void transpose_rect(const TS* src, int64_t lds, const int64_t* cols, TD* dst, int64_t ldd, int64_t r0, int64_t rv,
                    int64_t r1, int64_t c0, int64_t c1) {
    constexpr int64_t SB = 16;
    constexpr bool FLOATS = HAVE_TRANSPOSE16 && std::is_same<TS, float>::value && std::is_same<TD, float>::value;
    const bool along_rows = lds >= ldd && (r1 - r0) * (c1 - c0) * int64_t(sizeof(TS)) > ALONG_ROWS_BYTES;
    const int64_t nr = ceil_div(r1 - r0, SB), nc = ceil_div(c1 - c0, SB);
    for (int64_t b = 0; b < nr * nc; ++b) {
        const int64_t rs = r0 + SB * (along_rows ? b / nc : b % nr), cs = c0 + SB * (along_rows ? b % nc : b / nr);
        const int64_t ce = std::min(c1, cs + SB), re = std::min(r1, rs + SB), rve = std::min(rv, re);
        if constexpr (FLOATS) {
            if (!cols && ce - cs == SB && rve - rs == SB) {
                transpose16(src + rs * lds + cs, lds, dst + cs * ldd + rs, ldd);
                continue;
            }
        }
        for (int64_t c = cs; c < ce; ++c) {
            const TS* s = src + (cols ? cols[c] : c);
            TD* d = dst + c * ldd;
            for (int64_t r = rs; r < rve; ++r) d[r] = convert(s[r * lds], static_cast<TD*>(nullptr));
            for (int64_t r = std::max(rs, rve); r < re; ++r) d[r] = TD{};
        }
    }
}

// dst[c * ldd + r] = src[r * lds + (cols ? cols[c] : c)] for r < R, c < C, converted to TD;
// dst[c * ldd + r] = 0 for R <= r < Rpad. Blocks of 32 x 32 (so both sides stay in L1) shared out over nt
// threads.
template <class TS, class TD>
void transpose(const TS* src, int64_t R, int64_t lds, const int64_t* cols, int64_t C, TD* dst, int64_t ldd,
               int64_t Rpad, int nt) {
    constexpr int64_t BS = 32;
    const int64_t nrb = ceil_div(Rpad, BS), nblocks = ceil_div(C, BS) * nrb;
#pragma omp parallel for num_threads(nt) schedule(static) if (Rpad * C > 4 * PARALLEL_MIN_WORK)
    for (int64_t blk = 0; blk < nblocks; ++blk) {
        const int64_t c0 = (blk / nrb) * BS, r0 = (blk % nrb) * BS;
        const int64_t r1 = std::min(Rpad, r0 + BS);
        transpose_rect(src, lds, cols, dst, ldd, r0, std::min(R, r1), r1, c0, std::min(C, c0 + BS));
    }
}

}  // namespace dst
