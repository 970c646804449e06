/* Hamming scans with AVX2: the scans of hq_scan.c 8 rows a step, for codes of 1, 2, 4, 8 or 16
 * words (scan_isa), for the x86-64 CPUs without AVX-512 VPOPCNTDQ. Each leaves the rows that
 * don't fill a vector to the portable version, so every path shares one definition of what a
 * scan keeps.
 *
 * AVX2 has no popcount instruction: the bytes' popcounts come from two VPSHUFB lookups in a
 * 16-entry table, one per nibble, and VPSADBW adds each 8 bytes into a 64-bit lane (Mula, Kurz
 * and Lemire, "Faster population counts using AVX2 instructions", 2018). The two lookups use
 * offset tables, 4 + popcount(low nibble) and 4 - popcount(high nibble), so one VPSADBW of the
 * two, sum |(4 + a) - (4 - b)| = sum (a + b), adds them as it sums the bytes: no VPADDB, no zero
 * operand. A row of 4 or more words adds its lookups (each side at most 8 x 4 bytes) before
 * the one VPSADBW; shorter codes fit 2 or 4 rows in a vector. The lanes are then gathered into
 * the 8 rows' distances, one 32-bit lane each. Distances are exact integers: every path gives
 * the same results. */
#include "hq_common.h"

#ifdef HQ_HAVE_AVX2
#include <immintrin.h>

#define HQ_AVX2 __attribute__((target("avx2,popcnt")))

/* The nibble lookups of v XOR qv (the 32 bytes at p): lo[i] = 4 + popcount(low nibble of byte
 * i), hi[i] = 4 - popcount(high nibble), so popcount(byte i) = lo[i] - hi[i] >= 0. */
HQ_AVX2 static inline void avx2_nibbles(const uint8_t *p, __m256i qv, __m256i *lo, __m256i *hi)
{
    const __m256i plus = _mm256_setr_epi8(4, 5, 5, 6, 5, 6, 6, 7, 5, 6, 6, 7, 6, 7, 7, 8, /**/
                                          4, 5, 5, 6, 5, 6, 6, 7, 5, 6, 6, 7, 6, 7, 7, 8);
    const __m256i minus = _mm256_setr_epi8(4, 3, 3, 2, 3, 2, 2, 1, 3, 2, 2, 1, 2, 1, 1, 0, /**/
                                           4, 3, 3, 2, 3, 2, 2, 1, 3, 2, 2, 1, 2, 1, 1, 0);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    const __m256i v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), qv);
    *lo = _mm256_shuffle_epi8(plus, _mm256_and_si256(v, low4));
    *hi = _mm256_shuffle_epi8(minus, _mm256_and_si256(_mm256_srli_epi16(v, 4), low4));
}

/* The popcount of v XOR qv (the 32 bytes at p), summed per 8 bytes into 4 64-bit lanes. */
HQ_AVX2 static inline __m256i avx2_count4(const uint8_t *p, __m256i qv)
{
    __m256i lo, hi;
    avx2_nibbles(p, qv, &lo, &hi);
    return _mm256_sad_epu8(lo, hi);
}

/* a's 64-bit lanes in the low halves, b's in the high halves (every lane holds < 2^32). */
HQ_AVX2 static inline __m256i avx2_interleave(__m256i a, __m256i b)
{
    return _mm256_or_si256(a, _mm256_slli_epi64(b, 32));
}

/* Distances of the 8 rows at `rows` (nw words each) as 8 dword lanes, lane r = row r. nw is a
 * compile-time constant at every call (HQ_AVX2_DISPATCH), so the branches fold away. */
