/* hqdb search kernels: Hamming prefilter + Asymmetric Quantizer Distance (AQD) re-rank.
 *
 * Only hqdb/kernels/__init__.py calls these, after validating every buffer and scalar; the C side
 * still rejects arguments that would make it read or write out of bounds (HQ_ERR_ARG) and
 * checks every quantization code against the LUT width (HQ_ERR_QCODE).
 *
 * native/build_kernels.py hands this file's declarations to cffi as they are.
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

#define HQ_MAX_CODE_BYTES 128

int hq_cpu_features(void);
int hq_openmp_available(void);
int hq_max_threads(void);
/* Which Hamming implementation hq_hamming/hq_search use on this CPU (for info()). */
const char *hq_hamming_impl(void);
/* Test knobs (not thread-safe; results never depend on them, only the code path taken).
 * Sets `knob` to `value` unless value < 0; returns the previous value, -1 if unknown/unusable.
 *   HQ_KNOB_AVX512          1 = use the AVX-512 VPOPCNTDQ Hamming path where possible, 0 = not
 *   HQ_KNOB_MIN_CHUNK_ROWS  fewest rows per thread chunk (default 32768)
 *   HQ_KNOB_PATH            Hamming stage route: 0 = choose, 1 = full, 2 = fast with a guess
 *                           that is too small (exercises the fallback), 3 = always fast.
 *                           hq_search_many's kept-buffer route: 1 = no sampled first bound,
 *                           2 = a first bound too small (queries fall back to hq_search) */
#define HQ_KNOB_AVX512 0
#define HQ_KNOB_MIN_CHUNK_ROWS 1
#define HQ_KNOB_PATH 2
int64_t hq_tune(int32_t knob, int64_t value);

int hq_hamming(const uint8_t *codes, int64_t n_rows, int32_t nb, const uint8_t *query,
               int32_t *out, int32_t threads);

int hq_aqd_lut(const float *query, const float *codebooks, int32_t m, int32_t kw, int32_t dim,
               float *out, int32_t threads);

int hq_search(const uint8_t *codes, int32_t nb, const void *qcodes, int32_t qcode_bytes,
              int32_t m, const int64_t *rowids, const uint8_t *valid, int64_t n_rows,
              const uint8_t *query_bits, const float *lut, int32_t kw, int32_t mode, int64_t k,
              int64_t candidates, int32_t threads, int64_t *out_rowids, float *out_dist,
              int32_t *out_ham, int64_t *out_n);

/* Many queries over the same rows in one call, each with the result hq_search would give it.
 * query_bits is n_queries x nb bytes; luts n_queries x m x kw floats (NULL in Hamming mode);
 * query j's results go to out_*[j * k ...], out_n[j] of them. */
int hq_search_many(const uint8_t *codes, int32_t nb, const void *qcodes, int32_t qcode_bytes,
                   int32_t m, const int64_t *rowids, const uint8_t *valid, int64_t n_rows,
                   int64_t n_queries, const uint8_t *query_bits, const float *luts, int32_t kw,
                   int32_t mode, int64_t k, int64_t candidates, int32_t threads,
                   int64_t *out_rowids, float *out_dist, int32_t *out_ham, int64_t *out_n);

#endif
