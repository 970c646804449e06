/* hqdb search kernels (see hq_kernels.h).
 *
 * Results must be bit-identical to hqdb/kernels/_numba.py and independent of the thread
 * count, so:
 *   - every ranking uses one strict total order: (distance, rowid, slot index);
 *   - float sums run in a fixed sequential order (built with -ffp-contract=off, never
 *     -ffast-math);
 *   - rows are split into contiguous chunks whose partial results are merged in chunk order,
 *     and a chunk's result does not depend on which thread ran it.
 */
#include "hq_kernels.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* x86-64 with GCC or clang: CPU feature checks, multi-versioned and AVX-512 code. Define
 * HQ_PORTABLE to build only the portable code (as on other platforms). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(HQ_PORTABLE)
#define HQ_X86_GNUC 1
#endif

/* Hamming hot loops are compiled several times and picked at load time by the CPU's features:
 * the hardware popcount where present, portable code elsewhere (no -march=native). */
#if defined(HQ_X86_GNUC) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define HQ_CLONES __attribute__((target_clones("avx2", "popcnt", "default")))
#define HQ_HAVE_CLONES 1
#endif
#endif
#ifndef HQ_CLONES
#define HQ_CLONES
#endif

/* Below this many rows per chunk, splitting costs more than it saves (a knob for tests). */
static int64_t hq_min_chunk_rows = 32768;

/* Which route the Hamming stage takes (HQ_KNOB_PATH, for tests): 0 = choose, 1 = always the
 * full route, 2 = the fast route with a guess of 0 (so it mostly falls back), 3 = always try
 * the fast route. */
static volatile int hq_path = 0;

#define HQ_MAX_CHUNKS 64

/* Bit-trick popcount. GCC recognises this idiom and emits POPCNT in the clones built for
 * CPUs that have it; the default clone keeps the arithmetic (no libgcc __popcountdi2 call). */
static inline uint32_t popcount64(uint64_t x)
{
    x = x - ((x >> 1) & 0x5555555555555555ULL);
    x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return (uint32_t)((x * 0x0101010101010101ULL) >> 56);
}

static inline int hq_ctz64(uint64_t x)
{
#if defined(__GNUC__)
    return __builtin_ctzll(x);
#else
    int n = 0;
    while (!(x & 1)) {
        x >>= 1;
        n++;
    }
    return n;
#endif
}

/* Unaligned-safe 8-byte load: code rows are nb bytes apart, nb need not be a multiple of 8. */
static inline uint64_t load64(const uint8_t *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

/* The last nb % 8 bytes of a row, zero-padded (never reads past the row). */
static inline uint64_t load_tail(const uint8_t *p, int32_t n)
{
    uint64_t x = 0;
    for (int32_t j = 0; j < n; j++)
        x |= (uint64_t)p[j] << (8 * j);
    return x;
}

/* The query split the same way as a row, so XOR + popcount compares like with like. */
typedef struct {
    uint64_t w[HQ_MAX_CODE_BYTES / 8];
    uint64_t tail;
    int32_t nw, ntail;
} hq_query;

static void query_prepare(hq_query *q, const uint8_t *bits, int32_t nb)
{
    q->nw = nb / 8;
    q->ntail = nb % 8;
    for (int32_t w = 0; w < q->nw; w++)
        q->w[w] = load64(bits + 8 * w);
    q->tail = load_tail(bits + 8 * q->nw, q->ntail);
}

static inline uint32_t ham_row(const uint8_t *row, const hq_query *q, int32_t nw, int32_t ntail)
{
    uint32_t s = 0;
    for (int32_t w = 0; w < nw; w++)
        s += popcount64(load64(row + 8 * w) ^ q->w[w]);
    if (ntail)
        s += popcount64(load_tail(row + 8 * nw, ntail) ^ q->tail);
    return s;
}

/* Run the body (varargs, so its commas need no protection) with NW/NTAIL compile-time
 * constants for the common code sizes, so the word loop is fully unrolled there; other sizes
 * use the generic loop. */
#define HQ_DISPATCH_NB(nb, q, ...)                  \
    switch (nb) {                                   \
    case 8: {  const int32_t NW = 1, NTAIL = 0; __VA_ARGS__; } break; \
    case 16: { const int32_t NW = 2, NTAIL = 0; __VA_ARGS__; } break; \
    case 24: { const int32_t NW = 3, NTAIL = 0; __VA_ARGS__; } break; \
    case 32: { const int32_t NW = 4, NTAIL = 0; __VA_ARGS__; } break; \
    case 48: { const int32_t NW = 6, NTAIL = 0; __VA_ARGS__; } break; \
    case 64: { const int32_t NW = 8, NTAIL = 0; __VA_ARGS__; } break; \
    case 96: { const int32_t NW = 12, NTAIL = 0; __VA_ARGS__; } break; \
    case 128: { const int32_t NW = 16, NTAIL = 0; __VA_ARGS__; } break; \
    default: { const int32_t NW = (q)->nw, NTAIL = (q)->ntail; __VA_ARGS__; } break; \
    }

/* Pass 1 of the Hamming stage, over rows [lo, hi): the distance of every row into dist
 * (invalid rows get the sentinel `inval`, above every real distance), and a histogram that
 * is exact for every distance <= *bound on return.
 *
 * Only the c closest rows matter, so the histogram need not count every row: once the rows
 * seen so far include c with distance <= b, the final threshold d* (the c-th smallest
 * distance over all rows) is <= b too, and rows farther than b are left out. The bound
 * shrinks as the scan goes on, so after a short start almost no row is counted. Each
 * chunk's bound is an upper bound on the global d*, and its counts are exact below it.
 *
 * Returns the number of valid rows in [lo, hi). */
#define HQ_BOUND_BLOCK 1024

static uint32_t tighten_bound(const int64_t *hist, uint32_t bound, int64_t c)
{
    int64_t cum = 0;
    for (uint32_t b = 0; b <= bound; b++) {
        cum += hist[b];
        if (cum >= c)
            return b;
    }
    return bound;
}

HQ_CLONES
static int64_t ham_pass1_generic(const uint8_t *codes, int32_t nb, const hq_query *q,
                                 const uint8_t *valid, int64_t lo, int64_t hi, uint16_t *dist,
                                 int64_t *hist, uint32_t inval, int64_t c, uint32_t *bound_io)
{
    uint32_t bound = *bound_io;
    int64_t nvalid = 0;
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i0 = lo; i0 < hi; i0 += HQ_BOUND_BLOCK) {
            const int64_t i1 = hi - i0 < HQ_BOUND_BLOCK ? hi : i0 + HQ_BOUND_BLOCK;
            for (int64_t i = i0; i < i1; i++) {
                uint32_t d = ham_row(codes + i * (int64_t)nb, q, NW, NTAIL);
                if (valid) {
                    nvalid += valid[i] != 0;
                    d = valid[i] ? d : inval;
                }
                dist[i] = (uint16_t)d;
                if (d <= bound)
                    hist[d]++;
            }
            bound = tighten_bound(hist, bound, c);
        }
    })
    *bound_io = bound;
    return valid ? nvalid : hi - lo;
}

HQ_CLONES
static void ham_all_generic(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo,
                            int64_t hi, int32_t *out)
{
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i = lo; i < hi; i++)
            out[i] = (int32_t)ham_row(codes + i * (int64_t)nb, q, NW, NTAIL);
    })
}

/* ---------------------------------------------------------------------------------------- */
/* Hamming stage, fast route: collect the near rows during the scan itself.                   */
/*                                                                                            */
/* A bound g guessed from a sample (guess_bound) says which rows may be among the c closest.  */
/* The scan keeps only valid rows with distance <= the bound, and tightens the bound as the   */
/* rows kept so far prove that c rows lie within a smaller distance (as in pass 1). So no     */
/* per-row scratch array and no second scan. If the guess was too small (fewer than c rows    */
/* within it) or too many rows are kept, the caller falls back to the full route: a bad guess */
/* costs time, never a wrong answer.                                                          */

typedef struct {
    int64_t idx;
    uint32_t d;
    uint32_t pad_;
} hq_hit;

typedef struct {
    hq_hit *buf;
    int64_t cap, n;
    int64_t *hist; /* of the kept rows' distances */
    uint32_t bound;
    int overflow;
    int64_t cap_hint; /* the batched search: rows it expects to keep (allocated on first use) */
} hq_keep;

HQ_CLONES
static int64_t ham_collect_generic(const uint8_t *codes, int32_t nb, const hq_query *q,
                                   const uint8_t *valid, int64_t lo, int64_t hi, int64_t c,
                                   hq_keep *kp)
{
    uint32_t bound = kp->bound;
    int64_t n = kp->n, nvalid = 0; /* appends to the rows kept so far */
    hq_hit *buf = kp->buf;
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i0 = lo; i0 < hi; i0 += HQ_BOUND_BLOCK) {
            const int64_t i1 = hi - i0 < HQ_BOUND_BLOCK ? hi : i0 + HQ_BOUND_BLOCK;
            for (int64_t i = i0; i < i1; i++) {
                const uint32_t d = ham_row(codes + i * (int64_t)nb, q, NW, NTAIL);
                const int ok = valid ? valid[i] != 0 : 1;
                nvalid += ok;
                if (ok && d <= bound) {
                    if (n == kp->cap) {
                        kp->overflow = 1;
                        goto out;
                    }
                    buf[n].idx = i;
                    buf[n].d = d;
                    n++;
                    kp->hist[d]++;
                }
            }
            bound = tighten_bound(kp->hist, bound, c);
        }
    })
out:
    kp->n = n;
    kp->bound = bound;
    return nvalid;
}

/* AVX-512 VPOPCNTDQ: 8 rows per step, for codes of 1, 2, 4, 8 or 16 words. GCC 12 can't
 * dispatch this ISA through target_clones, so it gets its own target attribute and a runtime
 * check (use_avx512). */
#if defined(HQ_X86_GNUC) && !defined(HQ_NO_AVX512) && \
    (defined(__clang__) || __GNUC__ >= 8)
#include <immintrin.h>
#define HQ_HAVE_AVX512 1
#define HQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vpopcntdq,popcnt")))

