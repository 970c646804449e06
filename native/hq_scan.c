/* Hamming scans, portable code: the distance of every row to the query (XOR + popcount), with
 * what each stage of a search keeps of them. Multi-versioned (HQ_CLONES) so the hardware
 * popcount is used where the CPU has it; hq_scan_avx2.c, hq_scan_avx512.c and hq_scan_neon.c
 * have the same scans 8 rows a step, and the dispatchers below pick the path (scan_isa).
 *
 * Only the c closest rows matter to a search, so the scans keep a bound b on the c-th smallest
 * distance d*: once the rows seen so far include c with distance <= b, d* <= b too, and rows
 * farther than b can be left out. The bound shrinks as a scan goes on (tighten_bound every
 * HQ_BOUND_BLOCK rows), so after a short start almost no row is kept. Each chunk's bound is an
 * upper bound on the global d*, and its counts are exact below it. */
#include "hq_common.h"

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

HQ_CLONES
HQ_INTERNAL int64_t ham_pass1_generic(const hq_search_args *a, const hq_query *q, int64_t lo,
                                      int64_t hi, uint16_t *dist, int64_t *hist, uint32_t inval,
                                      int64_t c, uint32_t *bound_io)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
    uint32_t bound = *bound_io;
    int64_t nvalid = 0;
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i0 = lo; i0 < hi; i0 += HQ_BOUND_BLOCK) {
            const int64_t i1 = hi - i0 < HQ_BOUND_BLOCK ? hi : i0 + HQ_BOUND_BLOCK;
            for (int64_t i = i0; i < i1; i++) {
                hq_prefetch(codes + i * (int64_t)nb, nb);
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

/* The guess's sample (guess_bound in hq_search.c): the histogram `sh` of the distances of the
 * valid rows among S evenly strided over the n_rows. The strided rows miss the caches and the
 * TLB one by one, so each is prefetched a few samples ahead. */
#define HQ_SAMPLE_AHEAD 8
HQ_CLONES
HQ_INTERNAL void ham_sample(const hq_search_args *a, const hq_query *q, int64_t S, int64_t *sh)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int64_t n_rows = a->n_rows, nb = a->code_bytes;
    for (int64_t s = 0; s < S; s++) {
        if (s + HQ_SAMPLE_AHEAD < S) {
            const int64_t ahead = (s + HQ_SAMPLE_AHEAD) * n_rows / S;
            hq_prefetch_line(codes + ahead * nb);
            if (valid)
                hq_prefetch_line(valid + ahead);
        }
        const int64_t i = s * n_rows / S;
        if (!valid || valid[i])
            sh[ham_row(codes + i * nb, q, q->nw, q->ntail)]++;
    }
}

HQ_CLONES
HQ_INTERNAL void ham_all_generic(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo,
                                 int64_t hi, int32_t *out)
{
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i = lo; i < hi; i++)
            out[i] = (int32_t)ham_row(codes + i * (int64_t)nb, q, NW, NTAIL);
    })
}

