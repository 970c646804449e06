/* hqdb search kernels: Hamming prefilter + Asymmetric Quantizer Distance (AQD) re-rank.
 *
 * The public interface, plain C: native/build_kernels.py hands this file's declarations to cffi
 * as they are (its preprocessor lines dropped), so hqdb.kernels._native exposes exactly these.
 *
 * Only hqdb/kernels/__init__.py calls these, after validating every buffer and scalar; the C side
 * still rejects arguments that would make it read or write out of bounds (HQ_ERR_ARG) and
 * checks every quantization code against the LUT width (HQ_ERR_QCODE).
 *
 * The sources, one stage each (internal declarations in hq_common.h):
 *   hq_cpu.c          CPU features (detected once, at load), test knobs, thread chunks, info
 *   hq_scan.c         Hamming scans, portable (multi-versioned per popcount ISA), hq_hamming,
 *                     hq_pack_bits,
 *                     and the dispatch between the scan paths (hq_knobs.isa)
 *   hq_scan_avx2.c    the same scans with AVX2 (VPSHUFB nibble popcount + VPSADBW, 8 rows a step)
 *   hq_scan_avx512.c  the same scans with AVX-512 VPOPCNTDQ (8 rows a step)
 *   hq_scan_neon.c    the same scans with NEON (vcntq_u8 + pairwise adds; aarch64 builds only)
 *   hq_select.c       bounded heaps, top-c selection, histogram threshold, the kept rows' ranking
 *   hq_rerank.c       AQD lookup table (hq_aqd_lut), AQD scores, the final ranking of candidates
 *   hq_search.c       the shared argument check and one query's search (hq_search)
 *   hq_batch.c        many queries over the same rows in one pass (hq_search_many)
 */
#ifndef HQ_KERNELS_H
#define HQ_KERNELS_H

#include <stdint.h>

#define HQ_OK 0
#define HQ_ERR_QCODE (-1)  /* a quantization code >= number of codewords */
#define HQ_ERR_NOMEM (-2)
#define HQ_ERR_ARG (-3)

#define HQ_MODE_HAMMING 0
#define HQ_MODE_AQD 1
#define HQ_MODE_TWO_STAGE 2

#define HQ_CPU_POPCNT 1
#define HQ_CPU_AVX2 2
#define HQ_CPU_AVX512_VPOPCNTDQ 4
#define HQ_CPU_NEON 8

/* The Hamming scan paths (hq_knobs.isa, hq_hamming_path, hq_hamming_paths). Scalar is hq_scan.c:
 * one row at a time, 64-bit popcounts (POPCNT where the CPU has it, through target_clones; bit
 * tricks elsewhere); the others are hq_scan_avx2.c, hq_scan_avx512.c and hq_scan_neon.c. */
#define HQ_ISA_AUTO 0
#define HQ_ISA_SCALAR 1
#define HQ_ISA_AVX2 2
#define HQ_ISA_AVX512 3
#define HQ_ISA_NEON 4

#define HQ_MAX_CODE_BYTES 128

/* A search: the rows, the queries, the parameters and where the results go. The caller fills
 * every field (unused pointers NULL, unused sizes 0).
 *
 * hq_search takes exactly one query (n_queries == 1); hq_search_many any number. Query j's
 * results, best first, go to out_rowids/out_dist/out_ham[j * k ...], out_n[j] of them
 * (out_n[j] <= min(k, valid rows)). */