/* Sum adjacent lane pairs of a then b: lanes 0-3 from a, 4-7 from b. */
HQ_AVX512 static inline __m512i avx512_pair_sum(__m512i a, __m512i b)
{
    const __m512i even = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    const __m512i odd = _mm512_setr_epi64(1, 3, 5, 7, 9, 11, 13, 15);
    return _mm512_add_epi64(_mm512_permutex2var_epi64(a, even, b),
                            _mm512_permutex2var_epi64(a, odd, b));
}

/* Distances of the 8 rows at `rows` (nw words each) as 8 qword lanes, lane r = row r. */
HQ_AVX512 static inline __m512i avx512_dist8(const uint8_t *rows, const __m512i *qv, int nw)
{
    __m512i v[16];
    const int nq = nw > 8 ? 2 : 1;
    for (int j = 0; j < nw; j++)
        v[j] = _mm512_popcnt_epi64(
            _mm512_xor_si512(_mm512_loadu_si512((const void *)(rows + 64 * j)), qv[j % nq]));
    int n = nw;
    if (nw == 16) { /* vector 2r and 2r+1 are the two halves of row r */
        for (int j = 0; j < 8; j++)
            v[j] = _mm512_add_epi64(v[2 * j], v[2 * j + 1]);
        n = 8;
    }
    while (n > 1) { /* each level halves the partial sums per row */
        for (int j = 0; j < n / 2; j++)
            v[j] = avx512_pair_sum(v[2 * j], v[2 * j + 1]);
        n /= 2;
    }
    return v[0];
}

/* The query words laid out as they line up with a 64-byte load of rows. */
HQ_AVX512 static void avx512_query(const hq_query *q, __m512i *qv)
{
    uint64_t pat[16];
    for (int l = 0; l < 16; l++)
        pat[l] = q->w[l % q->nw];
    qv[0] = _mm512_loadu_si512((const void *)pat);
    qv[1] = _mm512_loadu_si512((const void *)(pat + 8));
}

#define HQ_AVX512_DISPATCH(nw, ...)                                     \
    switch (nw) {                                                       \
    case 1: { const int NW = 1; __VA_ARGS__; } break;                   \
    case 2: { const int NW = 2; __VA_ARGS__; } break;                   \
    case 4: { const int NW = 4; __VA_ARGS__; } break;                   \
    case 8: { const int NW = 8; __VA_ARGS__; } break;                   \
    default: { const int NW = 16; __VA_ARGS__; } break;                 \
    }

HQ_AVX512 static int64_t ham_pass1_avx512(const uint8_t *codes, int32_t nb, const hq_query *q,
                                          const uint8_t *valid, int64_t lo, int64_t hi,
                                          uint16_t *dist, int64_t *hist, uint32_t inval,
                                          int64_t c, uint32_t *bound_io)
{
    __m512i qv[2];
    avx512_query(q, qv);
    const __m128i vinval = _mm_set1_epi16((short)inval);
    uint32_t bound = *bound_io;
    int64_t nvalid = 0;
    int64_t i = lo;
    HQ_AVX512_DISPATCH(q->nw, {
        while (i + 8 <= hi) {
            const int64_t stop = hi - i > HQ_BOUND_BLOCK ? i + HQ_BOUND_BLOCK : hi;
            const __m128i vbound = _mm_set1_epi16((short)bound);
            for (; i + 8 <= stop; i += 8) {
                __m128i d = _mm512_cvtepi64_epi16(avx512_dist8(codes + i * (int64_t)nb, qv, NW));
                if (valid) {
                    __m128i v = _mm_loadl_epi64((const __m128i *)(valid + i));
                    __mmask8 ok = _mm_test_epi8_mask(v, v);
                    nvalid += _mm_popcnt_u32((unsigned)ok);
                    d = _mm_mask_blend_epi16(ok, vinval, d);
                }
                _mm_storeu_si128((__m128i *)(dist + i), d);
                unsigned near = (unsigned)_mm_cmple_epu16_mask(d, vbound);
                if (near) { /* rare once the bound has tightened */
                    /* lanes via GPRs: reloading the stored vector would stall on forwarding */
                    const uint64_t w[2] = {(uint64_t)_mm_cvtsi128_si64(d),
                                           (uint64_t)_mm_extract_epi64(d, 1)};
                    do {
                        const int j = hq_ctz64(near);
                        near &= near - 1;
                        hist[(w[j >> 2] >> (16 * (j & 3))) & 0xFFFF]++;
                    } while (near);
                }
            }
            bound = tighten_bound(hist, bound, c);
        }
    })
    for (; i < hi; i++) {
        uint32_t d = ham_row(codes + i * (int64_t)nb, q, q->nw, 0);
        if (valid) {
            nvalid += valid[i] != 0;
            d = valid[i] ? d : inval;
        }
        dist[i] = (uint16_t)d;
        if (d <= bound)
            hist[d]++;
    }
    *bound_io = tighten_bound(hist, bound, c);
    return valid ? nvalid : hi - lo;
}

HQ_AVX512 static void ham_all_avx512(const uint8_t *codes, int32_t nb, const hq_query *q,
                                     int64_t lo, int64_t hi, int32_t *out)
{
    __m512i qv[2];
    avx512_query(q, qv);
    int64_t i = lo;
    HQ_AVX512_DISPATCH(q->nw, {
        for (; i + 8 <= hi; i += 8)
            _mm256_storeu_si256((__m256i *)(out + i),
                                _mm512_cvtepi64_epi32(avx512_dist8(codes + i * (int64_t)nb, qv, NW)));
    })
    for (; i < hi; i++)
        out[i] = (int32_t)ham_row(codes + i * (int64_t)nb, q, q->nw, 0);
}
HQ_AVX512 static int64_t ham_collect_avx512(const uint8_t *codes, int32_t nb, const hq_query *q,
                                            const uint8_t *valid, int64_t lo, int64_t hi,
                                            int64_t c, hq_keep *kp)
{
    __m512i qv[2];
    avx512_query(q, qv);
    uint32_t bound = kp->bound;
    int64_t n = kp->n, nvalid = 0; /* appends to the rows kept so far */
    hq_hit *buf = kp->buf;
    int64_t i = lo;
    HQ_AVX512_DISPATCH(q->nw, {
        while (i + 8 <= hi) {
            const int64_t stop = hi - i > HQ_BOUND_BLOCK ? i + HQ_BOUND_BLOCK : hi;
            const __m128i vbound = _mm_set1_epi16((short)bound);
            for (; i + 8 <= stop; i += 8) {
                const __m128i d = _mm512_cvtepi64_epi16(avx512_dist8(codes + i * (int64_t)nb, qv, NW));
                __mmask8 near = _mm_cmple_epu16_mask(d, vbound);
                if (valid) {
                    const __m128i v = _mm_loadl_epi64((const __m128i *)(valid + i));
                    const __mmask8 ok = _mm_test_epi8_mask(v, v);
                    nvalid += _mm_popcnt_u32((unsigned)ok);
                    near &= ok;
                } else {
                    nvalid += 8;
                }
                if (near) { /* rare once the bound is tight */
                    if (n + 8 > kp->cap) {
                        kp->overflow = 1;
                        goto out;
                    }
                    const uint64_t w[2] = {(uint64_t)_mm_cvtsi128_si64(d),
                                           (uint64_t)_mm_extract_epi64(d, 1)};
                    unsigned bits = near;
                    do {
                        const int j = hq_ctz64(bits);
                        const uint32_t dj = (uint32_t)(w[j >> 2] >> (16 * (j & 3))) & 0xFFFF;
                        bits &= bits - 1;
                        buf[n].idx = i + j;
                        buf[n].d = dj;
                        n++;
                        kp->hist[dj]++;
                    } while (bits);
                }
            }
            bound = tighten_bound(kp->hist, bound, c);
        }
    })
    for (; i < hi; i++) {
        const uint32_t d = ham_row(codes + i * (int64_t)nb, q, q->nw, 0);
        const int ok = valid ? valid[i] != 0 : 1;
        nvalid += ok;
        if (ok && d <= bound) {
            if (n == kp->cap) {
                kp->overflow = 1;
                goto out;
            }
            buf[n].idx = i;
            buf[n].d = d;
            n++;
            kp->hist[d]++;
        }
    }
out:
    kp->n = n;
    kp->bound = bound;
    return nvalid;
}
#endif

/* 0 (hq_tune) tests the portable path on an AVX-512 machine. */
static volatile int hq_avx512_enabled = 1;

static int avx512_usable(void)
{
#ifdef HQ_HAVE_AVX512
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq");
#else
    return 0;
#endif
}

#ifdef HQ_HAVE_AVX512
static int use_avx512(int32_t nb)
{
    if (!hq_avx512_enabled || (nb != 8 && nb != 16 && nb != 32 && nb != 64 && nb != 128))
        return 0;
    return avx512_usable();
}
#endif

static int64_t ham_pass1(const uint8_t *codes, int32_t nb, const hq_query *q,
                         const uint8_t *valid, int64_t lo, int64_t hi, uint16_t *dist,
                         int64_t *hist, uint32_t inval, int64_t c, uint32_t *bound)
{
#ifdef HQ_HAVE_AVX512
    if (use_avx512(nb))
        return ham_pass1_avx512(codes, nb, q, valid, lo, hi, dist, hist, inval, c, bound);
#endif
    return ham_pass1_generic(codes, nb, q, valid, lo, hi, dist, hist, inval, c, bound);
}

static void ham_all(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo, int64_t hi,
                    int32_t *out)
{
#ifdef HQ_HAVE_AVX512
    if (use_avx512(nb)) {
        ham_all_avx512(codes, nb, q, lo, hi, out);
        return;
    }
#endif
    ham_all_generic(codes, nb, q, lo, hi, out);
}

static int64_t ham_collect(const uint8_t *codes, int32_t nb, const hq_query *q,
                           const uint8_t *valid, int64_t lo, int64_t hi, int64_t c, hq_keep *kp)
{
#ifdef HQ_HAVE_AVX512
    if (use_avx512(nb))
        return ham_collect_avx512(codes, nb, q, valid, lo, hi, c, kp);
#endif
    return ham_collect_generic(codes, nb, q, valid, lo, hi, c, kp);
}

