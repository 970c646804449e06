/* AQD (Asymmetric Quantizer Distance): the lookup table of a query's inner products with every
 * codeword (hq_aqd_lut), a row's score s = LUT[0][b0] + LUT[1][b1] + ... in float32, left to
 * right (distance -s), and the final ranking of a search's candidates. */
#include "hq_common.h"

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

/* Row i's distance -s into *out; HQ_ERR_QCODE if one of its codes is >= kw. */
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
        /* ties on d go by Hamming distance: computed only for rows that may enter */        \
        hq_entry e = {d, (int32_t)ham_row(codes + i * (int64_t)nb, q, q->nw, q->ntail),     \
                      rowids[i], i};                                                         \
        topk_offer(h, &n, cap, &e);                                                          \
    }

HQ_CLONES
HQ_INTERNAL int aqd_range(const hq_search_args *a, const hq_query *q, const float *lut, int64_t lo,
                          int64_t hi, hq_entry *h, int64_t cap, int64_t *n_io)
{
    const void *qcodes = a->qcodes;
    const uint8_t *codes = a->codes;
    const int32_t nb = a->code_bytes;
    const uint8_t *valid = a->valid;
    const int64_t *rowids = a->rowids;
    const int32_t qcode_bytes = a->qcode_bytes, m = a->books, kw = a->codewords;
    int rc = HQ_OK;
    int64_t n = *n_io; /* h may already hold n entries (the batched search adds block by block) */
    /* constant code width and book count for the usual shapes: the book loop unrolls */
    /* (m <= 8 only: with more books qcode_bytes * 16 + m would alias another case, e.g. 1 byte
     * x 24 books = 2 bytes x 8 books) */
    switch (m <= 8 ? qcode_bytes * 16 + m : 0) {
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
    *n_io = n;
    return rc;
}

HQ_INTERNAL int rank_candidates(const hq_search_args *a, hq_entry *cand, int64_t c,
                                const float *lut, hq_out out)
{
    int64_t r;
    if (a->mode == HQ_MODE_HAMMING) {
        for (int64_t j = 0; j < c; j++)
            cand[j].d = (float)cand[j].ham;
        r = c;
    } else {
        for (int64_t j = 0; j < c; j++)
            if (aqd_score(a->qcodes, a->qcode_bytes, a->books, cand[j].idx, lut, a->codewords,
                          &cand[j].d) != HQ_OK)
                return HQ_ERR_QCODE;
        r = a->k < c ? a->k : c;
    }
    select_sorted(cand, c, r);
    for (int64_t j = 0; j < r; j++) {
        out.rowids[j] = cand[j].rowid;
        out.dist[j] = cand[j].d;
        out.ham[j] = cand[j].ham;
    }
    *out.n = r;
    return HQ_OK;
}

HQ_INTERNAL void rank_scored(const hq_search_args *a, hq_entry *h, int64_t n, const hq_query *q,
                             hq_out out)
{
    (void)q;
    const int64_t r = a->k < n ? a->k : n;
    select_sorted(h, n, r);
    for (int64_t j = 0; j < r; j++) {
        out.rowids[j] = h[j].rowid;
        out.dist[j] = h[j].d;
        out.ham[j] = h[j].ham; /* aqd_range computed it */
    }
    *out.n = r;
}