HQ_AVX2 static inline __m256i avx2_dist8(const uint8_t *rows, const __m256i *qv, int nw)
{
    if (nw == 1) { /* 4 rows a vector: one row per 64-bit lane after the VPSADBW */
        const __m256i s0 = avx2_count4(rows, qv[0]);      /* rows 0 1 2 3 */
        const __m256i s1 = avx2_count4(rows + 32, qv[0]); /* rows 4 5 6 7 */
        /* dwords: 0 4 1 5 2 6 3 7 */
        return _mm256_permutevar8x32_epi32(avx2_interleave(s0, s1),
                                           _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    }
    if (nw == 2) { /* 2 rows a vector, one per 128-bit half: two 64-bit lanes each */
        __m256i s[4];
        for (int v = 0; v < 4; v++)
            s[v] = avx2_count4(rows + 32 * v, qv[0]); /* rows 2v, 2v+1: a b | a b */
        const __m256i u01 = avx2_interleave(s[0], s[1]); /* 0a 2a 0b 2b | 1a 3a 1b 3b */
        const __m256i u23 = avx2_interleave(s[2], s[3]); /* 4a 6a 4b 6b | 5a 7a 5b 7b */
        const __m256i sum = _mm256_add_epi32(_mm256_unpacklo_epi64(u01, u23),
                                             _mm256_unpackhi_epi64(u01, u23)); /* 0 2 4 6 | 1 3 5 7 */
        return _mm256_permutevar8x32_epi32(sum, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    }
    /* nw >= 4: a row is nw / 4 vectors; their lookups add up (lo <= 32, hi <= 16 a byte)
     * before one VPSADBW, which leaves 4 partial sums a row (r.0 .. r.3) */
    const int nv = nw / 4;
    const int64_t stride = 8 * (int64_t)nw;
    __m256i s[8];
    for (int r = 0; r < 8; r++) {
        __m256i lo, hi;
        avx2_nibbles(rows + r * stride, qv[0], &lo, &hi);
        for (int j = 1; j < nv; j++) {
            __m256i l2, h2;
            avx2_nibbles(rows + r * stride + 32 * j, qv[j], &l2, &h2);
            lo = _mm256_add_epi8(lo, l2);
            hi = _mm256_add_epi8(hi, h2);
        }
        s[r] = _mm256_sad_epu8(lo, hi);
    }
    __m256i p[2];
    for (int g = 0; g < 2; g++) { /* rows 4g .. 4g+3 */
        const __m256i u01 = avx2_interleave(s[4 * g], s[4 * g + 1]);     /* a0 b0 a1 b1 | a2 b2 a3 b3 */
        const __m256i u23 = avx2_interleave(s[4 * g + 2], s[4 * g + 3]); /* c0 d0 c1 d1 | c2 d2 c3 d3 */
        p[g] = _mm256_add_epi32(_mm256_unpacklo_epi64(u01, u23),
                                _mm256_unpackhi_epi64(u01, u23)); /* a01 b01 c01 d01 | a23 .. d23 */
    }
    return _mm256_add_epi32(_mm256_permute2x128_si256(p[0], p[1], 0x20),
                            _mm256_permute2x128_si256(p[0], p[1], 0x31));
}

/* The query words laid out as they line up with 32-byte loads of rows: the query repeated 4
 * times (1 word) or twice (2 words), else words 4j .. 4j+3 in qv[j]. */
HQ_AVX2 static void avx2_query(const hq_query *q, __m256i *qv)
{
    uint64_t pat[16];
    for (int l = 0; l < 16; l++)
        pat[l] = q->w[l % q->nw];
    for (int j = 0; j < 4; j++)
        qv[j] = _mm256_loadu_si256((const __m256i *)(pat + 4 * j));
}

/* 8 lanes' bit mask of the rows whose valid byte is 0. */
HQ_AVX2 static inline unsigned avx2_invalid8(const uint8_t *valid, __m256i *bad)
{
    const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)valid));
    *bad = _mm256_cmpeq_epi32(v, _mm256_setzero_si256());
    return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(*bad));
}

/* Lanes of d below `limit` (a vector of it), as 8 bits: d <= bound with limit = bound + 1.
 * Signed compares: distances and limits are < 2^31. */
HQ_AVX2 static inline unsigned avx2_lt8(__m256i d, __m256i vlimit)
{
    return (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(vlimit, d)));
}

/* Nonzero bytes among the n (a multiple of 8) at p: the valid rows of a block, counted apart
 * from the scan so that its loop reads the mask only for the rare rows within the bound. */
HQ_AVX2 static int64_t avx2_count_valid(const uint8_t *p, int64_t n)
{
    const __m256i zero = _mm256_setzero_si256();
    int64_t zeros = 0, j = 0;
    for (; j + 32 <= n; j += 32) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(p + j));
        zeros += _mm_popcnt_u32((unsigned)_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, zero)));
    }
    for (; j < n; j += 8)
        zeros += 8 - _mm_popcnt_u32(nonzero8(p + j));
    return n - zeros;
}

#define HQ_AVX2_DISPATCH(nw, ...)                                       \
    switch (nw) {                                                       \
    case 1: { const int NW = 1; __VA_ARGS__; } break;                   \
    case 2: { const int NW = 2; __VA_ARGS__; } break;                   \
    case 4: { const int NW = 4; __VA_ARGS__; } break;                   \
    case 8: { const int NW = 8; __VA_ARGS__; } break;                   \
    default: { const int NW = 16; __VA_ARGS__; } break;                 \
    }