/* ---------------------------------------------------------------------------------------- */
/* Ranking: one strict total order, bounded max-heaps for top-k.                              */

typedef struct {
    float d;       /* distance: -AQD score, or the Hamming distance as float */
    int32_t ham;
    int64_t rowid;
    int64_t idx;   /* slot index: makes the order total even if rowids repeat */
} hq_entry;

/* No NaN reaches here: the LUT is checked finite, and a running sum of finite floats can
 * overflow to +-inf but never produce NaN. -0.0 == 0.0, as in numpy's lexsort. */
static inline int entry_less(const hq_entry *a, const hq_entry *b)
{
    if (a->d < b->d)
        return 1;
    if (b->d < a->d)
        return 0;
    if (a->rowid != b->rowid)
        return a->rowid < b->rowid;
    return a->idx < b->idx;
}

static void sift_down(hq_entry *h, int64_t n, int64_t i)
{
    hq_entry x = h[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && entry_less(&h[c], &h[c + 1]))
            c++;
        if (!entry_less(&x, &h[c]))
            break;
        h[i] = h[c];
        i = c;
    }
    h[i] = x;
}

static void sift_up(hq_entry *h, int64_t i)
{
    hq_entry x = h[i];
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!entry_less(&h[p], &x))
            break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

/* Keep in h (a max-heap of capacity cap, *n used) the cap smallest entries offered. */
static inline void topk_offer(hq_entry *h, int64_t *n, int64_t cap, const hq_entry *e)
{
    if (*n < cap) {
        h[*n] = *e;
        sift_up(h, *n);
        (*n)++;
    } else if (entry_less(e, &h[0])) {
        h[0] = *e;
        sift_down(h, cap, 0);
    }
}

/* Reorder h[0..n) so that h[0..r) holds its r smallest entries, sorted ascending. */
static void select_sorted(hq_entry *h, int64_t n, int64_t r)
{
    if (r <= 0)
        return;
    for (int64_t i = r / 2 - 1; i >= 0; i--)
        sift_down(h, r, i);
    for (int64_t i = r; i < n; i++) {
        if (entry_less(&h[i], &h[0])) {
            h[0] = h[i];
            sift_down(h, r, 0);
        }
    }
    for (int64_t end = r - 1; end > 0; end--) {
        hq_entry t = h[0];
        h[0] = h[end];
        h[end] = t;
        sift_down(h, end, 0);
    }
}

/* Reorder h[0..n) so that h[0..r) holds its r smallest entries, in no particular order:
 * quickselect, falling back to the heap when partitions go badly (keys are all distinct). */
static void select_smallest(hq_entry *h, int64_t n, int64_t r)
{
    int64_t lo = 0, hi = n; /* invariant: h[0..lo) are among the r smallest, h[hi..n) not */
    int budget = 64;
    if (r <= 0 || r >= n)
        return;
    while (hi - lo > 16) {
        if (budget-- == 0) {
            select_sorted(h + lo, hi - lo, r - lo);
            return;
        }
        /* median of three as pivot, parked at hi - 1 */
        int64_t mid = lo + (hi - lo) / 2;
        hq_entry t;
        if (entry_less(&h[mid], &h[lo])) { t = h[mid]; h[mid] = h[lo]; h[lo] = t; }
        if (entry_less(&h[hi - 1], &h[lo])) { t = h[hi - 1]; h[hi - 1] = h[lo]; h[lo] = t; }
        if (entry_less(&h[mid], &h[hi - 1])) { t = h[mid]; h[mid] = h[hi - 1]; h[hi - 1] = t; }
        const hq_entry pivot = h[hi - 1];
        int64_t store = lo;
        for (int64_t i = lo; i < hi - 1; i++) {
            if (entry_less(&h[i], &pivot)) {
                t = h[i]; h[i] = h[store]; h[store] = t;
                store++;
            }
        }
        h[hi - 1] = h[store];
        h[store] = pivot;
        if (store == r || store + 1 == r)
            return;
        if (store < r)
            lo = store + 1;
        else
            hi = store;
    }
    for (int64_t i = lo + 1; i < hi; i++) { /* insertion sort of the last few */
        hq_entry x = h[i];
        int64_t j = i;
        while (j > lo && entry_less(&x, &h[j - 1])) {
            h[j] = h[j - 1];
            j--;
        }
        h[j] = x;
    }
}

/* ---------------------------------------------------------------------------------------- */
/* AQD: s = LUT[0][b0] + LUT[1][b1] + ... in float32, left to right; distance = -s.          */