typedef struct {
    /* the rows: n_rows of them */
    const uint8_t *codes;   /* n_rows x code_bytes packed bit codes */
    const void *qcodes;     /* n_rows x books quantization codes, uint8_t or uint16_t
                               (qcode_bytes 1 or 2); NULL in Hamming mode */
    const int64_t *rowids;  /* n_rows */
    const uint8_t *valid;   /* n_rows, 0 = skip the row; NULL = every row is valid */
    int64_t n_rows;
    int32_t code_bytes;     /* 1..HQ_MAX_CODE_BYTES */
    int32_t qcode_bytes;    /* 1 or 2 (0 in Hamming mode) */
    int32_t books;          /* m >= 1 (0 in Hamming mode) */
    int32_t codewords;      /* kw >= 1, the LUT width: every quantization code must be < kw */
    /* the queries */
    int64_t n_queries;
    const uint8_t *query_bits; /* n_queries x code_bytes */
    const float *luts;         /* n_queries x books x codewords, finite; NULL in Hamming mode */
    /* the parameters, the same for every query */
    int32_t mode;           /* HQ_MODE_* */
    int32_t threads;        /* results do not depend on it */
    int64_t k;              /* >= 1: results per query, also the stride of the outputs */
    int64_t candidates;     /* >= 1: rows the Hamming stage keeps in two-stage mode (>= k kept) */
    /* the results */
    int64_t *out_rowids;    /* n_queries x k */
    float *out_dist;        /* n_queries x k: -AQD score, or the Hamming distance */
    int32_t *out_ham;       /* n_queries x k */
    int64_t *out_n;         /* n_queries */
} hq_search_args;

int hq_search(const hq_search_args *args);
/* Many queries over the same rows in one call, each with the result hq_search would give it. */
int hq_search_many(const hq_search_args *args);

int hq_hamming(const uint8_t *codes, int64_t n_rows, int32_t nb, const uint8_t *query,
               int32_t *out, int32_t threads);
/* One vector's bit code: bit i (bit i % 8 of byte i / 8) set iff x[i] > 0, for n a positive
 * multiple of 8 (out: n / 8 bytes). HQ_ERR_ARG, out untouched, if any value is NaN or infinite. */
int hq_pack_bits(const float *x, int64_t n, uint8_t *out);

int hq_aqd_lut(const float *query, const float *codebooks, int32_t m, int32_t kw, int32_t dim,
               float *out, int32_t threads);

/* Test knobs: which code path runs, never what it returns. The one place they are documented
 * (hqdb.kernels._tune drives them by these field names). Process-wide, not thread-safe: for
 * tests only. */
typedef struct {
    /* The Hamming scan path (HQ_ISA_*): 0 = the fastest this CPU and build have (the default:
     * AVX-512 VPOPCNTDQ, else AVX2 on x86-64; NEON on aarch64; else scalar), 1 = scalar,
     * 2 = AVX2, 3 = AVX-512 VPOPCNTDQ, 4 = NEON. A vector path covers 8/16/32/64/128-byte codes;
     * other code sizes, and the rows at the end of a range that don't fill a vector, always take
     * the scalar code. Forcing a path the CPU or the build lacks is HQ_ERR_ARG (hq_hamming_paths
     * lists the ones available). Every path returns the same results. */
    int32_t isa;
    /* The Hamming stage's route. hq_search: 0 = choose (the default), 1 = always the full scan,
     * 2 = the fast route with a guessed bound too small (exercises its fallback to the full
     * scan), 3 = always try the fast route. hq_search_many's kept-buffer route: 1 = no sampled
     * first bound, 2 = a first bound too small (the queries fall back to hq_search). */
    int32_t path;
    /* The fewest rows per thread chunk (default 32768); small values make small tables split. */
    int64_t min_chunk_rows;
} hq_knobs;

/* The knobs in use. */
void hq_knobs_get(hq_knobs *out);
/* Set the knobs from *in; a field < 0 leaves its knob as it is. HQ_ERR_ARG, and nothing changes,
 * if a value is out of range (isa > 4 or a path not in hq_hamming_paths(), path > 3,
 * min_chunk_rows == 0). */
int hq_knobs_set(const hq_knobs *in);

int hq_cpu_features(void); /* HQ_CPU_* bits, detected once when the module loads */
/* The Hamming scan paths this CPU and build can run: bit (1 << HQ_ISA_*) for each (scalar is
 * always there). */
int hq_hamming_paths(void);
/* The path the scans of 8/16/32/64/128-byte codes take now (HQ_ISA_*, never HQ_ISA_AUTO). */
int hq_hamming_path(void);
int hq_openmp_available(void);
int hq_max_threads(void);
/* Which Hamming implementation hq_hamming/hq_search use now, in words (for info()). */
const char *hq_hamming_impl(void);

#endif
