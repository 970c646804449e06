/* Internal declarations shared by the kernel sources (see hq_kernels.h for the list).
 *
 * Results must be bit-identical to hqdb/kernels/_numba.py and independent of the thread
 * count, so:
 *   - every ranking uses one strict total order: (distance, rowid, slot index);
 *   - float sums run in a fixed sequential order (built with -ffp-contract=off, never
 *     -ffast-math);
 *   - rows are split into contiguous chunks whose partial results are merged in chunk order,
 *     and a chunk's result does not depend on which thread ran it.
 */
#ifndef HQ_COMMON_H
#define HQ_COMMON_H

#include "hq_kernels.h"

#include <stdlib.h>
#include <string.h>

/* Shared between the sources, not exported from the extension. */
#if defined(__GNUC__)
#define HQ_INTERNAL __attribute__((visibility("hidden")))
#else
#define HQ_INTERNAL
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

/* AVX-512 VPOPCNTDQ scans (hq_scan_avx512.c). GCC 12 can't dispatch this ISA through
 * target_clones, so they get their own target attribute and a check at run time. */
#if defined(HQ_X86_GNUC) && !defined(HQ_NO_AVX512) && (defined(__clang__) || __GNUC__ >= 8)
#define HQ_HAVE_AVX512 1
#endif

/* AVX2 scans (hq_scan_avx2.c): a target attribute and the same check at run time. */
#if defined(HQ_X86_GNUC) && !defined(HQ_NO_AVX2) && (defined(__clang__) || __GNUC__ >= 5)
#define HQ_HAVE_AVX2 1
#endif

/* NEON scans (hq_scan_neon.c): aarch64 only, where every CPU has Advanced SIMD (no check at run
 * time). HQ_PORTABLE leaves them out as it does the x86 paths. */
#if defined(__aarch64__) && defined(__GNUC__) && !defined(HQ_PORTABLE) && !defined(HQ_NO_NEON)
#define HQ_HAVE_NEON 1
#endif

#define HQ_MAX_CHUNKS 64
/* The scans tighten their bound (tighten_bound) every this many rows. */
#define HQ_BOUND_BLOCK 1024
/* Scans prefetch the code bytes this far ahead of the rows they score (hq_prefetch). The
 * hardware prefetcher alone left a one-thread AVX2 scan of 16 MB at ~11 GB/s, half the memory's
 * streaming rate; 4 KB ahead brought it to ~25 GB/s (1 KB: ~16, 8-16 KB: the same as 4), on
 * 1M x 16-byte codes, AVX2 EPYC, 2026-12-06; `python bench/search.py --isa` times the result
 * against the memory floor (bench/RESULTS.md). */
#ifndef HQ_PREFETCH_BYTES
#define HQ_PREFETCH_BYTES 4096
#endif
/* Rows sampled for a first guess of the Hamming bound (guess_bound, sample_bound). */
#define HQ_SAMPLE_ROWS 4096

/* ---------------------------------------------------------------------------------------- */
/* Bits                                                                                       */

/* Prefetch the cache line holding *p. */
static inline void hq_prefetch_line(const void *p)
{
#if defined(__GNUC__)
    __builtin_prefetch(p, 0, 3);
#else
    (void)p;
#endif
}

/* Prefetch the cache lines of the `bytes` bytes (a row or a few) HQ_PREFETCH_BYTES past p. The
 * address is computed as an integer: it may lie past the end of the codes (a prefetch never
 * faults), and pointer arithmetic there would be undefined. */
static inline void hq_prefetch(const uint8_t *p, int64_t bytes)
{
    const uintptr_t at = (uintptr_t)p + HQ_PREFETCH_BYTES;
    for (int64_t o = 0; o < bytes; o += 64)
        hq_prefetch_line((const void *)(at + (uintptr_t)o));
}

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

/* Bit j set iff byte j of the 8 at p is nonzero (a validity mask's 8 rows), in plain integer
 * ops: bit 7 of each byte of t is "byte != 0", gathered by one multiply (no carries: every
 * product term lands on its own bit). */
static inline unsigned nonzero8(const uint8_t *p)
{
    const uint64_t x = load64(p);
    const uint64_t t =
        (((x & 0x7F7F7F7F7F7F7F7FULL) + 0x7F7F7F7F7F7F7F7FULL) | x) & 0x8080808080808080ULL;
    return (unsigned)(((t >> 7) * 0x0102040810204080ULL) >> 56);
}

/* The query split the same way as a row, so XOR + popcount compares like with like. */
typedef struct {
    uint64_t w[HQ_MAX_CODE_BYTES / 8];
    uint64_t tail;
    int32_t nw, ntail;
} hq_query;

static inline void query_prepare(hq_query *q, const uint8_t *bits, int32_t nb)
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