static inline int aqd_score(const void *qcodes, int32_t qcode_bytes, int32_t m, int64_t i,
                            const float *lut, int32_t kw, float *out)
{
    float s;
    uint32_t b;
    if (qcode_bytes == 1) {
        const uint8_t *c = (const uint8_t *)qcodes + i * (int64_t)m;
        if ((b = c[0]) >= (uint32_t)kw)
            return HQ_ERR_QCODE;
        s = lut[b];
        for (int32_t l = 1; l < m; l++) {
            if ((b = c[l]) >= (uint32_t)kw)
                return HQ_ERR_QCODE;
            s += lut[(int64_t)l * kw + b];
        }
    } else {
        const uint16_t *c = (const uint16_t *)qcodes + i * (int64_t)m;
        if ((b = c[0]) >= (uint32_t)kw)
            return HQ_ERR_QCODE;
        s = lut[b];
        for (int32_t l = 1; l < m; l++) {
            if ((b = c[l]) >= (uint32_t)kw)
                return HQ_ERR_QCODE;
            s += lut[(int64_t)l * kw + b];
        }
    }
    *out = -s;
    return HQ_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Threading                                                                                  */

static int32_t n_chunks(int64_t n_rows, int32_t threads)
{
#ifdef _OPENMP
    int64_t t = threads < 1 ? 1 : threads;
    int64_t by_size = n_rows / hq_min_chunk_rows;
    if (t > HQ_MAX_CHUNKS)
        t = HQ_MAX_CHUNKS;
    if (t > by_size)
        t = by_size;
    return t < 1 ? 1 : (int32_t)t;
#else
    (void)n_rows;
    (void)threads;
    return 1;
#endif
}

static inline int64_t chunk_lo(int64_t n_rows, int32_t nchunks, int32_t t)
{
    /* n_rows * t cannot overflow: n_rows < 2^56 in any real table, t <= HQ_MAX_CHUNKS. */
    return n_rows * t / nchunks;
}

int64_t hq_tune(int32_t knob, int64_t value)
{
    int64_t prev;
    switch (knob) {
    case HQ_KNOB_AVX512:
        prev = avx512_usable() ? hq_avx512_enabled : -1;
        if (value >= 0)
            hq_avx512_enabled = value ? 1 : 0;
        return prev;
    case HQ_KNOB_PATH:
        prev = hq_path;
        if (value >= 0 && value <= 3)
            hq_path = (int)value;
        return prev;
    case HQ_KNOB_MIN_CHUNK_ROWS:
        prev = hq_min_chunk_rows;
        if (value >= 1)
            hq_min_chunk_rows = value;
        return prev;
    default:
        return -1;
    }
}

int hq_openmp_available(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int hq_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int hq_cpu_features(void)
{
    int f = 0;
#ifdef HQ_X86_GNUC
    __builtin_cpu_init();
    if (__builtin_cpu_supports("popcnt"))
        f |= HQ_CPU_POPCNT;
    if (__builtin_cpu_supports("avx2"))
        f |= HQ_CPU_AVX2;
    if (__builtin_cpu_supports("avx512vpopcntdq"))
        f |= HQ_CPU_AVX512_VPOPCNTDQ;
#endif
    return f;
}

const char *hq_hamming_impl(void)
{
    if (hq_avx512_enabled && avx512_usable())
        return "avx512-vpopcntdq (8/16/32/64/128-byte codes), popcnt (other sizes)";
#ifdef HQ_HAVE_CLONES
    if (hq_cpu_features() & HQ_CPU_POPCNT)
        return "popcnt";
    return "swar";
#else
    return "portable";
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* Entry points                                                                               */

int hq_hamming(const uint8_t *codes, int64_t n_rows, int32_t nb, const uint8_t *query,
               int32_t *out, int32_t threads)
{
    if (nb < 1 || nb > HQ_MAX_CODE_BYTES || n_rows < 0 || !query || (n_rows > 0 && (!codes || !out)))
        return HQ_ERR_ARG;
    if (n_rows == 0)
        return HQ_OK;
    hq_query q;
    query_prepare(&q, query, nb);
    int32_t T = n_chunks(n_rows, threads);
#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static, 1) if (T > 1)
#endif
    for (int32_t t = 0; t < T; t++)
        ham_all(codes, nb, &q, chunk_lo(n_rows, T, t), chunk_lo(n_rows, T, t + 1), out);
    return HQ_OK;
}

int hq_aqd_lut(const float *query, const float *codebooks, int32_t m, int32_t kw, int32_t dim,
               float *out, int32_t threads)
{
    if (m < 1 || kw < 1 || dim < 1 || !query || !codebooks || !out)
        return HQ_ERR_ARG;
    int64_t rows = (int64_t)m * kw;
    int32_t T = n_chunks(rows * dim / 64, threads);
    (void)T; /* unused without OpenMP */
    /* Eight codewords at a time: eight independent sums in flight instead of one latency-bound
     * chain; each sum still runs over i = 0..dim-1 in order, so results don't change. */
    const int64_t groups = (rows + 7) / 8;
#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static) if (T > 1)
#endif
    for (int64_t g = 0; g < groups; g++) {
        const int64_t r0 = g * 8, nr = rows - r0 < 8 ? rows - r0 : 8;
        const float *c = codebooks + r0 * dim;
        if (nr == 8) {
            double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0, a4 = 0.0, a5 = 0.0, a6 = 0.0, a7 = 0.0;
            for (int32_t i = 0; i < dim; i++) {
                const double x = (double)query[i]; /* exact products, one final rounding */
                a0 += x * (double)c[i];
                a1 += x * (double)c[dim + i];
                a2 += x * (double)c[2 * (int64_t)dim + i];
                a3 += x * (double)c[3 * (int64_t)dim + i];
                a4 += x * (double)c[4 * (int64_t)dim + i];
                a5 += x * (double)c[5 * (int64_t)dim + i];
                a6 += x * (double)c[6 * (int64_t)dim + i];
                a7 += x * (double)c[7 * (int64_t)dim + i];
            }
            float *o = out + r0;
            o[0] = (float)a0, o[1] = (float)a1, o[2] = (float)a2, o[3] = (float)a3;
            o[4] = (float)a4, o[5] = (float)a5, o[6] = (float)a6, o[7] = (float)a7;
        } else {
            for (int64_t j = 0; j < nr; j++) {
                double acc = 0.0;
                for (int32_t i = 0; i < dim; i++)
                    acc += (double)query[i] * (double)c[j * dim + i];
                out[r0 + j] = (float)acc;
            }
        }
    }
    return HQ_OK;
}

/* Pass 2 over rows [lo, hi): every row with distance < dstar goes to `below`; rows at dstar
 * go to `eq`, all of them if they fit (eq_count <= eq_cap), else a bounded heap keeps the
 * eq_cap smallest by (rowid, idx). */
static void fill_rowids(hq_entry *e, int64_t n, const int64_t *rowids)
{
    for (int64_t j = 0; j < n; j++)
        e[j].rowid = rowids[e[j].idx];
}

static inline void take_row(const uint16_t *dist, const int64_t *rowids, int64_t i,
                            uint32_t dstar, hq_entry *below, int64_t *nbelow, hq_entry *eq,
                            int64_t *neq, int64_t eq_cap, int use_heap)
{
    const uint32_t d = dist[i];
    /* rowids[i] is a likely cache miss: fetched later in a branch-free loop (fill_rowids)
     * where the loads overlap, except when the heap needs it now. */
    hq_entry e = {0.0f, (int32_t)d, 0, i};
    if (d < dstar) {
        below[(*nbelow)++] = e;
    } else if (!use_heap) {
        eq[(*neq)++] = e;
    } else if (eq_cap > 0) {
        e.rowid = rowids[i];
        topk_offer(eq, neq, eq_cap, &e);
    }
}

HQ_CLONES
static void collect_range(const uint16_t *dist, const int64_t *rowids, int64_t lo, int64_t hi,
                          uint32_t dstar, hq_entry *below, hq_entry *eq, int64_t eq_cap,
                          int64_t eq_count)
{
    int64_t nbelow = 0, neq = 0;
    const int use_heap = eq_count > eq_cap;
    const uint16_t dmax = (uint16_t)dstar;
    /* 4 distances per 64-bit word: all are < 2^15, so setting each lane's top bit and
     * subtracting dstar + 1 borrows nothing across lanes; the top bit survives iff d > dstar. */
    const uint64_t H = 0x8000800080008000ULL;
    const uint64_t D = 0x0001000100010001ULL * (uint64_t)(dstar + 1);
    int64_t i = lo;
    for (; i + 64 <= hi; i += 64) {
        /* Almost every block has no candidate: a branch-free test the compiler vectorizes. */
        unsigned any = 0;
        for (int j = 0; j < 64; j++)
            any |= dist[i + j] <= dmax;
        if (!any)
            continue;
        /* Visit only the hits (a per-row branch would mispredict on every one). */
        for (int w = 0; w < 16; w++) {
            uint64_t x;
            memcpy(&x, dist + i + 4 * w, 8);
            uint64_t hits = ~((x | H) - D) & H;
            while (hits) {
                int lane = hq_ctz64(hits) >> 4;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
                lane = 3 - lane;
#endif
                hits &= hits - 1;
                take_row(dist, rowids, i + 4 * w + lane, dstar, below, &nbelow, eq, &neq, eq_cap,
                         use_heap);
            }
        }
    }
    for (; i < hi; i++)
        if (dist[i] <= dmax)
            take_row(dist, rowids, i, dstar, below, &nbelow, eq, &neq, eq_cap, use_heap);
}

/* The final step of the Hamming-stage modes, given the c candidate rows (ham, rowid, idx set):
 * "hamming" sorts them by (ham, rowid); "two_stage" scores them by AQD and keeps the top k. */
static int rank_candidates(hq_entry *cand, int64_t c, int32_t mode, int64_t k, const void *qcodes,
                           int32_t qcode_bytes, int32_t m, const float *lut, int32_t kw,
                           int64_t *out_rowids, float *out_dist, int32_t *out_ham, int64_t *out_n)
{
    int64_t r;
    if (mode == HQ_MODE_HAMMING) {
        for (int64_t j = 0; j < c; j++)
            cand[j].d = (float)cand[j].ham;
        r = c;
    } else {
        for (int64_t j = 0; j < c; j++)
            if (aqd_score(qcodes, qcode_bytes, m, cand[j].idx, lut, kw, &cand[j].d) != HQ_OK)
                return HQ_ERR_QCODE;
        r = k < c ? k : c;
    }
    select_sorted(cand, c, r);
    for (int64_t j = 0; j < r; j++) {
        out_rowids[j] = cand[j].rowid;
        out_dist[j] = cand[j].d;
        out_ham[j] = cand[j].ham;
    }
    *out_n = r;
    return HQ_OK;
}

/* The Hamming-stage modes by the straightforward route: every row's distance into a scratch
 * array with a histogram (pass 1), the threshold d*, then a scan for the rows within it. */
static int search_hamming_full(const uint8_t *codes, int32_t nb, const void *qcodes,
                                int32_t qcode_bytes, int32_t m, const int64_t *rowids,
                                const uint8_t *valid, int64_t n_rows, const hq_query *q,
                                const float *lut, int32_t kw, int32_t mode, int64_t k,
                                int64_t candidates, int32_t T, int64_t *out_rowids,
                                float *out_dist, int32_t *out_ham, int64_t *out_n)
{
    const uint32_t nbits = (uint32_t)nb * 8, inval = nbits + 1, nbuckets = nbits + 2;
    int rc = HQ_OK;
    uint16_t *dist = NULL;
    int64_t *hist = NULL, *tot = NULL, *off = NULL;
    uint32_t *bounds = NULL;
    hq_entry *cand = NULL, *eqbuf = NULL;

    dist = (uint16_t *)malloc((size_t)n_rows * sizeof(uint16_t));
    hist = (int64_t *)calloc((size_t)T * nbuckets, sizeof(int64_t));
    tot = (int64_t *)calloc(nbuckets, sizeof(int64_t));
    off = (int64_t *)malloc((size_t)T * 4 * sizeof(int64_t));
    bounds = (uint32_t *)malloc((size_t)T * sizeof(uint32_t));
    if (!dist || !hist || !tot || !off || !bounds) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }
    int64_t c = mode == HQ_MODE_HAMMING ? k : (candidates > k ? candidates : k);
    int64_t *nvalid_t = off + 3 * T;

#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static, 1) if (T > 1)
#endif
    for (int32_t t = 0; t < T; t++) {
        bounds[t] = nbits;
        nvalid_t[t] = ham_pass1(codes, nb, q, valid, chunk_lo(n_rows, T, t),
                                chunk_lo(n_rows, T, t + 1), dist, hist + (int64_t)t * nbuckets,
                                inval, c, &bounds[t]);
    }

    /* Counts are exact up to the smallest chunk bound, and d* is at most that. */
    uint32_t bound = nbits;
    int64_t nvalid = 0;
    for (int32_t t = 0; t < T; t++) {
        nvalid += nvalid_t[t];
        if (bounds[t] < bound)
            bound = bounds[t];
    }
    for (int32_t t = 0; t < T; t++)
        for (uint32_t d = 0; d <= bound; d++)
            tot[d] += hist[(int64_t)t * nbuckets + d];
    if (c > nvalid)
        c = nvalid;
    if (c == 0)
        goto done;

    /* Threshold d*: fewer than c rows are strictly closer, at least c are within d*. */
    uint32_t dstar = 0;
    int64_t below = 0;
    while (below + tot[dstar] < c && dstar < bound) {
        below += tot[dstar];
        dstar++;
    }
    const int64_t need = c - below; /* 1 <= need <= tot[dstar] */

    /* Per chunk: where its below-rows go in cand, where its share of the tie rows goes. */
    int64_t *below_off = off, *eq_off = off + T, *eq_cap = off + 2 * T;
    int64_t nb_acc = 0, eq_acc = 0;
    const int64_t eq_keep_all = need > (1 << 15) ? 2 * need : (1 << 16);
    for (int32_t t = 0; t < T; t++) {
        const int64_t *h = hist + (int64_t)t * nbuckets;
        int64_t bt = 0;
        for (uint32_t d = 0; d < dstar; d++)
            bt += h[d];
        below_off[t] = nb_acc;
        nb_acc += bt;
        eq_off[t] = eq_acc;
        /* Keep every tie row (selected in linear time below) unless there are very many,
         * e.g. all codes equal: then a heap of `need` bounds the memory. */
        eq_cap[t] = h[dstar] <= eq_keep_all ? h[dstar] : need;
        eq_acc += eq_cap[t];
    }
    cand = (hq_entry *)malloc((size_t)c * sizeof(hq_entry));
    eqbuf = (hq_entry *)malloc((size_t)eq_acc * sizeof(hq_entry));
    if (!cand || !eqbuf) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }

#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static, 1) if (T > 1)
#endif
    for (int32_t t = 0; t < T; t++)
        collect_range(dist, rowids, chunk_lo(n_rows, T, t), chunk_lo(n_rows, T, t + 1), dstar,
                      cand + below_off[t], eqbuf + eq_off[t], eq_cap[t],
                      hist[(int64_t)t * nbuckets + dstar]);

    fill_rowids(cand, below, rowids);
    fill_rowids(eqbuf, eq_acc, rowids);
    /* Ties at d*: the `need` smallest rowids over all chunks. */
    select_smallest(eqbuf, eq_acc, need);
    memcpy(cand + below, eqbuf, (size_t)need * sizeof(hq_entry));

    rc = rank_candidates(cand, c, mode, k, qcodes, qcode_bytes, m, lut, kw, out_rowids, out_dist,
                         out_ham, out_n);

done:
    free(dist);
    free(hist);
    free(tot);
    free(off);
    free(bounds);
    free(cand);
    free(eqbuf);
    return rc;
}

/* The guess for the fast route: over an evenly strided sample of rows, the distance within
 * which the sample predicts about 2c valid rows, plus a little slack. */
#define HQ_SAMPLE_ROWS 4096

/* How many of S sampled rows (out of n_rows) a guess should cover: about 2c rows of the whole
 * table, plus a little slack. */
static int64_t sample_target(int64_t c, int64_t S, int64_t n_rows)
{
    return (2 * c * S + n_rows - 1) / n_rows + 4;
}

static uint32_t guess_bound(const uint8_t *codes, int32_t nb, const hq_query *q,
                            const uint8_t *valid, int64_t n_rows, int64_t c, int64_t *expect)
{
    const uint32_t nbits = (uint32_t)nb * 8;
    const int64_t S = n_rows < HQ_SAMPLE_ROWS ? n_rows : HQ_SAMPLE_ROWS;
    int64_t sh[HQ_MAX_CODE_BYTES * 8 + 1];
    memset(sh, 0, sizeof(sh));
    for (int64_t s = 0; s < S; s++) {
        const int64_t i = s * n_rows / S;
        if (!valid || valid[i])
            sh[ham_row(codes + i * (int64_t)nb, q, q->nw, q->ntail)]++;
    }
    const int64_t target = sample_target(c, S, n_rows);
    *expect = target * (n_rows / S + 1); /* rows the guess should keep, for sizing buffers */
    return tighten_bound(sh, nbits, target);
}

#define HQ_FALLBACK 1 /* internal: the fast route can't decide, take the full one */

/* The end of the fast route, shared with the batched search: from the rows kept by T scans
 * (tot[d] = their count at distance d, exact for every d up to some bound with at least c rows
 * within it), the c best by (Hamming, rowid), ranked by rank_candidates. */
static int rank_kept(const hq_keep *keep, int32_t T, const int64_t *tot, int64_t c,
                     const int64_t *rowids, int32_t mode, int64_t k, const void *qcodes,
                     int32_t qcode_bytes, int32_t m, const float *lut, int32_t kw,
                     int64_t *out_rowids, float *out_dist, int32_t *out_ham, int64_t *out_n)
{
    int rc;
    uint32_t dstar = 0;
    int64_t below = 0;
    while (below + tot[dstar] < c) {
        below += tot[dstar];
        dstar++;
    }
    const int64_t need = c - below, neq = tot[dstar];

    hq_entry *cand = (hq_entry *)malloc((size_t)c * sizeof(hq_entry));
    hq_entry *eq = (hq_entry *)malloc((size_t)neq * sizeof(hq_entry));
    if (!cand || !eq) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }
    int64_t nb_ = 0, ne = 0;
    for (int32_t t = 0; t < T; t++) {
        for (int64_t j = 0; j < keep[t].n; j++) {
            const hq_hit h = keep[t].buf[j];
            hq_entry e = {0.0f, (int32_t)h.d, 0, h.idx};
            if (h.d < dstar)
                cand[nb_++] = e;
            else if (h.d == dstar)
                eq[ne++] = e;
        }
    }
    fill_rowids(cand, below, rowids);
    fill_rowids(eq, neq, rowids);
    select_smallest(eq, neq, need); /* ties at d*: the `need` smallest rowids */
    memcpy(cand + below, eq, (size_t)need * sizeof(hq_entry));
    rc = rank_candidates(cand, c, mode, k, qcodes, qcode_bytes, m, lut, kw, out_rowids, out_dist,
                         out_ham, out_n);

done:
    free(cand);
    free(eq);
    return rc;
}

