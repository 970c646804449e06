/* Hamming scans with AVX-512 VPOPCNTDQ: the scans of hq_scan.c 8 rows a step, for codes of 1,
 * 2, 4, 8 or 16 words (scan_isa). Each leaves the rows that don't fill a vector to the
 * portable version, so the two share one definition of what a scan keeps. */
#include "hq_common.h"

#ifdef HQ_HAVE_AVX512
#include <immintrin.h>

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

/* Nonzero bytes among the n (a multiple of 8) at p: the valid rows of a block, counted apart
 * from the scan so that its loop reads the mask only for the rare rows within the bound. */
HQ_AVX512 static int64_t avx512_count_valid(const uint8_t *p, int64_t n)
{
    int64_t ok = 0, j = 0;
    for (; j + 64 <= n; j += 64) {
        const __m512i v = _mm512_loadu_si512((const void *)(p + j));
        ok += _mm_popcnt_u64(_mm512_test_epi8_mask(v, v));
    }
    for (; j < n; j += 8)
        ok += _mm_popcnt_u32(nonzero8(p + j));
    return ok;
}

#define HQ_AVX512_DISPATCH(nw, ...)                                     \
    switch (nw) {                                                       \
    case 1: { const int NW = 1; __VA_ARGS__; } break;                   \
    case 2: { const int NW = 2; __VA_ARGS__; } break;                   \
    case 4: { const int NW = 4; __VA_ARGS__; } break;                   \
    case 8: { const int NW = 8; __VA_ARGS__; } break;                   \
    default: { const int NW = 16; __VA_ARGS__; } break;                 \
    }

HQ_AVX512 HQ_INTERNAL int64_t ham_pass1_avx512(const hq_search_args *a, const hq_query *q,
                                               int64_t lo, int64_t hi, uint16_t *dist,
                                               int64_t *hist, uint32_t inval, int64_t c,
                                               uint32_t *bound_io)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
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
                hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
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
    *bound_io = bound;
    if (!valid)
        nvalid = i - lo;
    return nvalid + ham_pass1_generic(a, q, i, hi, dist, hist, inval, c, bound_io);
}

HQ_AVX512 HQ_INTERNAL void ham_all_avx512(const uint8_t *codes, int32_t nb, const hq_query *q,
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
    ham_all_generic(codes, nb, q, i, hi, out);
}

HQ_AVX512 HQ_INTERNAL int64_t ham_collect_avx512(const hq_search_args *a, const hq_query *q,
                                                 int64_t lo, int64_t hi, int64_t c, hq_keep *kp)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
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
            const int64_t rows8 = (stop - i) & ~(int64_t)7; /* the rows this block scans */
            nvalid += valid ? avx512_count_valid(valid + i, rows8) : rows8;
            for (; i + 8 <= stop; i += 8) {
                hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
                const __m128i d = _mm512_cvtepi64_epi16(avx512_dist8(codes + i * (int64_t)nb, qv, NW));
                unsigned near = _mm_cmple_epu16_mask(d, vbound);
                if (near && valid) /* rare once the bound is tight: only then the mask */
                    near &= nonzero8(valid + i);
                if (near) {
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
    kp->n = n;
    kp->bound = bound;
    return nvalid + ham_collect_generic(a, q, i, hi, c, kp);
out:
    kp->n = n;
    kp->bound = bound;
    return nvalid;
}

HQ_AVX512 HQ_INTERNAL void ham_heap_avx512(const hq_search_args *a, const hq_query *q, int64_t lo,
                                           int64_t hi, hq_entry *h, int64_t *n_io, int64_t cap)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int64_t *rowids = a->rowids;
    const int32_t nb = a->code_bytes;
    __m512i qv[2];
    avx512_query(q, qv);
    int64_t n = *n_io;
    uint32_t thr = n == cap ? (uint32_t)h[0].ham : UINT32_MAX;
    int64_t i = lo;
    HQ_AVX512_DISPATCH(q->nw, {
        __m512i vthr = _mm512_set1_epi64((int64_t)thr);
        for (; i + 8 <= hi; i += 8) {
            hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
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
    ham_heap_generic(a, q, i, hi, h, n_io, cap);
}

/* ---------------------------------------------------------------------------------------- */
/* Word-major blocks (the batched search)                                                     */

/* Rows [lo, lo + rows) word-major: soa[w * rows + i] is word w of row lo + i. One 64-byte load
 * then holds word w of 8 consecutive rows, so a query's 8 distances are XOR, popcount and an
 * add per word, with no shuffles across lanes (the row-major avx512_dist8 needs them). Built
 * once per block and query group, it pays for itself over the group's queries. */
HQ_INTERNAL void soa_fill(const uint8_t *codes, int32_t nb, int64_t lo, int64_t rows,
                          uint64_t *soa)
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

/* One query over the first rows & ~7 rows of a word-major block. Heap mode (kp NULL): offers
 * rows to the heap h (cap entries, *n_io used). Keep mode: appends the rows within kp's bound
 * to kp, tightening the bound every HQ_BOUND_BLOCK rows as ham_collect does. */
HQ_AVX512 HQ_INTERNAL int soa_scan_avx512(const hq_search_args *a, const hq_block *blk,
                                          const hq_query *q, int64_t c, hq_entry *h,
                                          int64_t *n_io, int64_t cap, hq_keep *kp)
{
    const uint64_t *soa = blk->soa;
    const int64_t lo = blk->lo, rows = blk->hi - blk->lo;
    __m512i qw[16];
    for (int32_t w = 0; w < q->nw; w++)
        qw[w] = _mm512_set1_epi64((int64_t)q->w[w]);
    hq_soa_sink sk = {h, kp ? 0 : *n_io, cap, kp, a->valid, a->rowids, 0};
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

#else
/* ISO C wants a translation unit to declare something. */
typedef int hq_scan_avx512_unused;
#endif