/* ---------------------------------------------------------------------------------------- */
/* Ranking: one strict total order, bounded max-heaps for top-k (hq_select.c).               */

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
    if (a->ham != b->ham) /* equal distance: the smaller Hamming distance first (issue 16) */
        return a->ham < b->ham;
    if (a->rowid != b->rowid)
        return a->rowid < b->rowid;
    return a->idx < b->idx;
}

/* Bounded max-heaps: restore the heap order below / above slot i. */
HQ_INTERNAL void sift_down(hq_entry *h, int64_t n, int64_t i);
HQ_INTERNAL void sift_up(hq_entry *h, int64_t i);
/* Keep in h (a max-heap of capacity cap, *n used) the cap smallest entries offered. Out of line
 * (as the heap's sifts): the scans call it rarely, after their own cheaper test, and inlining
 * it into their hot loops makes them slower. */
HQ_INTERNAL void topk_offer(hq_entry *h, int64_t *n, int64_t cap, const hq_entry *e);

/* Reorder h[0..n) so that h[0..r) holds its r smallest entries, sorted ascending. */
HQ_INTERNAL void select_sorted(hq_entry *h, int64_t n, int64_t r);
/* Reorder h[0..n) so that h[0..r) holds its r smallest entries, in no particular order. */
HQ_INTERNAL void select_smallest(hq_entry *h, int64_t n, int64_t r);
/* e[j].rowid = rowids[e[j].idx] for the n entries. */
HQ_INTERNAL void fill_rowids(hq_entry *e, int64_t n, const int64_t *rowids);

/* ---------------------------------------------------------------------------------------- */
/* Histogram threshold (hq_select.c)                                                          */

/* The smallest b <= bound with hist[0] + ... + hist[b] >= c, else bound. Inline: the scans
 * call it every HQ_BOUND_BLOCK rows. */
static inline uint32_t tighten_bound(const int64_t *hist, uint32_t bound, int64_t c)
{
    int64_t cum = 0;
    for (uint32_t b = 0; b <= bound; b++) {
        cum += hist[b];
        if (cum >= c)
            return b;
    }
    return bound;
}
/* The threshold d* (<= bound) of the c best by distance, given exact counts tot[0..bound] with at
 * least c rows in all: *below rows lie strictly closer (fewer than c), at least c within d*. */
HQ_INTERNAL uint32_t threshold(const int64_t *tot, uint32_t bound, int64_t c, int64_t *below);
/* How many of S sampled rows (out of n_rows) a guessed bound should cover: about 2c rows of the
 * whole table, plus a little slack. */
HQ_INTERNAL int64_t sample_target(int64_t c, int64_t S, int64_t n_rows);

/* Pass 2 of the full route over rows [lo, hi) of the distances dist: every row closer than
 * dstar into `below`; rows at dstar into `eq`, all of them if they fit (eq_count <= eq_cap),
 * else a bounded heap keeps the eq_cap smallest by (rowid, idx). */
HQ_INTERNAL void collect_range(const uint16_t *dist, const int64_t *rowids, int64_t lo, int64_t hi,
                               uint32_t dstar, hq_entry *below, hq_entry *eq, int64_t eq_cap,
                               int64_t eq_count);

/* ---------------------------------------------------------------------------------------- */
/* Hamming scans (hq_scan.c, hq_scan_avx2.c, hq_scan_avx512.c, hq_scan_neon.c)              */

/* The rows a scan keeps: every valid row within `bound`, which tightens as they come in. */
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

/* Each scan covers rows [lo, hi) of the table `a` (its codes, code_bytes, valid, rowids) and
 * takes the path scan_isa(nb) names (hq_scan.c dispatches). */

/* Pass 1 of the full route: every row's distance into dist (invalid rows get `inval`, above
 * every real distance) and a histogram exact for every distance <= *bound on return; returns
 * the number of valid rows. */
HQ_INTERNAL int64_t ham_pass1(const hq_search_args *a, const hq_query *q, int64_t lo, int64_t hi,
                              uint16_t *dist, int64_t *hist, uint32_t inval, int64_t c,
                              uint32_t *bound);
/* Every row's distance into out[lo..hi) (no validity). */
HQ_INTERNAL void ham_all(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo,
                         int64_t hi, int32_t *out);
/* The fast route: append the valid rows within kp->bound to kp (overflow set when full);
 * returns the number of valid rows. */
HQ_INTERNAL int64_t ham_collect(const hq_search_args *a, const hq_query *q, int64_t lo, int64_t hi,
                                int64_t c, hq_keep *kp);
/* Offer the valid rows to the heap h (cap entries, *n_io used) by (Hamming, rowid, idx). */
HQ_INTERNAL void ham_heap(const hq_search_args *a, const hq_query *q, int64_t lo, int64_t hi,
                          hq_entry *h, int64_t *n_io, int64_t cap);

