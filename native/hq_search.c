/* One query's search (hq_search), and the argument check hq_search_many shares.
 *
 * "aqd" mode scores every valid row (aqd_range) in T chunks and merges the chunks' top k.
 * The Hamming-stage modes ("hamming", "two_stage") find the c best rows by (Hamming, rowid)
 * by one of two routes, then rank them (rank_candidates):
 *   - fast: a bound guessed from a sample says which rows may be among the c best; one scan
 *     keeps just those (ham_collect). If the guess proves too small, or too many rows are
 *     kept, it falls back to the full route: a bad guess costs time, never a wrong answer.
 *   - full: every row's distance into a scratch array with a histogram (ham_pass1), the
 *     threshold d*, then a second pass for the rows within it (collect_range). */
#include "hq_common.h"

HQ_INTERNAL int check_args(const hq_search_args *a)
{
    if (!a || !a->out_n || a->n_queries < 0)
        return HQ_ERR_ARG;
    for (int64_t j = 0; j < a->n_queries; j++)
        a->out_n[j] = 0;
    if (a->code_bytes < 1 || a->code_bytes > HQ_MAX_CODE_BYTES || a->n_rows < 0 || a->k < 1 ||
        a->candidates < 1 || (a->n_queries > 0 && !a->query_bits))
        return HQ_ERR_ARG;
    if (a->mode != HQ_MODE_HAMMING && a->mode != HQ_MODE_AQD && a->mode != HQ_MODE_TWO_STAGE)
        return HQ_ERR_ARG;
    if (a->n_rows == 0 || a->n_queries == 0)
        return HQ_EMPTY;
    if (!a->codes || !a->rowids || !a->out_rowids || !a->out_dist || !a->out_ham)
        return HQ_ERR_ARG;
    if (a->mode != HQ_MODE_HAMMING &&
        (!a->qcodes || !a->luts || a->books < 1 || a->codewords < 1 ||
         (a->qcode_bytes != 1 && a->qcode_bytes != 2)))
        return HQ_ERR_ARG;
    return HQ_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Hamming stage, full route                                                                  */

static int search_hamming_full(const hq_search_args *a, const hq_query *q, const float *lut,
                               int32_t T, hq_out out)
{
    const int64_t n_rows = a->n_rows;
    const uint32_t nbits = (uint32_t)a->code_bytes * 8, inval = nbits + 1, nbuckets = nbits + 2;
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
    int64_t c = stage_candidates(a, a->k, a->candidates);
    int64_t *nvalid_t = off + 3 * T;

#ifdef _OPENMP
#pragma omp parallel for num_threads(T) schedule(static, 1) if (T > 1)
#endif
    for (int32_t t = 0; t < T; t++) {
        bounds[t] = nbits;
        nvalid_t[t] = ham_pass1(a, q, chunk_lo(n_rows, T, t), chunk_lo(n_rows, T, t + 1), dist,
                                hist + (int64_t)t * nbuckets, inval, c, &bounds[t]);
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
    int64_t below;
    const uint32_t dstar = threshold(tot, bound, c, &below);
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
        collect_range(dist, a->rowids, chunk_lo(n_rows, T, t), chunk_lo(n_rows, T, t + 1), dstar,
                      cand + below_off[t], eqbuf + eq_off[t], eq_cap[t],
                      hist[(int64_t)t * nbuckets + dstar]);

    fill_rowids(cand, below, a->rowids);
    fill_rowids(eqbuf, eq_acc, a->rowids);
    /* Ties at d*: the `need` smallest rowids over all chunks. */
    select_smallest(eqbuf, eq_acc, need);
    memcpy(cand + below, eqbuf, (size_t)need * sizeof(hq_entry));

    rc = rank_candidates(a, cand, c, lut, out);

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

/* ---------------------------------------------------------------------------------------- */
/* Hamming stage, fast route                                                                  */

/* The guess: over an evenly strided sample of rows, the distance within which the sample
 * predicts about 2c valid rows, plus a little slack; *expect = the rows it should keep. */
static uint32_t guess_bound(const hq_search_args *a, const hq_query *q, int64_t c,
                            int64_t *expect)
{
    const int64_t n_rows = a->n_rows;
    const int32_t nb = a->code_bytes;
    const int64_t S = n_rows < HQ_SAMPLE_ROWS ? n_rows : HQ_SAMPLE_ROWS;
    int64_t sh[HQ_MAX_CODE_BYTES * 8 + 1];
    memset(sh, 0, sizeof(sh));
    ham_sample(a, q, S, sh);
    const int64_t target = sample_target(c, S, n_rows);
    *expect = target * (n_rows / S + 1); /* rows the guess should keep, for sizing buffers */
    return tighten_bound(sh, (uint32_t)nb * 8, target);
}

#define HQ_FALLBACK 1 /* the fast route can't decide: take the full one */

static int search_hamming_fast(const hq_search_args *a, const hq_query *q, const float *lut,
                               int32_t T, hq_out out)
{
    const int path = hq_knob.path;
    const int64_t n_rows = a->n_rows;
    const uint32_t nbuckets = (uint32_t)a->code_bytes * 8 + 1;
    int64_t c = stage_candidates(a, a->k, a->candidates);
    if (path == 1 || (path == 0 && c * 32 > n_rows))
        return HQ_FALLBACK; /* wants a large share of the rows: the full route is as good */

    int64_t expect = 0;
    uint32_t guess = guess_bound(a, q, c, &expect);
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
        nvalid_t[t] = ham_collect(a, q, chunk_lo(n_rows, T, t), chunk_lo(n_rows, T, t + 1), c,
                                  &keep[t]);

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
        goto done; /* *out.n is 0 */
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
    rc = rank_kept(a, keep, T, tot, c, lut, out);

done:
    free(keep);
    free(hist);
    free(nvalid_t);
    free(tot);
    free(hits);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */
/* "aqd" mode                                                                                 */

static int search_aqd(const hq_search_args *a, const hq_query *q, const float *lut, int32_t T,
                      hq_out out)
{
    const int64_t n_rows = a->n_rows, k = a->k;
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
        err[t] = aqd_range(a, q, lut, lo, hi, heaps + hoff[t], cap, &cnt[t]) != HQ_OK;
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
    rank_scored(a, heaps, total, q, out);

done:
    free(cnt);
    free(err);
    free(hoff);
    free(heaps);
    return rc;
}

/* ---------------------------------------------------------------------------------------- */

HQ_INTERNAL int search_query(const hq_search_args *a, int64_t j, int32_t threads)
{
    const int32_t nb = a->code_bytes;
    const float *lut = lut_of(a, j);
    const hq_out out = out_of(a, j);
    hq_query q;
    query_prepare(&q, a->query_bits + j * nb, nb);
    const int32_t T = n_chunks(a->n_rows, threads);
    if (a->mode == HQ_MODE_AQD)
        return search_aqd(a, &q, lut, T, out);
    const int rc = search_hamming_fast(a, &q, lut, T, out);
    if (rc != HQ_FALLBACK)
        return rc;
    *out.n = 0;
    return search_hamming_full(a, &q, lut, T, out);
}

int hq_search(const hq_search_args *a)
{
    if (a && a->n_queries != 1)
        return HQ_ERR_ARG;
    const int rc = check_args(a);
    if (rc != HQ_OK)
        return rc == HQ_EMPTY ? HQ_OK : rc;
    return search_query(a, 0, a->threads);
}
