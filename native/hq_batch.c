/* Batched search (hq_search_many): many queries over the same rows in one call.
 *
 * The queries are split into one group per thread; a group walks the rows in blocks small
 * enough to stay in L2 (HQ_BATCH_BLOCK_BYTES of codes) and every query of the group scans a
 * block before the next one is loaded, so each code is read from memory once per thread
 * instead of once per query. No barrier per block: on a shared machine a thread that is
 * descheduled does not stall the others at every block.
 *
 * What a query keeps as the blocks go by, by route:
 *   - "aqd" mode: a bounded heap of its k best rows by AQD (aqd_range);
 *   - Hamming stage, small c (<= HQ_BATCH_HEAP_MAX): a bounded heap of its c best rows by
 *     (Hamming, rowid, slot), one compare per row against the heap's top (block_heap);
 *   - Hamming stage, larger c: the fast route's kept buffer (block_collect), whose bound starts
 *     from a sample (sample_bound) and tightens as rows come in; the buffer is compacted or
 *     grown between HQ_BOUND_BLOCK-row steps, so it never overflows. If the sampled bound
 *     proves too small, that query is searched again alone (search_query).
 * With AVX-512 the Hamming stage scans blocks laid out word-major (hq_block). Either way a
 * query's result is the same set under the same strict total order as hq_search's, ranked by the
 * same code, so results are identical to running the queries one by one, for any thread count
 * or grouping. */
#include "hq_common.h"

#define HQ_BATCH_BLOCK_BYTES (256 * 1024)
/* Up to this many candidates a query's Hamming stage keeps a heap (one integer compare per
 * row, no bookkeeping); beyond it, heap updates cost more than the fast route's kept buffer. */
#define HQ_BATCH_HEAP_MAX 32
/* Fewer queries than this per thread: one by one (hq_search) is as fast, its fast route needs
 * no per-query state for the whole scan, and laying blocks out word-major would not pay. */
#define HQ_BATCH_MIN_GROUP 4

/* One batch's shared state; per-query arrays are indexed by query. */
typedef struct {
    const hq_search_args *a;
    int64_t c;             /* the Hamming stage's candidates (clamped to the valid rows) */
    int hamming_stage;     /* not "aqd" mode */
    int use_heap;          /* heaps ("aqd", small c), else kept buffers */
    int64_t heap_cap;      /* entries per heap: c, or k in "aqd" mode */
    int64_t block;         /* rows per block */
    int64_t group;         /* queries per group */
    hq_query *qs;
    hq_entry *heaps;       /* heap routes: heap_cap entries per query, cnt[j] used */
    int64_t *cnt;
    hq_keep *keeps;        /* kept-buffer route, with one histogram per query in hist */
    int64_t *hist;
    uint8_t *sample;       /* kept-buffer route: the valid rows sampled for the first bounds */
    int64_t S, n_sampled;
    int *err;
} hq_batch;

static int batch_one_by_one(const hq_search_args *a)
{
    for (int64_t j = 0; j < a->n_queries; j++) {
        const int rc = search_query(a, j, a->threads);
        if (rc != HQ_OK)
            return rc;
    }
    return HQ_OK;
}

static void batch_free(hq_batch *b)
{
    if (b->keeps)
        for (int64_t j = 0; j < b->a->n_queries; j++)
            free(b->keeps[j].buf);
    free(b->sample);
    free(b->qs);
    free(b->keeps);
    free(b->hist);
    free(b->heaps);
    free(b->cnt);
    free(b->err);
}

/* The rows sampled for the kept-buffer route's first bounds (sample_bound): every
 * (n_rows / S)-th row, valid ones only, copied together once for the whole batch. */
static int batch_sample(hq_batch *b)
{
    const hq_search_args *a = b->a;
    const int32_t nb = a->code_bytes;
    b->S = a->n_rows < HQ_SAMPLE_ROWS ? a->n_rows : HQ_SAMPLE_ROWS;
    b->sample = (uint8_t *)malloc((size_t)b->S * (size_t)nb);
    if (!b->sample)
        return HQ_ERR_NOMEM;
    for (int64_t s = 0; s < b->S; s++) {
        const int64_t i = s * a->n_rows / b->S;
        if (!a->valid || a->valid[i])
            memcpy(b->sample + b->n_sampled++ * nb, a->codes + i * (int64_t)nb, (size_t)nb);
    }
    return HQ_OK;
}