static int search_hamming_fast(const uint8_t *codes, int32_t nb, const void *qcodes,
                               int32_t qcode_bytes, int32_t m, const int64_t *rowids,
                               const uint8_t *valid, int64_t n_rows, const hq_query *q,
                               const float *lut, int32_t kw, int32_t mode, int64_t k,
                               int64_t candidates, int32_t T, int64_t *out_rowids,
                               float *out_dist, int32_t *out_ham, int64_t *out_n)
{
    const int path = hq_path;
    const uint32_t nbits = (uint32_t)nb * 8, nbuckets = nbits + 1;
    int64_t c = mode == HQ_MODE_HAMMING ? k : (candidates > k ? candidates : k);
    if (path == 1 || (path == 0 && c * 32 > n_rows))
        return HQ_FALLBACK; /* wants a large share of the rows: the full route is as good */

    int64_t expect = 0;
    uint32_t guess = guess_bound(codes, nb, q, valid, n_rows, c, &expect);
    if (path == 2)
        guess = 0;
    int rc = HQ_OK;
    hq_keep *keep = (hq_keep *)calloc((size_t)T, sizeof(hq_keep));
    int64_t *hist = (int64_t *)calloc((size_t)T * nbuckets, sizeof(int64_t));
    int64_t *nvalid_t = (int64_t *)calloc((size_t)T, sizeof(int64_t));
    int64_t *tot = (int64_t *)calloc(nbuckets, sizeof(int64_t));
    hq_hit *hits = NULL;
    if (!keep || !hist || !nvalid_t || !tot) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }
    int64_t total_cap = 0;
    for (int32_t t = 0; t < T; t++) {
        const int64_t rows = chunk_lo(n_rows, T, t + 1) - chunk_lo(n_rows, T, t);
        keep[t].cap = 2 * expect * rows / n_rows + 4096;
        total_cap += keep[t].cap;
    }
    hits = (hq_hit *)malloc((size_t)total_cap * sizeof(hq_hit));
    if (!hits) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }
    int64_t off = 0;
    for (int32_t t = 0; t < T; t++) {
        keep[t].buf = hits + off;
        off += keep[t].cap;
        keep[t].hist = hist + (int64_t)t * nbuckets;
        keep[t].bound = guess;
    }

#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static, 1) if (T > 1)
#endif
    for (int32_t t = 0; t < T; t++)
        nvalid_t[t] = ham_collect(codes, nb, q, valid, chunk_lo(n_rows, T, t),
                                  chunk_lo(n_rows, T, t + 1), c, &keep[t]);

    uint32_t bound = guess;
    int64_t nvalid = 0;
    for (int32_t t = 0; t < T; t++) {
        if (keep[t].overflow) {
            rc = HQ_FALLBACK;
            goto done;
        }
        nvalid += nvalid_t[t];
        if (keep[t].bound < bound)
            bound = keep[t].bound;
    }
    if (c > nvalid)
        c = nvalid;
    if (c == 0)
        goto done; /* *out_n is 0 */
    /* Every chunk kept all its rows within its own bound, so counts up to the smallest
     * bound are exact; if they don't reach c, the guess was too small. */
    int64_t within = 0;
    for (uint32_t d = 0; d <= bound; d++) {
        for (int32_t t = 0; t < T; t++)
            tot[d] += keep[t].hist[d];
        within += tot[d];
    }
    if (within < c) {
        rc = HQ_FALLBACK;
        goto done;
    }
    rc = rank_kept(keep, T, tot, c, rowids, mode, k, qcodes, qcode_bytes, m, lut, kw, out_rowids,
                   out_dist, out_ham, out_n);

done:
    free(keep);
    free(hist);
    free(nvalid_t);
    free(tot);
    free(hits);
    return rc;
}

static int search_hamming(const uint8_t *codes, int32_t nb, const void *qcodes,
                          int32_t qcode_bytes, int32_t m, const int64_t *rowids,
                          const uint8_t *valid, int64_t n_rows, const hq_query *q,
                          const float *lut, int32_t kw, int32_t mode, int64_t k,
                          int64_t candidates, int32_t T, int64_t *out_rowids, float *out_dist,
                          int32_t *out_ham, int64_t *out_n)
{
    int rc = search_hamming_fast(codes, nb, qcodes, qcode_bytes, m, rowids, valid, n_rows, q, lut,
                                 kw, mode, k, candidates, T, out_rowids, out_dist, out_ham, out_n);
    if (rc != HQ_FALLBACK)
        return rc;
    *out_n = 0;
    return search_hamming_full(codes, nb, qcodes, qcode_bytes, m, rowids, valid, n_rows, q, lut,
                               kw, mode, k, candidates, T, out_rowids, out_dist, out_ham, out_n);
}

/* "aqd" mode over rows [lo, hi): score every valid row, keep the cap best in the heap h
 * (which holds *n_out entries on entry). */
#define HQ_AQD_ROWS(QB, M)                                                                   \
    for (int64_t i = lo; i < hi; i++) {                                                      \
        if (valid && !valid[i])                                                              \
            continue;                                                                        \
        float d;                                                                             \
        if (aqd_score(qcodes, QB, M, i, lut, kw, &d) != HQ_OK) {                             \
            rc = HQ_ERR_QCODE;                                                               \
            break;                                                                           \
        }                                                                                    \
        if (n == cap && d > h[0].d)                                                          \
            continue; /* can't enter the top k: skip building the entry */                   \
        hq_entry e = {d, 0, rowids[i], i};                                                   \
        topk_offer(h, &n, cap, &e);                                                          \
    }

HQ_CLONES
static int aqd_range(const void *qcodes, int32_t qcode_bytes, int32_t m, const int64_t *rowids,
                     const uint8_t *valid, int64_t lo, int64_t hi, const float *lut, int32_t kw,
                     hq_entry *h, int64_t cap, int64_t *n_out)
{
    int rc = HQ_OK;
    int64_t n = *n_out; /* h may already hold n entries (the batched search adds chunk by chunk) */
    /* constant code width and book count for the usual shapes: the book loop unrolls */
    switch (qcode_bytes * 16 + m) {
    case 16 + 1: HQ_AQD_ROWS(1, 1) break;
    case 16 + 2: HQ_AQD_ROWS(1, 2) break;
    case 16 + 3: HQ_AQD_ROWS(1, 3) break;
    case 16 + 4: HQ_AQD_ROWS(1, 4) break;
    case 16 + 6: HQ_AQD_ROWS(1, 6) break;
    case 16 + 8: HQ_AQD_ROWS(1, 8) break;
    case 32 + 1: HQ_AQD_ROWS(2, 1) break;
    case 32 + 2: HQ_AQD_ROWS(2, 2) break;
    case 32 + 4: HQ_AQD_ROWS(2, 4) break;
    case 32 + 8: HQ_AQD_ROWS(2, 8) break;
    default: HQ_AQD_ROWS(qcode_bytes, m) break;
    }
    *n_out = n;
    return rc;
}

