/* Hamming scans with NEON (aarch64: Apple silicon, Graviton, Ampere, Raspberry Pi 4/5...): the
 * scans of hq_scan.c 8 rows a step, for codes of 1, 2, 4, 8 or 16 words (scan_isa). Each leaves
 * the rows that don't fill a vector to the portable version, so every path shares one
 * definition of what a scan keeps. Compiled only on aarch64, where Advanced SIMD is baseline.
 *
 * VCNT (vcntq_u8) counts the bits of each byte; pairwise adds (vpaddq_u8 across two vectors,
 * vpaddlq_u8 widening to 16 bits before a sum could pass 255) fold 8 rows' byte counts into one
 * vector of 8 16-bit distances, lane r = row r. Distances are exact integers: every path gives
 * the same results. */
#include "hq_common.h"

#ifdef HQ_HAVE_NEON
#include <arm_neon.h>

/* Byte popcounts of the 16 bytes at p XOR the query vector qv. */
static inline uint8x16_t neon_xcnt(const uint8_t *p, uint8x16_t qv)
{
    return vcntq_u8(veorq_u8(vld1q_u8(p), qv));
}

/* Distances of the 8 rows at `rows` (nw words each), lane r = row r. nw is a compile-time
 * constant at every call (HQ_NEON_DISPATCH), so the branches fold away. */
static inline uint16x8_t neon_dist8(const uint8_t *rows, const uint8x16_t *qv, int nw)
{
    if (nw == 1) { /* 2 rows a vector */
        uint8x16_t c[4];
        for (int v = 0; v < 4; v++)
            c[v] = neon_xcnt(rows + 16 * v, qv[0]);
        const uint8x16_t r03 = vpaddq_u8(c[0], c[1]); /* 4 sums a row, <= 16 */
        const uint8x16_t r47 = vpaddq_u8(c[2], c[3]);
        return vpaddlq_u8(vpaddq_u8(r03, r47)); /* 2 sums a row (<= 32), then 1 */
    }
    const int nv = nw / 2; /* vectors a row; their byte counts add up first (<= 8 nv) */
    const int64_t stride = 8 * (int64_t)nw;
    uint8x16_t c[8];
    for (int r = 0; r < 8; r++) {
        c[r] = neon_xcnt(rows + r * stride, qv[0]);
        for (int j = 1; j < nv; j++)
            c[r] = vaddq_u8(c[r], neon_xcnt(rows + r * stride + 16 * j, qv[j]));
    }
    if (nv <= 2) { /* three pairwise levels stay <= 16 * 8 nv <= 128 in bytes */
        const uint8x16_t x01 = vpaddq_u8(c[0], c[1]), x23 = vpaddq_u8(c[2], c[3]);
        const uint8x16_t x45 = vpaddq_u8(c[4], c[5]), x67 = vpaddq_u8(c[6], c[7]);
        return vpaddlq_u8(vpaddq_u8(vpaddq_u8(x01, x23), vpaddq_u8(x45, x67)));
    }
    uint16x8_t w[8]; /* 16-bit lanes from the start: a row's sum reaches 8 nw */
    for (int r = 0; r < 8; r++)
        w[r] = vpaddlq_u8(c[r]);
    const uint16x8_t x01 = vpaddq_u16(w[0], w[1]), x23 = vpaddq_u16(w[2], w[3]);
    const uint16x8_t x45 = vpaddq_u16(w[4], w[5]), x67 = vpaddq_u16(w[6], w[7]);
    return vpaddq_u16(vpaddq_u16(x01, x23), vpaddq_u16(x45, x67));
}

/* The query words laid out as they line up with 16-byte loads of rows: the query twice
 * (1 word), else words 2j, 2j+1 in qv[j]. */
static void neon_query(const hq_query *q, uint8x16_t *qv)
{
    uint64_t pat[16];
    for (int l = 0; l < 16; l++)
        pat[l] = q->w[l % q->nw];
    for (int j = 0; j < 8; j++)
        qv[j] = vld1q_u8((const uint8_t *)(pat + 2 * j));
}

/* The 8 lanes of a 16-bit mask as 8 bits (no movemask on NEON: weigh and add). */
static inline unsigned neon_bits8(uint16x8_t m)
{
    static const uint16_t weights[8] = {1, 2, 4, 8, 16, 32, 64, 128};
    return vaddvq_u16(vandq_u16(m, vld1q_u16(weights)));
}

/* The rows among 8 whose valid byte is 0, as a 16-bit lane mask. */
static inline uint16x8_t neon_invalid8(const uint8_t *valid)
{
    return vceqzq_u16(vmovl_u8(vld1_u8(valid)));
}

/* Nonzero bytes among the n (a multiple of 8) at p: the valid rows of a block, counted apart
 * from the scan so that its loop reads the mask only for the rare rows within the bound. */
static int64_t neon_count_valid(const uint8_t *p, int64_t n)
{
    int64_t zeros = 0, j = 0;
    for (; j + 16 <= n; j += 16)
        zeros += vaddvq_u8(vandq_u8(vceqzq_u8(vld1q_u8(p + j)), vdupq_n_u8(1)));
    for (; j < n; j += 8)
        zeros += 8 - __builtin_popcount(nonzero8(p + j));
    return n - zeros;
}

#define HQ_NEON_DISPATCH(nw, ...)                                       \
    switch (nw) {                                                       \
    case 1: { const int NW = 1; __VA_ARGS__; } break;                   \
    case 2: { const int NW = 2; __VA_ARGS__; } break;                   \
    case 4: { const int NW = 4; __VA_ARGS__; } break;                   \
    case 8: { const int NW = 8; __VA_ARGS__; } break;                   \
    default: { const int NW = 16; __VA_ARGS__; } break;                 \
    }