/* The portable versions, which the vector ones use for the rows that don't fill a vector. */
HQ_INTERNAL int64_t ham_pass1_generic(const hq_search_args *a, const hq_query *q, int64_t lo,
                                      int64_t hi, uint16_t *dist, int64_t *hist, uint32_t inval,
                                      int64_t c, uint32_t *bound);
/* Histogram sh of the distances of the valid rows among S evenly strided over all the rows (the
 * fast route's guess). */
HQ_INTERNAL void ham_sample(const hq_search_args *a, const hq_query *q, int64_t S, int64_t *sh);
HQ_INTERNAL void ham_all_generic(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo,
                                 int64_t hi, int32_t *out);
HQ_INTERNAL int64_t ham_collect_generic(const hq_search_args *a, const hq_query *q, int64_t lo,
                                        int64_t hi, int64_t c, hq_keep *kp);
HQ_INTERNAL void ham_heap_generic(const hq_search_args *a, const hq_query *q, int64_t lo,
                                  int64_t hi, hq_entry *h, int64_t *n_io, int64_t cap);

#ifdef HQ_HAVE_AVX512
HQ_INTERNAL int64_t ham_pass1_avx512(const hq_search_args *a, const hq_query *q, int64_t lo,
                                     int64_t hi, uint16_t *dist, int64_t *hist, uint32_t inval,
                                     int64_t c, uint32_t *bound);
HQ_INTERNAL void ham_all_avx512(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo,
                                int64_t hi, int32_t *out);
HQ_INTERNAL int64_t ham_collect_avx512(const hq_search_args *a, const hq_query *q, int64_t lo,
                                       int64_t hi, int64_t c, hq_keep *kp);
HQ_INTERNAL void ham_heap_avx512(const hq_search_args *a, const hq_query *q, int64_t lo,
                                 int64_t hi, hq_entry *h, int64_t *n_io, int64_t cap);
#endif

/* The same four scans for each vector path: the rows that don't fill a vector go to the
 * portable versions. */
#define HQ_DECLARE_SCANS(sfx)                                                                   \
    HQ_INTERNAL int64_t ham_pass1_##sfx(const hq_search_args *a, const hq_query *q, int64_t lo,  \
                                        int64_t hi, uint16_t *dist, int64_t *hist,             \
                                        uint32_t inval, int64_t c, uint32_t *bound);           \
    HQ_INTERNAL void ham_all_##sfx(const uint8_t *codes, int32_t nb, const hq_query *q,        \
                                   int64_t lo, int64_t hi, int32_t *out);                      \
    HQ_INTERNAL int64_t ham_collect_##sfx(const hq_search_args *a, const hq_query *q,          \
                                          int64_t lo, int64_t hi, int64_t c, hq_keep *kp);     \
    HQ_INTERNAL void ham_heap_##sfx(const hq_search_args *a, const hq_query *q, int64_t lo,    \
                                    int64_t hi, hq_entry *h, int64_t *n_io, int64_t cap);
#ifdef HQ_HAVE_AVX2
HQ_DECLARE_SCANS(avx2)
#endif
#ifdef HQ_HAVE_NEON
HQ_DECLARE_SCANS(neon)
#endif

/* Room for HQ_BOUND_BLOCK more rows in kp (the batched search's kept buffers): drop the rows
 * beyond the bound, grow the buffer if that is not enough. */
HQ_INTERNAL int keep_make_room(hq_keep *kp);

/* A block of rows [lo, hi) as the batched search scans it for a group of queries: row-major
 * (the table itself), or with AVX-512 also copied word-major into `soa` so the distances of 8
 * rows need no shuffles across lanes. */
typedef struct {
    int64_t lo, hi;
    uint64_t *soa; /* NULL: scan row-major */
} hq_block;

/* Scratch for word-major blocks of up to `rows` rows, or NULL where they would not be used
 * (no AVX-512 path for this code size); free() it. */
HQ_INTERNAL uint64_t *block_scratch(int32_t nb, int64_t rows);
/* Lay out rows [lo, hi) in blk (word-major if it has scratch). */
HQ_INTERNAL void block_load(const hq_search_args *a, hq_block *blk, int64_t lo, int64_t hi);
/* ham_heap over a block. */
HQ_INTERNAL void block_heap(const hq_search_args *a, const hq_block *blk, const hq_query *q,
                            hq_entry *h, int64_t *n_io, int64_t cap);
/* ham_collect over a block into a kept buffer that grows as needed (never overflows). */
HQ_INTERNAL int block_collect(const hq_search_args *a, const hq_block *blk, const hq_query *q,
                              int64_t c, hq_keep *kp);