/* Sizes, routes and buffers for the batch a run with T threads. HQ_EMPTY: no valid row. */
static int batch_init(hq_batch *b, const hq_search_args *a, int32_t T)
{
    memset(b, 0, sizeof(*b));
    b->a = a;
    const int64_t n_rows = a->n_rows, nq = a->n_queries;
    const int64_t k = a->k < n_rows ? a->k : n_rows;
    int64_t nvalid = n_rows;
    if (a->valid) {
        nvalid = 0;
        for (int64_t i = 0; i < n_rows; i++)
            nvalid += a->valid[i] != 0;
    }
    int64_t c = stage_candidates(a, k, a->candidates < n_rows ? a->candidates : n_rows);
    b->c = c < nvalid ? c : nvalid;
    if (b->c == 0)
        return HQ_EMPTY;

    const int32_t nb = a->code_bytes;
    const uint32_t nbuckets = (uint32_t)nb * 8 + 1;
    b->hamming_stage = a->mode != HQ_MODE_AQD;
    b->use_heap = !b->hamming_stage || b->c <= HQ_BATCH_HEAP_MAX;
    b->heap_cap = b->hamming_stage ? b->c : (k < nvalid ? k : nvalid);
    b->qs = (hq_query *)malloc((size_t)nq * sizeof(hq_query));
    b->cnt = (int64_t *)calloc((size_t)nq, sizeof(int64_t));
    b->err = (int *)calloc((size_t)nq, sizeof(int));
    if (!b->qs || !b->cnt || !b->err)
        return HQ_ERR_NOMEM;
    if (b->use_heap) {
        b->heaps = (hq_entry *)malloc((size_t)nq * (size_t)b->heap_cap * sizeof(hq_entry));
        if (!b->heaps)
            return HQ_ERR_NOMEM;
    } else {
        b->keeps = (hq_keep *)calloc((size_t)nq, sizeof(hq_keep));
        b->hist = (int64_t *)calloc((size_t)nq * nbuckets, sizeof(int64_t));
        if (!b->keeps || !b->hist || batch_sample(b) != HQ_OK)
            return HQ_ERR_NOMEM;
    }
    for (int64_t j = 0; j < nq; j++) {
        query_prepare(&b->qs[j], a->query_bits + j * nb, nb);
        if (!b->use_heap) {
            b->keeps[j].hist = b->hist + j * nbuckets;
            b->keeps[j].bound = (uint32_t)nb * 8;
            b->keeps[j].cap_hint = b->c;
        }
    }
    int64_t block = HQ_BATCH_BLOCK_BYTES / (b->hamming_stage ? nb : a->books * a->qcode_bytes);
    b->block = block < HQ_BOUND_BLOCK ? HQ_BOUND_BLOCK : block - block % HQ_BOUND_BLOCK;
    /* One group per thread: each block is read from memory once per thread (the threads scan
     * about the same block at the same time, so the second read mostly hits the shared L3). */
    b->group = (nq + T - 1) / T;
    return HQ_OK;
}

/* A query's first bound for the kept-buffer route, from the batch's sample: the distance
 * within which the sample predicts about 2c rows, plus slack (as guess_bound). Starting there,
 * the scan keeps few rows from the first block on; if the guess proves too small the query is
 * searched again alone (batch_rank checks). */
static uint32_t sample_bound(const hq_batch *b, const hq_query *q, int32_t *sdist)
{
    const int32_t nb = b->a->code_bytes;
    const uint32_t nbits = (uint32_t)nb * 8;
    if (hq_knob.path == 1)
        return nbits; /* test knob: no guess */
    if (hq_knob.path == 2)
        return 0; /* test knob: a guess too small, so most queries take the fallback */
    int64_t sh[HQ_MAX_CODE_BYTES * 8 + 1];
    memset(sh, 0, sizeof(sh));
    ham_all(b->sample, nb, q, 0, b->n_sampled, sdist);
    for (int64_t s = 0; s < b->n_sampled; s++)
        sh[sdist[s]]++;
    return tighten_bound(sh, nbits, sample_target(b->c, b->S, b->a->n_rows));
}