HQ_INTERNAL int64_t ham_pass1_neon(const hq_search_args *a, const hq_query *q, int64_t lo,
                                   int64_t hi, uint16_t *dist, int64_t *hist, uint32_t inval,
                                   int64_t c, uint32_t *bound_io)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
    uint8x16_t qv[8];
    neon_query(q, qv);
    const uint16x8_t vinval = vdupq_n_u16((uint16_t)inval);
    uint32_t bound = *bound_io;
    int64_t nvalid = 0;
    int64_t i = lo;
    HQ_NEON_DISPATCH(q->nw, {
        while (i + 8 <= hi) {
            const int64_t stop = hi - i > HQ_BOUND_BLOCK ? i + HQ_BOUND_BLOCK : hi;
            const uint16x8_t vbound = vdupq_n_u16((uint16_t)bound);
            for (; i + 8 <= stop; i += 8) {
                hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
                uint16x8_t d = neon_dist8(codes + i * (int64_t)nb, qv, NW);
                if (valid) {
                    const uint16x8_t bad = neon_invalid8(valid + i);
                    nvalid += 8 - __builtin_popcount(neon_bits8(bad));
                    d = vbslq_u16(bad, vinval, d);
                }
                vst1q_u16(dist + i, d);
                unsigned near = neon_bits8(vcleq_u16(d, vbound));
                if (near) { /* rare once the bound has tightened */
                    uint16_t dl[8];
                    vst1q_u16(dl, d);
                    do {
                        const int j = hq_ctz64(near);
                        near &= near - 1;
                        hist[dl[j]]++;
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

HQ_INTERNAL void ham_all_neon(const uint8_t *codes, int32_t nb, const hq_query *q, int64_t lo,
                              int64_t hi, int32_t *out)
{
    uint8x16_t qv[8];
    neon_query(q, qv);
    int64_t i = lo;
    HQ_NEON_DISPATCH(q->nw, {
        for (; i + 8 <= hi; i += 8) {
            hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
            const uint16x8_t d = neon_dist8(codes + i * (int64_t)nb, qv, NW);
            vst1q_s32(out + i, vreinterpretq_s32_u32(vmovl_u16(vget_low_u16(d))));
            vst1q_s32(out + i + 4, vreinterpretq_s32_u32(vmovl_high_u16(d)));
        }
    })
    ham_all_generic(codes, nb, q, i, hi, out);
}

HQ_INTERNAL int64_t ham_collect_neon(const hq_search_args *a, const hq_query *q, int64_t lo,
                                     int64_t hi, int64_t c, hq_keep *kp)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int32_t nb = a->code_bytes;
    uint8x16_t qv[8];
    neon_query(q, qv);
    uint32_t bound = kp->bound;
    int64_t n = kp->n, nvalid = 0; /* appends to the rows kept so far */
    hq_hit *buf = kp->buf;
    int64_t i = lo;
    HQ_NEON_DISPATCH(q->nw, {
        while (i + 8 <= hi) {
            const int64_t stop = hi - i > HQ_BOUND_BLOCK ? i + HQ_BOUND_BLOCK : hi;
            const uint16x8_t vbound = vdupq_n_u16((uint16_t)bound);
            const int64_t rows8 = (stop - i) & ~(int64_t)7; /* the rows this block scans */
            nvalid += valid ? neon_count_valid(valid + i, rows8) : rows8;
            for (; i + 8 <= stop; i += 8) {
                hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
                const uint16x8_t d = neon_dist8(codes + i * (int64_t)nb, qv, NW);
                unsigned near = neon_bits8(vcleq_u16(d, vbound));
                if (near && valid) /* rare once the bound is tight: only then the mask */
                    near &= nonzero8(valid + i);
                if (near) {
                    if (n + 8 > kp->cap) {
                        kp->overflow = 1;
                        goto out;
                    }
                    uint16_t dl[8];
                    vst1q_u16(dl, d);
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

HQ_INTERNAL void ham_heap_neon(const hq_search_args *a, const hq_query *q, int64_t lo, int64_t hi,
                               hq_entry *h, int64_t *n_io, int64_t cap)
{
    const uint8_t *codes = a->codes, *valid = a->valid;
    const int64_t *rowids = a->rowids;
    const int32_t nb = a->code_bytes;
    uint8x16_t qv[8];
    neon_query(q, qv);
    int64_t n = *n_io;
    uint32_t thr = n == cap ? (uint32_t)h[0].ham : UINT32_MAX;
    int64_t i = lo;
    HQ_NEON_DISPATCH(q->nw, {
        /* distances are <= 1024: a threshold past 0xFFFF compares as 0xFFFF */
        uint16x8_t vthr = vdupq_n_u16(thr > 0xFFFF ? 0xFFFF : (uint16_t)thr);
        for (; i + 8 <= hi; i += 8) {
            hq_prefetch(codes + i * (int64_t)nb, 8 * (int64_t)nb);
            const uint16x8_t d = neon_dist8(codes + i * (int64_t)nb, qv, NW);
            unsigned near = neon_bits8(vcleq_u16(d, vthr));
            if (!near) /* almost always, once the heap is full */
                continue;
            uint16_t dl[8];
            vst1q_u16(dl, d);
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
            vthr = vdupq_n_u16(thr > 0xFFFF ? 0xFFFF : (uint16_t)thr);
        }
    })
    *n_io = n;
    ham_heap_generic(a, q, i, hi, h, n_io, cap);
}

#else
/* ISO C wants a translation unit to declare something. */
typedef int hq_scan_neon_unused;
#endif