#ifdef HQ_HAVE_AVX512
HQ_INTERNAL void soa_fill(const uint8_t *codes, int32_t nb, int64_t lo, int64_t rows,
                          uint64_t *soa);
/* The first rows & ~7 rows of a word-major block: to the heap h (kp NULL) or to the kept
 * buffer kp. */
HQ_INTERNAL int soa_scan_avx512(const hq_search_args *a, const hq_block *blk, const hq_query *q,
                                int64_t c, hq_entry *h, int64_t *n_io, int64_t cap, hq_keep *kp);
#endif

/* ---------------------------------------------------------------------------------------- */
/* AQD re-rank (hq_rerank.c)                                                                  */

/* "aqd" mode over rows [lo, hi): score every valid row with lut, keep the cap best in the heap
 * h (which holds *n_io entries on entry). HQ_ERR_QCODE on a code >= codewords. */
HQ_INTERNAL int aqd_range(const hq_search_args *a, const hq_query *q, const float *lut, int64_t lo, int64_t hi,
                          hq_entry *h, int64_t cap, int64_t *n_io);

/* Query j's lookup table (NULL in Hamming mode). */
static inline const float *lut_of(const hq_search_args *a, int64_t j)
{
    return a->mode == HQ_MODE_HAMMING ? NULL : a->luts + j * (int64_t)a->books * a->codewords;
}

/* Where one query's results go. */
typedef struct {
    int64_t *rowids;
    float *dist;
    int32_t *ham;
    int64_t *n;
} hq_out;

/* Query j's share of the outputs of a. */
static inline hq_out out_of(const hq_search_args *a, int64_t j)
{
    hq_out o = {a->out_rowids + j * a->k, a->out_dist + j * a->k, a->out_ham + j * a->k,
                a->out_n + j};
    return o;
}

/* The last step of the Hamming-stage modes, given the c candidate rows (ham, rowid, idx set):
 * "hamming" sorts them by (ham, rowid); "two_stage" scores them by AQD and keeps the top k. */
HQ_INTERNAL int rank_candidates(const hq_search_args *a, hq_entry *cand, int64_t c,
                                const float *lut, hq_out out);
/* The last step of "aqd" mode: the k best of the n scored entries h, with their Hamming
 * distances. */
HQ_INTERNAL void rank_scored(const hq_search_args *a, hq_entry *h, int64_t n, const hq_query *q,
                             hq_out out);
/* The end of the fast route and the batch's kept buffers: from the rows kept by T scans
 * (tot[d] = their count at distance d, exact up to some bound with at least c rows within it),
 * the c best by (Hamming, rowid), ranked by rank_candidates. */
HQ_INTERNAL int rank_kept(const hq_search_args *a, const hq_keep *keep, int32_t T,
                          const int64_t *tot, int64_t c, const float *lut, hq_out out);

/* ---------------------------------------------------------------------------------------- */
/* Searches (hq_search.c, hq_batch.c)                                                          */

/* Internal: the arguments are fine but there is nothing to search (every out_n is 0). */
#define HQ_EMPTY 1

/* The one argument check of hq_search and hq_search_many: zeroes out_n, then HQ_OK, HQ_EMPTY
 * or HQ_ERR_ARG. */
HQ_INTERNAL int check_args(const hq_search_args *a);
/* Query j of a (checked) by the single-query routes, with `threads` threads over its rows. */
HQ_INTERNAL int search_query(const hq_search_args *a, int64_t j, int32_t threads);
/* Hamming stage candidates c for a: k in "hamming" mode, max(candidates, k) otherwise. */
static inline int64_t stage_candidates(const hq_search_args *a, int64_t k, int64_t candidates)
{
    return a->mode == HQ_MODE_HAMMING ? k : (candidates > k ? candidates : k);
}

/* ---------------------------------------------------------------------------------------- */
/* CPU, knobs, threads (hq_cpu.c)                                                             */

/* The knobs in use (hq_knobs in hq_kernels.h). */
extern HQ_INTERNAL hq_knobs hq_knob;
/* The path (HQ_ISA_*, never AUTO) the scans of nb-byte codes take: the knob's (or the best
 * available) for 8/16/32/64/128-byte codes, HQ_ISA_SCALAR for the others. */
HQ_INTERNAL int scan_isa(int32_t nb);
/* Threads for n_rows rows: at most `threads`, HQ_MAX_CHUNKS, one per min_chunk_rows rows. */
HQ_INTERNAL int32_t n_chunks(int64_t n_rows, int32_t threads);

static inline int64_t chunk_lo(int64_t n_rows, int32_t nchunks, int32_t t)
{
    /* n_rows * t cannot overflow: n_rows < 2^56 in any real table, t <= HQ_MAX_CHUNKS. */
    return n_rows * t / nchunks;
}

#endif