/* Query j over one block, by its route. */
static void batch_scan(hq_batch *b, const hq_block *blk, int64_t j)
{
    const hq_search_args *a = b->a;
    hq_entry *h = b->heaps ? b->heaps + j * b->heap_cap : NULL;
    if (!b->hamming_stage) {
        if (aqd_range(a, &b->qs[j], lut_of(a, j), blk->lo, blk->hi, h, b->heap_cap, &b->cnt[j]) != HQ_OK)
            b->err[j] = HQ_ERR_QCODE;
    } else if (b->use_heap) {
        block_heap(a, blk, &b->qs[j], h, &b->cnt[j], b->heap_cap);
    } else if (block_collect(a, blk, &b->qs[j], b->c, &b->keeps[j]) != HQ_OK) {
        b->err[j] = HQ_ERR_NOMEM;
    }
}

/* Query j's results from what its scans kept. */
static int batch_rank(hq_batch *b, int64_t j)
{
    const hq_search_args *a = b->a;
    const hq_out out = out_of(a, j);
    const float *lut = lut_of(a, j);
    if (!b->hamming_stage) {
        rank_scored(a, b->heaps + j * b->heap_cap, b->cnt[j], &b->qs[j], out);
        return HQ_OK;
    }
    if (b->use_heap)
        return rank_candidates(a, b->heaps + j * b->heap_cap, b->cnt[j], lut, out);
    const hq_keep *kp = &b->keeps[j];
    int64_t within = 0; /* rows kept within the final bound: all of them there */
    for (uint32_t d = 0; d <= kp->bound; d++)
        within += kp->hist[d];
    if (within < b->c) /* the sampled bound was too small: this query alone */
        return search_query(a, j, 1);
    return rank_kept(a, kp, 1, kp->hist, b->c, lut, out);
}

/* Queries [j0, j1) over all the rows, block by block, then ranked while their buffers are
 * still warm. */
static void batch_group(hq_batch *b, int64_t j0, int64_t j1)
{
    const hq_search_args *a = b->a;
    if (b->keeps) {
        int32_t *sdist = (int32_t *)malloc((size_t)b->S * sizeof(int32_t));
        for (int64_t j = j0; j < j1 && sdist; j++)
            b->keeps[j].bound = sample_bound(b, &b->qs[j], sdist);
        free(sdist); /* without it the bounds stay at the code width: slower, same results */
    }
    hq_block blk = {0, 0, NULL};
    if (b->hamming_stage && b->group >= HQ_BATCH_MIN_GROUP)
        blk.soa = block_scratch(a->code_bytes, b->block);
    for (int64_t lo = 0; lo < a->n_rows; lo += b->block) {
        block_load(a, &blk, lo, a->n_rows - lo < b->block ? a->n_rows : lo + b->block);
        for (int64_t j = j0; j < j1; j++)
            if (!b->err[j])
                batch_scan(b, &blk, j);
    }
    free(blk.soa);
    for (int64_t j = j0; j < j1; j++)
        if (!b->err[j])
            b->err[j] = batch_rank(b, j);
}

int hq_search_many(const hq_search_args *a)
{
    int rc = check_args(a);
    if (rc != HQ_OK)
        return rc == HQ_EMPTY ? HQ_OK : rc;
    int32_t T = 1;
#ifdef _OPENMP
    T = a->threads < 1 ? 1 : a->threads > HQ_MAX_CHUNKS ? HQ_MAX_CHUNKS : a->threads;
#endif
    /* Fewer queries than threads, or too few to share a block's layout: each query alone,
     * with all the threads over its rows. */
    if (a->n_queries < T || a->n_queries < HQ_BATCH_MIN_GROUP)
        return batch_one_by_one(a);

    hq_batch b;
    rc = batch_init(&b, a, T);
    if (rc == HQ_OK) {
        const int64_t group = b.group, n_groups = (a->n_queries + group - 1) / group;
#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(dynamic, 1) if (T > 1)
#endif
        for (int64_t g = 0; g < n_groups; g++)
            batch_group(&b, g * group,
                        a->n_queries - g * group < group ? a->n_queries : (g + 1) * group);
        for (int64_t j = 0; j < a->n_queries; j++)
            if (b.err[j]) {
                rc = b.err[j];
                break;
            }
    }
    batch_free(&b);
    return rc == HQ_EMPTY ? HQ_OK : rc;
}