static int search_aqd(const uint8_t *codes, int32_t nb, const void *qcodes, int32_t qcode_bytes,
                      int32_t m, const int64_t *rowids, const uint8_t *valid, int64_t n_rows,
                      const hq_query *q, const float *lut, int32_t kw, int64_t k, int32_t T,
                      int64_t *out_rowids, float *out_dist, int32_t *out_ham, int64_t *out_n)
{
    int rc = HQ_OK;
    int64_t *cnt = (int64_t *)calloc((size_t)T, sizeof(int64_t));
    int *err = (int *)calloc((size_t)T, sizeof(int));
    int64_t *hoff = (int64_t *)malloc((size_t)T * sizeof(int64_t));
    int64_t total_cap = 0;
    hq_entry *heaps = NULL;
    if (!cnt || !err || !hoff) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }
    for (int32_t t = 0; t < T; t++) {
        int64_t rows = chunk_lo(n_rows, T, t + 1) - chunk_lo(n_rows, T, t);
        hoff[t] = total_cap;
        total_cap += rows < k ? rows : k;
    }
    heaps = (hq_entry *)malloc((size_t)(total_cap ? total_cap : 1) * sizeof(hq_entry));
    if (!heaps) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }

#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static, 1) if (T > 1)
#endif
    for (int32_t t = 0; t < T; t++) {
        const int64_t lo = chunk_lo(n_rows, T, t), hi = chunk_lo(n_rows, T, t + 1);
        const int64_t cap = hi - lo < k ? hi - lo : k;
        err[t] = aqd_range(qcodes, qcode_bytes, m, rowids, valid, lo, hi, lut, kw,
                           heaps + hoff[t], cap, &cnt[t]) != HQ_OK;
    }

    int64_t total = 0;
    for (int32_t t = 0; t < T; t++) {
        if (err[t]) {
            rc = HQ_ERR_QCODE;
            goto done;
        }
        memmove(heaps + total, heaps + hoff[t], (size_t)cnt[t] * sizeof(hq_entry));
        total += cnt[t];
    }
    const int64_t r = k < total ? k : total;
    select_sorted(heaps, total, r);
    for (int64_t j = 0; j < r; j++) {
        out_rowids[j] = heaps[j].rowid;
        out_dist[j] = heaps[j].d;
        out_ham[j] = (int32_t)ham_row(codes + heaps[j].idx * (int64_t)nb, q, q->nw, q->ntail);
    }
    *out_n = r;

done:
    free(cnt);
    free(err);
    free(hoff);
    free(heaps);
    return rc;
}

int hq_search(const uint8_t *codes, int32_t nb, const void *qcodes, int32_t qcode_bytes,
              int32_t m, const int64_t *rowids, const uint8_t *valid, int64_t n_rows,
              const uint8_t *query_bits, const float *lut, int32_t kw, int32_t mode, int64_t k,
              int64_t candidates, int32_t threads, int64_t *out_rowids, float *out_dist,
              int32_t *out_ham, int64_t *out_n)
{
    if (!out_n)
        return HQ_ERR_ARG;
    *out_n = 0;
    if (nb < 1 || nb > HQ_MAX_CODE_BYTES || n_rows < 0 || k < 1 || candidates < 1 || !query_bits)
        return HQ_ERR_ARG;
    if (mode != HQ_MODE_HAMMING && mode != HQ_MODE_AQD && mode != HQ_MODE_TWO_STAGE)
        return HQ_ERR_ARG;
    if (n_rows == 0)
        return HQ_OK;
    if (!codes || !rowids || !out_rowids || !out_dist || !out_ham)
        return HQ_ERR_ARG;
    if (mode != HQ_MODE_HAMMING &&
        (!qcodes || !lut || m < 1 || kw < 1 || (qcode_bytes != 1 && qcode_bytes != 2)))
        return HQ_ERR_ARG;

    hq_query q;
    query_prepare(&q, query_bits, nb);
    int32_t T = n_chunks(n_rows, threads);
    if (mode == HQ_MODE_AQD)
        return search_aqd(codes, nb, qcodes, qcode_bytes, m, rowids, valid, n_rows, &q, lut, kw, k,
                          T, out_rowids, out_dist, out_ham, out_n);
    return search_hamming(codes, nb, qcodes, qcode_bytes, m, rowids, valid, n_rows, &q, lut,
                                kw, mode, k, candidates, T, out_rowids, out_dist, out_ham, out_n);
}

/* ---------------------------------------------------------------------------------------- */
/* Batched search: many queries over the same rows in one call.                               */
/*                                                                                            */
/* The queries are split into one group per thread; a group walks the rows in blocks small   */
/* enough to stay in L2 (HQ_BATCH_BLOCK_BYTES of codes) and every query of the group scans a  */
/* block before the next one is loaded, so each code is read from memory once per thread     */
/* instead of once per query. No barrier per block: on a shared machine a thread that is      */
/* descheduled does not stall the others at every block.                                      */
/*                                                                                            */
/* Per query, the Hamming stage keeps either a bounded heap of its c best rows by (Hamming,    */
/* rowid, slot) (small c: one compare per row against the heap's top), or the fast route's    */
/* kept buffer (ham_collect's bound, which starts at the code width and tightens as rows come */
/* in; the buffer is compacted or grown between 1024-row steps, so it never overflows and no  */
/* fallback is needed). With AVX-512 the block is first laid out word-major (soa_fill) so the */
/* distances of 8 rows need no cross-lane shuffles. "aqd" mode keeps a bounded heap per query */
/* (aqd_range). Either way a query's result is the same set under the same strict total      */
/* order as hq_search's, ranked by the same code, so results are identical to running the     */
/* queries one by one, for any thread count or grouping.                                      */

#define HQ_BATCH_BLOCK_BYTES (256 * 1024)
/* Up to this many candidates a query's Hamming stage keeps a heap (one integer compare per
 * row, no bookkeeping); beyond it, heap updates cost more than the fast route's kept buffer. */
#define HQ_BATCH_HEAP_MAX 32
/* Fewer queries than this per thread: one by one (hq_search) is as fast, its fast route needs
 * no per-query state for the whole scan, and laying blocks out word-major would not pay. */
#define HQ_BATCH_MIN_GROUP 4

/* Offer rows [lo, hi) to one query's heap h (cap entries, *n used) by Hamming distance. */
HQ_CLONES
static void ham_heap_generic(const uint8_t *codes, int32_t nb, const hq_query *q,
                             const uint8_t *valid, const int64_t *rowids, int64_t lo, int64_t hi,
                             hq_entry *h, int64_t *n_io, int64_t cap)
{
    int64_t n = *n_io;
    uint32_t thr = n == cap ? (uint32_t)h[0].ham : UINT32_MAX;
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i = lo; i < hi; i++) {
            const uint32_t d = ham_row(codes + i * (int64_t)nb, q, NW, NTAIL);
            if (d > thr || (valid && !valid[i]))
                continue;
            hq_entry e = {(float)d, (int32_t)d, rowids[i], i};
            topk_offer(h, &n, cap, &e);
            if (n == cap)
                thr = (uint32_t)h[0].ham;
        }
    })
    *n_io = n;
}

#ifdef HQ_HAVE_AVX512
HQ_AVX512 static void ham_heap_avx512(const uint8_t *codes, int32_t nb, const hq_query *q,
                                      const uint8_t *valid, const int64_t *rowids, int64_t lo,
                                      int64_t hi, hq_entry *h, int64_t *n_io, int64_t cap)
{
    __m512i qv[2];
    avx512_query(q, qv);
    int64_t n = *n_io;
    uint32_t thr = n == cap ? (uint32_t)h[0].ham : UINT32_MAX;
    int64_t i = lo;
    HQ_AVX512_DISPATCH(q->nw, {
        __m512i vthr = _mm512_set1_epi64((int64_t)thr);
        for (; i + 8 <= hi; i += 8) {
            const __m512i d = avx512_dist8(codes + i * (int64_t)nb, qv, NW);
            unsigned near = (unsigned)_mm512_cmple_epu64_mask(d, vthr);
            if (!near) /* almost always, once the heap is full */
                continue;
            uint64_t dl[8];
            _mm512_storeu_si512((void *)dl, d);
            do {
                const int j = hq_ctz64(near);
                near &= near - 1;
                const uint32_t dj = (uint32_t)dl[j];
                if (dj > thr || (valid && !valid[i + j]))
                    continue;
                hq_entry e = {(float)dj, (int32_t)dj, rowids[i + j], i + j};
                topk_offer(h, &n, cap, &e);
                if (n == cap)
                    thr = (uint32_t)h[0].ham;
            } while (near);
            vthr = _mm512_set1_epi64((int64_t)thr);
        }
    })
    *n_io = n;
    if (i < hi) /* the last hi - i < 8 rows */
        ham_heap_generic(codes, nb, q, valid, rowids, i, hi, h, n_io, cap);
}
#endif

static void ham_heap(const uint8_t *codes, int32_t nb, const hq_query *q, const uint8_t *valid,
                     const int64_t *rowids, int64_t lo, int64_t hi, hq_entry *h, int64_t *n_io,
                     int64_t cap)
{
#ifdef HQ_HAVE_AVX512
    if (use_avx512(nb)) {
        ham_heap_avx512(codes, nb, q, valid, rowids, lo, hi, h, n_io, cap);
        return;
    }
#endif
    ham_heap_generic(codes, nb, q, valid, rowids, lo, hi, h, n_io, cap);
}


/* Room for HQ_BOUND_BLOCK more rows in kp: drop the rows beyond the bound (they can no longer
 * be among the c best), and grow the buffer if that is not enough. */