HQ_AVX2 HQ_INTERNAL int64_t ham_pass1_avx2(const hq_search_args *a, const hq_query *q, int64_t lo,
                                           int64_t hi, uint16_t *dist, int64_t *hist,
                                           uint32_t inval, int64_t c, uint32_t *bound_io)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
    __m256i qv[4];
    avx2_query(q, qv);
    const __m256i vinval = _mm256_set1_epi32((int)inval);
    uint32_t bound = *bound_io;
    int64_t nvalid = 0;
    int64_t i = lo;
    HQ_AVX2_DISPATCH(q->nw, {
        while (i + 8 <= hi) {
            const int64_t stop = hi - i > HQ_BOUND_BLOCK ? i + HQ_BOUND_BLOCK : hi;
            const __m256i vlimit = _mm256_set1_epi32((int)bound + 1);
            for (; i + 8 <= stop; i += 8) {
                hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
                __m256i d = avx2_dist8(codes + i * (int64_t)nb, qv, NW);
                if (valid) {
                    __m256i bad;
                    nvalid += 8 - _mm_popcnt_u32(avx2_invalid8(valid + i, &bad));
                    d = _mm256_blendv_epi8(d, vinval, bad);
                }
                const __m128i d16 = _mm_packus_epi32(_mm256_castsi256_si128(d),
                                                     _mm256_extracti128_si256(d, 1));
                _mm_storeu_si128((__m128i *)(dist + i), d16);
                unsigned near = avx2_lt8(d, vlimit);
                if (near) { /* rare once the bound has tightened */
                    /* lanes via GPRs: reloading the stored vector would stall on forwarding */
                    const uint64_t w[2] = {(uint64_t)_mm_cvtsi128_si64(d16),
                                           (uint64_t)_mm_extract_epi64(d16, 1)};
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

HQ_AVX2 HQ_INTERNAL void ham_all_avx2(const uint8_t *codes, int32_t nb, const hq_query *q,
                                      int64_t lo, int64_t hi, int32_t *out)
{
    __m256i qv[4];
    avx2_query(q, qv);
    int64_t i = lo;
    HQ_AVX2_DISPATCH(q->nw, {
        for (; i + 8 <= hi; i += 8) {
            hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
            _mm256_storeu_si256((__m256i *)(out + i), avx2_dist8(codes + i * (int64_t)nb, qv, NW));
        }
    })
    ham_all_generic(codes, nb, q, i, hi, out);
}

HQ_AVX2 HQ_INTERNAL int64_t ham_collect_avx2(const hq_search_args *a, const hq_query *q,
                                             int64_t lo, int64_t hi, int64_t c, hq_keep *kp)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
    __m256i qv[4];
    avx2_query(q, qv);
    uint32_t bound = kp->bound;
    int64_t n = kp->n, nvalid = 0; /* appends to the rows kept so far */
    hq_hit *buf = kp->buf;
    int64_t i = lo;
    HQ_AVX2_DISPATCH(q->nw, {
        while (i + 8 <= hi) {
            const int64_t stop = hi - i > HQ_BOUND_BLOCK ? i + HQ_BOUND_BLOCK : hi;
            const __m256i vlimit = _mm256_set1_epi32((int)bound + 1);
            const int64_t rows8 = (stop - i) & ~(int64_t)7; /* the rows this block scans */
            nvalid += valid ? avx2_count_valid(valid + i, rows8) : rows8;
            for (; i + 8 <= stop; i += 8) {
                hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
                const __m256i d = avx2_dist8(codes + i * (int64_t)nb, qv, NW);
                unsigned near = avx2_lt8(d, vlimit);
                if (near && valid) /* rare once the bound is tight: only then the mask */
                    near &= nonzero8(valid + i);
                if (near) {
                    if (n + 8 > kp->cap) {
                        kp->overflow = 1;
                        goto out;
                    }
                    uint32_t dl[8];
                    _mm256_storeu_si256((__m256i *)dl, d);
                    do {
                        const int j = hq_ctz64(near);
                        near &= near - 1;
                        buf[n].idx = i + j;
                        buf[n].d = dl[j];
                        n++;
                        kp->hist[dl[j]]++;
                    } while (near);
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

HQ_AVX2 HQ_INTERNAL void ham_heap_avx2(const hq_search_args *a, const hq_query *q, int64_t lo,
                                       int64_t hi, hq_entry *h, int64_t *n_io, int64_t cap)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int64_t *rowids = a->rowids;
    const int32_t nb = a->code_bytes;
    __m256i qv[4];
    avx2_query(q, qv);
    int64_t n = *n_io;
    uint32_t thr = n == cap ? (uint32_t)h[0].ham : UINT32_MAX;
    int64_t i = lo;
    HQ_AVX2_DISPATCH(q->nw, {
        /* signed compares: a threshold past every distance (UINT32_MAX) gives INT32_MAX */
        __m256i vlim = _mm256_set1_epi32(thr >= INT32_MAX ? INT32_MAX : (int)thr + 1);
        for (; i + 8 <= hi; i += 8) {
            hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
            const __m256i d = avx2_dist8(codes + i * (int64_t)nb, qv, NW);
            unsigned near = avx2_lt8(d, vlim);
            if (!near) /* almost always, once the heap is full */
                continue;
            uint32_t dl[8];
            _mm256_storeu_si256((__m256i *)dl, d);
            do {
                const int j = hq_ctz64(near);
                near &= near - 1;
                const uint32_t dj = dl[j];
                if (dj > thr || (valid && !valid[i + j]))
                    continue;
                hq_entry e = {(float)dj, (int32_t)dj, rowids[i + j], i + j};
                topk_offer(h, &n, cap, &e);
                if (n == cap)
                    thr = (uint32_t)h[0].ham;
            } while (near);
            vlim = _mm256_set1_epi32(thr >= INT32_MAX ? INT32_MAX : (int)thr + 1);
        }
    })
    *n_io = n;
    ham_heap_generic(a, q, i, hi, h, n_io, cap);
}

#else
/* ISO C wants a translation unit to declare something. */
typedef int hq_scan_avx2_unused;
#endif
