/* Selection: the c best rows by (distance, rowid, slot) without sorting them all. The Hamming
 * stage finds the threshold d* from a histogram of distances (threshold), takes every row
 * closer than d* and the rows tied at d* with the smallest rowids (select_smallest); bounded
 * heaps (hq_common.h) and select_sorted rank the few that are left. */
#include "hq_common.h"

HQ_INTERNAL void sift_down(hq_entry *h, int64_t n, int64_t i)
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

HQ_INTERNAL void sift_up(hq_entry *h, int64_t i)
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

HQ_INTERNAL void topk_offer(hq_entry *h, int64_t *n, int64_t cap, const hq_entry *e)
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

HQ_INTERNAL void select_sorted(hq_entry *h, int64_t n, int64_t r)
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

/* Quickselect, falling back to the heap when partitions go badly (keys are all distinct). */
HQ_INTERNAL void select_smallest(hq_entry *h, int64_t n, int64_t r)
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

HQ_INTERNAL void fill_rowids(hq_entry *e, int64_t n, const int64_t *rowids)
{
    for (int64_t j = 0; j < n; j++)
        e[j].rowid = rowids[e[j].idx];
}

/* ---------------------------------------------------------------------------------------- */
/* Histogram threshold                                                                        */

HQ_INTERNAL uint32_t threshold(const int64_t *tot, uint32_t bound, int64_t c, int64_t *below)
{
    uint32_t dstar = 0;
    int64_t n = 0;
    while (n + tot[dstar] < c && dstar < bound) {
        n += tot[dstar];
        dstar++;
    }
    *below = n;
    return dstar;
}

HQ_INTERNAL int64_t sample_target(int64_t c, int64_t S, int64_t n_rows)
{
    return (2 * c * S + n_rows - 1) / n_rows + 4;
}

/* ---------------------------------------------------------------------------------------- */
/* Pass 2 of the full route                                                                   */

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
HQ_INTERNAL void collect_range(const uint16_t *dist, const int64_t *rowids, int64_t lo, int64_t hi,
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

/* ---------------------------------------------------------------------------------------- */
/* The kept rows of the fast route and the batch                                              */

HQ_INTERNAL int rank_kept(const hq_search_args *a, const hq_keep *keep, int32_t T,
                          const int64_t *tot, int64_t c, const float *lut, hq_out out)
{
    int rc;
    int64_t below;
    const uint32_t dstar = threshold(tot, (uint32_t)a->code_bytes * 8, c, &below);
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
    fill_rowids(cand, below, a->rowids);
    fill_rowids(eq, neq, a->rowids);
    select_smallest(eq, neq, need); /* ties at d*: the `need` smallest rowids */
    memcpy(cand + below, eq, (size_t)need * sizeof(hq_entry));
    rc = rank_candidates(a, cand, c, lut, out);

done:
    free(cand);
    free(eq);
    return rc;
}