static int keep_make_room(hq_keep *kp)
{
    if (kp->n + HQ_BOUND_BLOCK <= kp->cap)
        return HQ_OK;
    if (kp->cap == 0) { /* room for twice the candidates (rows tied at the bound come on top) */
        kp->cap = 2 * kp->cap_hint + 2 * HQ_BOUND_BLOCK;
        kp->buf = (hq_hit *)malloc((size_t)kp->cap * sizeof(hq_hit));
        return kp->buf ? HQ_OK : HQ_ERR_NOMEM;
    }
    int64_t n = 0;
    for (int64_t j = 0; j < kp->n; j++) { /* branch-free: kept or not is a coin flip early on */
        kp->buf[n] = kp->buf[j];
        n += kp->buf[j].d <= kp->bound;
    }
    kp->n = n;
    if (n + HQ_BOUND_BLOCK <= kp->cap && n <= kp->cap / 2) /* else grow: no compaction each step */
        return HQ_OK;
    const int64_t cap = 2 * kp->cap + HQ_BOUND_BLOCK;
    hq_hit *buf = (hq_hit *)realloc(kp->buf, (size_t)cap * sizeof(hq_hit));
    if (!buf)
        return HQ_ERR_NOMEM;
    kp->buf = buf;
    kp->cap = cap;
    return HQ_OK;
}

#ifdef HQ_HAVE_AVX512
/* Rows [lo, lo + rows) word-major: soa[w * rows + i] is word w of row lo + i. One 64-byte load
 * then holds word w of 8 consecutive rows, so a query's 8 distances are XOR, popcount and an
 * add per word, with no shuffles across lanes (the row-major avx512_dist8 needs them). Built
 * once per block and query group, it pays for itself over the group's queries. */
static void soa_fill(const uint8_t *codes, int32_t nb, int64_t lo, int64_t rows, uint64_t *soa)
{
    const int32_t nw = nb / 8;
    for (int64_t i = 0; i < rows; i++) {
        const uint8_t *row = codes + (lo + i) * (int64_t)nb;
        for (int32_t w = 0; w < nw; w++)
            soa[w * rows + i] = load64(row + 8 * w);
    }
}

/* Where soa_scan_avx512 sends the rows within its threshold: the query's heap (kp NULL) or
 * its kept buffer. */
typedef struct {
    hq_entry *h;
    int64_t n, cap;
    hq_keep *kp;
    const uint8_t *valid;
    const int64_t *rowids;
    uint32_t thr;
} hq_soa_sink;

/* The rows of `near` (bit j: row base + j, distance dl[j]). Out of line: it runs rarely, and
 * keeping it out of the scan loop leaves that loop its registers. */
__attribute__((noinline)) static void soa_take(hq_soa_sink *sk, const uint64_t *dl, uint32_t near,
                                               int64_t base)
{
    do {
        const int j = hq_ctz64(near);
        near &= near - 1;
        const int64_t idx = base + j;
        const uint32_t d = (uint32_t)dl[j];
        if (d > sk->thr || (sk->valid && !sk->valid[idx]))
            continue;
        if (sk->kp) {
            hq_keep *kp = sk->kp;
            kp->buf[kp->n].idx = idx;
            kp->buf[kp->n].d = d;
            kp->n++;
            kp->hist[d]++;
        } else {
            hq_entry en = {(float)d, (int32_t)d, sk->rowids[idx], idx};
            topk_offer(sk->h, &sk->n, sk->cap, &en);
            if (sk->n == sk->cap)
                sk->thr = (uint32_t)sk->h[0].ham;
        }
    } while (near);
}

/* One query over the first rows & ~7 rows of a word-major block starting at row lo. Heap mode
 * (kp NULL): offers rows to the heap h (cap entries, *n_io used). Keep mode: appends the rows
 * within kp's bound to kp, tightening the bound every HQ_BOUND_BLOCK rows as ham_collect does.
 * The caller scans the last rows % 8 rows. */
HQ_AVX512 static int soa_scan_avx512(const uint64_t *soa, int64_t rows, int64_t lo,
                                     const hq_query *q, const uint8_t *valid,
                                     const int64_t *rowids, int64_t c, hq_entry *h,
                                     int64_t *n_io, int64_t cap, hq_keep *kp)
{
    __m512i qw[16];
    for (int32_t w = 0; w < q->nw; w++)
        qw[w] = _mm512_set1_epi64((int64_t)q->w[w]);
    hq_soa_sink sk = {h, kp ? 0 : *n_io, cap, kp, valid, rowids, 0};
    sk.thr = kp ? kp->bound : sk.n == cap ? (uint32_t)h[0].ham : UINT32_MAX;
    const int64_t rows8 = rows & ~(int64_t)7;
#define HQ_SOA_DIST(i)                                                                          \
    ({                                                                                          \
        __m512i acc_ = _mm512_popcnt_epi64(                                                     \
            _mm512_xor_si512(_mm512_loadu_si512((const void *)(soa + (i))), qw[0]));            \
        for (int w = 1; w < NW; w++)                                                            \
            acc_ = _mm512_add_epi64(acc_, _mm512_popcnt_epi64(_mm512_xor_si512(                 \
                _mm512_loadu_si512((const void *)(soa + (int64_t)w * rows + (i))), qw[w])));    \
        acc_;                                                                                   \
    })
    HQ_AVX512_DISPATCH(q->nw, {
        for (int64_t s = 0; s < rows8; s += HQ_BOUND_BLOCK) {
            const int64_t e = rows8 - s < HQ_BOUND_BLOCK ? rows8 : s + HQ_BOUND_BLOCK;
            if (kp && keep_make_room(kp) != HQ_OK)
                return HQ_ERR_NOMEM;
            __m512i vthr = _mm512_set1_epi64((int64_t)sk.thr);
            int64_t i = s;
            for (; i + 16 <= e; i += 16) { /* 16 rows a step: one branch for two vectors */
                const __m512i d0 = HQ_SOA_DIST(i), d1 = HQ_SOA_DIST(i + 8);
                const uint32_t near = (uint32_t)_mm512_cmple_epu64_mask(d0, vthr) |
                                      (uint32_t)_mm512_cmple_epu64_mask(d1, vthr) << 8;
                if (near) { /* rare once the threshold is tight */
                    uint64_t dl[16];
                    _mm512_storeu_si512((void *)dl, d0);
                    _mm512_storeu_si512((void *)(dl + 8), d1);
                    soa_take(&sk, dl, near, lo + i);
                    vthr = _mm512_set1_epi64((int64_t)sk.thr);
                }
            }
            if (i < e) { /* e - s is a multiple of 8: one more group of 8 at most */
                const __m512i d0 = HQ_SOA_DIST(i);
                const uint32_t near = (uint32_t)_mm512_cmple_epu64_mask(d0, vthr);
                if (near) {
                    uint64_t dl[8];
                    _mm512_storeu_si512((void *)dl, d0);
                    soa_take(&sk, dl, near, lo + i);
                }
            }
            if (kp)
                kp->bound = sk.thr = tighten_bound(kp->hist, kp->bound, c);
        }
    })
#undef HQ_SOA_DIST
    if (!kp)
        *n_io = sk.n;
    return HQ_OK;
}
#endif

/* A query's first bound for the kept-buffer route, from a sample of valid rows shared by the
 * batch: the distance within which the sample predicts about 2c rows, plus slack (as
 * guess_bound). Starting there, the scan keeps few rows from the first block on; if the guess
 * proves too small the query is searched again alone (the caller checks). */
static uint32_t sample_bound(const uint8_t *sample, int64_t n_sampled, int64_t S, int64_t n_rows,
                             int32_t nb, const hq_query *q, int64_t c, int32_t *sdist)
{
    const uint32_t nbits = (uint32_t)nb * 8;
    if (hq_path == 1)
        return nbits; /* test knob: no guess */
    if (hq_path == 2)
        return 0; /* test knob: a guess too small, so most queries take the fallback */
    int64_t sh[HQ_MAX_CODE_BYTES * 8 + 1];
    memset(sh, 0, sizeof(sh));
    ham_all(sample, nb, q, 0, n_sampled, sdist);
    for (int64_t s = 0; s < n_sampled; s++)
        sh[sdist[s]]++;
    return tighten_bound(sh, nbits, sample_target(c, S, n_rows));
}