HQ_CLONES
HQ_INTERNAL int64_t ham_collect_generic(const hq_search_args *a, const hq_query *q, int64_t lo,
                                        int64_t hi, int64_t c, hq_keep *kp)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
    uint32_t bound = kp->bound;
    int64_t n = kp->n, nvalid = 0; /* appends to the rows kept so far */
    hq_hit *buf = kp->buf;
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i0 = lo; i0 < hi; i0 += HQ_BOUND_BLOCK) {
            const int64_t i1 = hi - i0 < HQ_BOUND_BLOCK ? hi : i0 + HQ_BOUND_BLOCK;
            for (int64_t i = i0; i < i1; i++) {
                hq_prefetch(codes + i * (int64_t)nb, nb);
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

HQ_CLONES
HQ_INTERNAL void ham_heap_generic(const hq_search_args *a, const hq_query *q, int64_t lo,
                                  int64_t hi, hq_entry *h, int64_t *n_io, int64_t cap)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int64_t *rowids = a->rowids;
    const int32_t nb = a->code_bytes;
    int64_t n = *n_io;
    uint32_t thr = n == cap ? (uint32_t)h[0].ham : UINT32_MAX;
    HQ_DISPATCH_NB(nb, q, {
        for (int64_t i = lo; i < hi; i++) {
            hq_prefetch(codes + i * (int64_t)nb, nb);
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

/* ---------------------------------------------------------------------------------------- */
/* Dispatch: the path scan_isa names (checked per call: the knob may change).                */

/* `ret` the call ham_<stage>_<path>(args...) for the path in use; paths this build lacks are
 * never named by scan_isa (hq_knobs_set refuses them). */
#ifdef HQ_HAVE_AVX2
#define HQ_CASE_AVX2(ret, stage, ...) case HQ_ISA_AVX2: ret ham_##stage##_avx2(__VA_ARGS__); break;
#else
#define HQ_CASE_AVX2(ret, stage, ...)
#endif
#ifdef HQ_HAVE_AVX512
#define HQ_CASE_AVX512(ret, stage, ...) case HQ_ISA_AVX512: ret ham_##stage##_avx512(__VA_ARGS__); break;
#else
#define HQ_CASE_AVX512(ret, stage, ...)
#endif
#ifdef HQ_HAVE_NEON
#define HQ_CASE_NEON(ret, stage, ...) case HQ_ISA_NEON: ret ham_##stage##_neon(__VA_ARGS__); break;
#else
#define HQ_CASE_NEON(ret, stage, ...)
#endif
#define HQ_PICK(nb, ret, stage, ...)                      \
    switch (scan_isa(nb)) {                               \
    HQ_CASE_AVX2(ret, stage, __VA_ARGS__)                 \
    HQ_CASE_AVX512(ret, stage, __VA_ARGS__)               \
    HQ_CASE_NEON(ret, stage, __VA_ARGS__)                 \
    default: ret ham_##stage##_generic(__VA_ARGS__); break; \
    }

HQ_INTERNAL int64_t ham_pass1(const hq_search_args *a, const hq_query *q, int64_t lo, int64_t hi,
                              uint16_t *dist, int64_t *hist, uint32_t inval, int64_t c,
                              uint32_t *bound)
{
    int64_t r;
    HQ_PICK(a->code_bytes, r =, pass1, a, q, lo, hi, dist, hist, inval, c, bound)
    return r;
}

HQ_INTERNAL void ham_all(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo,
                         int64_t hi, int32_t *out)
{
    HQ_PICK(nb, (void), all, codes, nb, q, lo, hi, out)
}

HQ_INTERNAL int64_t ham_collect(const hq_search_args *a, const hq_query *q, int64_t lo, int64_t hi,
                                int64_t c, hq_keep *kp)
{
    int64_t r;
    HQ_PICK(a->code_bytes, r =, collect, a, q, lo, hi, c, kp)
    return r;
}

HQ_INTERNAL void ham_heap(const hq_search_args *a, const hq_query *q, int64_t lo, int64_t hi,
                          hq_entry *h, int64_t *n_io, int64_t cap)
{
    HQ_PICK(a->code_bytes, (void), heap, a, q, lo, hi, h, n_io, cap)
}

/* ---------------------------------------------------------------------------------------- */
/* Blocks of the batched search                                                               */

HQ_INTERNAL int keep_make_room(hq_keep *kp)
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

HQ_INTERNAL uint64_t *block_scratch(int32_t nb, int64_t rows)
{
#ifdef HQ_HAVE_AVX512
    if (scan_isa(nb) == HQ_ISA_AVX512)
        return (uint64_t *)malloc((size_t)rows * (size_t)nb);
#else
    (void)nb;
    (void)rows;
#endif
    return NULL; /* also when malloc fails: the row-major scans give the same results */
}

HQ_INTERNAL void block_load(const hq_search_args *a, hq_block *blk, int64_t lo, int64_t hi)
{
    blk->lo = lo;
    blk->hi = hi;
#ifdef HQ_HAVE_AVX512
    if (blk->soa)
        soa_fill(a->codes, a->code_bytes, lo, hi - lo, blk->soa);
#else
    (void)a;
#endif
}

/* The rows of blk the word-major scan leaves (all of them without one). */
static int64_t block_tail(const hq_block *blk)
{
    return blk->soa ? blk->lo + ((blk->hi - blk->lo) & ~(int64_t)7) : blk->lo;
}

HQ_INTERNAL void block_heap(const hq_search_args *a, const hq_block *blk, const hq_query *q,
                            hq_entry *h, int64_t *n_io, int64_t cap)
{
#ifdef HQ_HAVE_AVX512
    if (blk->soa)
        soa_scan_avx512(a, blk, q, 0, h, n_io, cap, NULL);
#endif
    ham_heap(a, q, block_tail(blk), blk->hi, h, n_io, cap);
}

HQ_INTERNAL int block_collect(const hq_search_args *a, const hq_block *blk, const hq_query *q,
                              int64_t c, hq_keep *kp)
{
#ifdef HQ_HAVE_AVX512
    if (blk->soa && soa_scan_avx512(a, blk, q, c, NULL, NULL, 0, kp) != HQ_OK)
        return HQ_ERR_NOMEM;
#endif
    for (int64_t s = block_tail(blk); s < blk->hi; s += HQ_BOUND_BLOCK) {
        if (keep_make_room(kp) != HQ_OK)
            return HQ_ERR_NOMEM;
        ham_collect(a, q, s, blk->hi - s < HQ_BOUND_BLOCK ? blk->hi : s + HQ_BOUND_BLOCK, c, kp);
    }
    return HQ_OK;
}

/* ---------------------------------------------------------------------------------------- */

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

int hq_pack_bits(const float *x, int64_t n, uint8_t *out)
{
    if (!x || !out || n < 8 || n % 8)
        return HQ_ERR_ARG;
    for (int64_t i = 0; i < n; i++) { /* every value first: nothing is written for a bad one */
        uint32_t u;
        memcpy(&u, x + i, sizeof u);
        if ((u & 0x7F800000u) == 0x7F800000u) /* all-ones exponent: NaN or infinity */
            return HQ_ERR_ARG;
    }
    for (int64_t j = 0; j < n / 8; j++) {
        uint8_t b = 0;
        for (int r = 0; r < 8; r++)
            b |= (uint8_t)((x[8 * j + r] > 0.0f) << r);
        out[j] = b;
    }
    return HQ_OK;
}