int hq_search_many(const uint8_t *codes, int32_t nb, const void *qcodes, int32_t qcode_bytes,
                   int32_t m, const int64_t *rowids, const uint8_t *valid, int64_t n_rows,
                   int64_t n_queries, const uint8_t *query_bits, const float *luts, int32_t kw,
                   int32_t mode, int64_t k, int64_t candidates, int32_t threads,
                   int64_t *out_rowids, float *out_dist, int32_t *out_ham, int64_t *out_n)
{
    if (!out_n || n_queries < 0)
        return HQ_ERR_ARG;
    for (int64_t j = 0; j < n_queries; j++)
        out_n[j] = 0;
    if (nb < 1 || nb > HQ_MAX_CODE_BYTES || n_rows < 0 || k < 1 || candidates < 1 ||
        (n_queries > 0 && !query_bits))
        return HQ_ERR_ARG;
    if (mode != HQ_MODE_HAMMING && mode != HQ_MODE_AQD && mode != HQ_MODE_TWO_STAGE)
        return HQ_ERR_ARG;
    if (n_rows == 0 || n_queries == 0)
        return HQ_OK;
    if (!codes || !rowids || !out_rowids || !out_dist || !out_ham)
        return HQ_ERR_ARG;
    if (mode != HQ_MODE_HAMMING &&
        (!qcodes || !luts || m < 1 || kw < 1 || (qcode_bytes != 1 && qcode_bytes != 2)))
        return HQ_ERR_ARG;
    const int64_t lut_size = mode == HQ_MODE_HAMMING ? 0 : (int64_t)m * kw;
    const int64_t stride = k; /* of the outputs, whatever k is clamped to below */

    int32_t T = 1;
#ifdef _OPENMP
    T = threads < 1 ? 1 : threads > HQ_MAX_CHUNKS ? HQ_MAX_CHUNKS : threads;
#endif
    /* Fewer queries than threads, or too few to share a block's layout: each query alone,
     * with all the threads over its rows. */
    if (n_queries < T || n_queries < HQ_BATCH_MIN_GROUP) {
        for (int64_t j = 0; j < n_queries; j++) {
            const int rc = hq_search(codes, nb, qcodes, qcode_bytes, m, rowids, valid, n_rows,
                                     query_bits + j * nb, luts ? luts + j * lut_size : NULL, kw,
                                     mode, k, candidates, threads, out_rowids + j * stride,
                                     out_dist + j * stride, out_ham + j * stride, &out_n[j]);
            if (rc != HQ_OK)
                return rc;
        }
        return HQ_OK;
    }

    if (k > n_rows)
        k = n_rows;
    if (candidates > n_rows)
        candidates = n_rows;
    int64_t c = mode == HQ_MODE_HAMMING ? k : (candidates > k ? candidates : k);
    int64_t nvalid = n_rows;
    if (valid) {
        nvalid = 0;
        for (int64_t i = 0; i < n_rows; i++)
            nvalid += valid[i] != 0;
    }
    if (c > nvalid)
        c = nvalid;
    if (c == 0)
        return HQ_OK; /* no valid row: every out_n is 0 */

    const uint32_t nbits = (uint32_t)nb * 8, nbuckets = nbits + 1;
    const int hamming_stage = mode != HQ_MODE_AQD;
    const int use_heap = !hamming_stage || c <= HQ_BATCH_HEAP_MAX;
    /* "aqd": the k best by AQD; Hamming stage: the c best by (Hamming, rowid) */
    const int64_t heap_cap = hamming_stage ? c : (k < nvalid ? k : nvalid);
    int rc = HQ_OK;
    hq_query *qs = (hq_query *)malloc((size_t)n_queries * sizeof(hq_query));
    hq_keep *keeps = (hq_keep *)calloc((size_t)n_queries, sizeof(hq_keep));
    int64_t *hist = use_heap ? NULL : (int64_t *)calloc((size_t)n_queries * nbuckets, sizeof(int64_t));
    hq_entry *heaps = use_heap ? (hq_entry *)malloc((size_t)n_queries * (size_t)heap_cap * sizeof(hq_entry)) : NULL;
    int64_t *cnt = (int64_t *)calloc((size_t)n_queries, sizeof(int64_t));
    int *err = (int *)calloc((size_t)n_queries, sizeof(int));
    uint8_t *sample = NULL;
    if (!qs || !keeps || (use_heap ? !heaps : !hist) || !cnt || !err) {
        rc = HQ_ERR_NOMEM;
        goto done;
    }
    /* The rows sampled for the kept-buffer route's first bounds (sample_bound): every
     * (n_rows / S)-th row, valid ones only, copied together once for the whole batch. */
    const int64_t S = use_heap ? 0 : n_rows < HQ_SAMPLE_ROWS ? n_rows : HQ_SAMPLE_ROWS;
    int64_t n_sampled = 0;
    if (S) {
        sample = (uint8_t *)malloc((size_t)S * (size_t)nb);
        if (!sample) {
            rc = HQ_ERR_NOMEM;
            goto done;
        }
        for (int64_t s = 0; s < S; s++) {
            const int64_t i = s * n_rows / S;
            if (!valid || valid[i])
                memcpy(sample + n_sampled++ * nb, codes + i * (int64_t)nb, (size_t)nb);
        }
    }
    for (int64_t j = 0; j < n_queries; j++) {
        query_prepare(&qs[j], query_bits + j * nb, nb);
        if (!use_heap) {
            keeps[j].hist = hist + j * nbuckets;
            keeps[j].bound = nbits;
            keeps[j].cap_hint = c;
        }
    }

    int64_t block = HQ_BATCH_BLOCK_BYTES / (hamming_stage ? nb : m * qcode_bytes);
    block = block < HQ_BOUND_BLOCK ? HQ_BOUND_BLOCK : block - block % HQ_BOUND_BLOCK;
    /* One group per thread: each block is read from memory once per thread (the threads scan
     * about the same block at the same time, so the second read mostly hits the shared L3). */
    const int64_t group = (n_queries + T - 1) / T;
    const int64_t n_groups = (n_queries + group - 1) / group;
#ifdef HQ_HAVE_AVX512
    /* Word-major blocks for the AVX-512 scan; a group that can't get its scratch block uses
     * the row-major scans (same results). */
    const int use_soa = hamming_stage && group >= HQ_BATCH_MIN_GROUP && use_avx512(nb);
#endif

#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(dynamic, 1) if (T > 1)
#endif
    for (int64_t g = 0; g < n_groups; g++) {
        const int64_t j0 = g * group, j1 = n_queries - j0 < group ? n_queries : j0 + group;
        if (S) {
            int32_t *sdist = (int32_t *)malloc((size_t)S * sizeof(int32_t));
            for (int64_t j = j0; j < j1; j++) {
                if (sdist)
                    keeps[j].bound = sample_bound(sample, n_sampled, S, n_rows, nb, &qs[j], c, sdist);
            }
            free(sdist); /* without it the bounds stay at the code width: slower, same results */
        }
#ifdef HQ_HAVE_AVX512
        uint64_t *soa = use_soa ? (uint64_t *)malloc((size_t)block * (size_t)nb) : NULL;
#endif
        for (int64_t lo = 0; lo < n_rows; lo += block) {
            const int64_t hi = n_rows - lo < block ? n_rows : lo + block;
#ifdef HQ_HAVE_AVX512
            if (soa) {
                const int64_t tail = lo + ((hi - lo) & ~(int64_t)7);
                soa_fill(codes, nb, lo, hi - lo, soa);
                for (int64_t j = j0; j < j1; j++) {
                    hq_keep *kp = use_heap ? NULL : &keeps[j];
                    if (err[j])
                        continue;
                    if (soa_scan_avx512(soa, hi - lo, lo, &qs[j], valid, rowids, c,
                                        heaps + j * heap_cap, &cnt[j], heap_cap, kp) != HQ_OK) {
                        err[j] = HQ_ERR_NOMEM;
                        continue;
                    }
                    if (tail == hi)
                        continue;
                    if (use_heap)
                        ham_heap_generic(codes, nb, &qs[j], valid, rowids, tail, hi,
                                         heaps + j * heap_cap, &cnt[j], heap_cap);
                    else if (keep_make_room(kp) != HQ_OK)
                        err[j] = HQ_ERR_NOMEM;
                    else
                        ham_collect(codes, nb, &qs[j], valid, tail, hi, c, kp);
                }
                continue;
            }
#endif
            for (int64_t j = j0; j < j1; j++) {
                if (err[j])
                    continue;
                if (!hamming_stage) {
                    if (aqd_range(qcodes, qcode_bytes, m, rowids, valid, lo, hi,
                                  luts + j * lut_size, kw, heaps + j * heap_cap, heap_cap,
                                  &cnt[j]) != HQ_OK)
                        err[j] = HQ_ERR_QCODE;
                    continue;
                }
                if (use_heap) {
                    ham_heap(codes, nb, &qs[j], valid, rowids, lo, hi, heaps + j * heap_cap,
                             &cnt[j], heap_cap);
                    continue;
                }
                hq_keep *kp = &keeps[j];
                for (int64_t s = lo; s < hi; s += HQ_BOUND_BLOCK) {
                    if (keep_make_room(kp) != HQ_OK) {
                        err[j] = HQ_ERR_NOMEM;
                        break;
                    }
                    ham_collect(codes, nb, &qs[j], valid, s,
                                hi - s < HQ_BOUND_BLOCK ? hi : s + HQ_BOUND_BLOCK, c, kp);
                }
            }
        }
#ifdef HQ_HAVE_AVX512
        free(soa);
#endif
        /* Rank the group's queries while their buffers are still warm. */
        for (int64_t j = j0; j < j1; j++) {
            if (err[j])
                continue;
            int64_t *orow = out_rowids + j * stride;
            float *odist = out_dist + j * stride;
            int32_t *oham = out_ham + j * stride;
            const float *lut = hamming_stage && mode == HQ_MODE_HAMMING ? NULL : luts + j * lut_size;
            if (hamming_stage && use_heap) {
                err[j] = rank_candidates(heaps + j * heap_cap, cnt[j], mode, k, qcodes,
                                         qcode_bytes, m, lut, kw, orow, odist, oham, &out_n[j]);
                continue;
            }
            if (hamming_stage) {
                int64_t within = 0; /* rows kept within the final bound: all of them there */
                for (uint32_t d = 0; d <= keeps[j].bound; d++)
                    within += keeps[j].hist[d];
                if (within < c) /* the sampled guess was too small: this query alone */
                    err[j] = hq_search(codes, nb, qcodes, qcode_bytes, m, rowids, valid, n_rows,
                                       query_bits + j * nb, lut, kw, mode, k, candidates, 1, orow,
                                       odist, oham, &out_n[j]);
                else
                    err[j] = rank_kept(&keeps[j], 1, keeps[j].hist, c, rowids, mode, k, qcodes,
                                       qcode_bytes, m, lut, kw, orow, odist, oham, &out_n[j]);
                continue;
            }
            hq_entry *h = heaps + j * heap_cap;
            const int64_t r = k < cnt[j] ? k : cnt[j];
            select_sorted(h, cnt[j], r);
            for (int64_t e = 0; e < r; e++) {
                orow[e] = h[e].rowid;
                odist[e] = h[e].d;
                oham[e] = (int32_t)ham_row(codes + h[e].idx * (int64_t)nb, &qs[j], qs[j].nw,
                                           qs[j].ntail);
            }
            out_n[j] = r;
        }
    }
    for (int64_t j = 0; j < n_queries; j++)
        if (err[j]) {
            rc = err[j];
            break;
        }

done:
    if (keeps)
        for (int64_t j = 0; j < n_queries; j++)
            free(keeps[j].buf);
    free(sample);
    free(qs);
    free(keeps);
    free(hist);
    free(heaps);
    free(cnt);
    free(err);
    return rc;
}
