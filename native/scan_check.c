/* Every Hamming scan path against the scalar one, in plain C (no Python): for running the
 * kernels where Python can't, e.g. the aarch64 build under qemu-user (native/cross_check.sh).
 * Not part of the extension (build_kernels.py doesn't list it).
 *
 * For code sizes with and without a vector path, row counts with and without a tail, with and
 * without a validity mask, with many ties: hq_hamming against a bit-by-bit count, then
 * hq_search (every mode, every route of hq_knobs.path, 1 and 3 threads) and hq_search_many on
 * each path of hq_hamming_paths() against the scalar path's results, byte for byte. Prints one
 * line per path and exits 1 at the first difference. */
#include "hq_kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static const char *const isa_names[] = {"auto", "scalar", "avx2", "avx512", "neon"};

typedef struct {
    int64_t n;
    int32_t nb, m, kw;
    uint8_t *codes, *qcodes, *valid;
    int64_t *rowids;
    int64_t nq;
    uint8_t *queries;
    float *luts;
} table;

static void table_make(table *t, int64_t n, int32_t nb, int pool, int with_valid)
{
    t->n = n;
    t->nb = nb;
    t->m = 3;
    t->kw = 16;
    t->nq = 5;
    t->codes = malloc((size_t)(n ? n : 1) * nb);
    t->qcodes = malloc((size_t)(n ? n : 1) * t->m);
    t->valid = with_valid ? malloc((size_t)(n ? n : 1)) : NULL;
    t->rowids = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    t->queries = malloc((size_t)t->nq * nb);
    t->luts = malloc((size_t)t->nq * t->m * t->kw * sizeof(float));
    uint8_t base[8][128];
    for (int p = 0; p < 8; p++)
        for (int b = 0; b < 128; b++)
            base[p][b] = (uint8_t)rnd();
    for (int64_t i = 0; i < n; i++) {
        for (int32_t b = 0; b < nb; b++)
            t->codes[i * nb + b] = pool ? base[rnd() % pool][b] : (uint8_t)rnd();
        for (int32_t l = 0; l < t->m; l++)
            t->qcodes[i * t->m + l] = (uint8_t)(rnd() % t->kw);
        if (t->valid)
            t->valid[i] = (rnd() % 10) < 7 ? (uint8_t)(1 + rnd() % 200) : 0;
        t->rowids[i] = (int64_t)(rnd() % 1000000) * (n + 1) + i - 500000 * (n + 1); /* unique */
    }
    for (int64_t j = 0; j < t->nq; j++)
        for (int32_t b = 0; b < nb; b++)
            t->queries[j * nb + b] = (pool && j == 0) ? base[0][b] : (uint8_t)rnd();
    for (int64_t x = 0; x < t->nq * t->m * t->kw; x++)
        t->luts[x] = (float)((int)(rnd() % 9) - 4); /* few values: many equal scores */
}

static void table_free(table *t)
{
    free(t->codes);
    free(t->qcodes);
    free(t->valid);
    free(t->rowids);
    free(t->queries);
    free(t->luts);
}

/* Everything one path returns for the table: distances, then every search's outputs. */
typedef struct {
    unsigned char *buf;
    size_t n, cap;
} blob;

static void put(blob *b, const void *p, size_t n)
{
    if (b->n + n > b->cap) {
        b->cap = 2 * (b->n + n);
        b->buf = realloc(b->buf, b->cap);
        if (!b->buf) {
            fprintf(stderr, "out of memory\n");
            exit(2);
        }
    }
    memcpy(b->buf + b->n, p, n);
    b->n += n;
}

static int failed;

static void check(int ok, const char *what, const table *t)
{
    if (!ok && !failed) {
        fprintf(stderr, "FAIL: %s (nb %d, n %lld, valid %s)\n", what, t->nb, (long long)t->n,
                t->valid ? "yes" : "no");
        failed = 1;
    }
}

static void run_all(const table *t, blob *out)
{
    const int64_t k = 7, nq = t->nq;
    int32_t *dist = malloc((size_t)(t->n ? t->n : 1) * sizeof(int32_t));
    int64_t *rowids = malloc((size_t)nq * k * sizeof(int64_t));
    float *d = malloc((size_t)nq * k * sizeof(float));
    int32_t *ham = malloc((size_t)nq * k * sizeof(int32_t));
    int64_t *cnt = malloc((size_t)nq * sizeof(int64_t));
    for (int64_t j = 0; j < nq; j++) {
        check(hq_hamming(t->codes, t->n, t->nb, t->queries + j * t->nb, dist, 2) == HQ_OK,
              "hq_hamming rc", t);
        for (int64_t i = 0; i < t->n; i++) { /* the definition, bit by bit */
            int32_t s = 0;
            for (int32_t b = 0; b < t->nb; b++)
                for (int bit = 0; bit < 8; bit++)
                    s += ((t->codes[i * t->nb + b] ^ t->queries[j * t->nb + b]) >> bit) & 1;
            if (dist[i] != s) {
                check(0, "hq_hamming distance", t);
                break;
            }
        }
        put(out, dist, (size_t)t->n * sizeof(int32_t));
    }
    for (int32_t mode = 0; mode <= 2; mode++)
        for (int64_t cand = 1; cand <= 300; cand *= 20)
            for (int32_t path = 0; path <= 3; path++)
                for (int32_t threads = 1; threads <= 3; threads += 2) {
                    hq_knobs kn = {-1, path, threads == 3 ? 64 : 32768};
                    hq_knobs_set(&kn);
                    hq_search_args a = {
                        t->codes, mode == HQ_MODE_HAMMING ? NULL : t->qcodes, t->rowids, t->valid,
                        t->n, t->nb, mode == HQ_MODE_HAMMING ? 0 : 1,
                        mode == HQ_MODE_HAMMING ? 0 : t->m, t->kw, 1, NULL,
                        mode == HQ_MODE_HAMMING ? NULL : t->luts, mode, threads, k, cand,
                        rowids, d, ham, cnt};
                    for (int64_t j = 0; j < nq; j++) { /* one query at a time */
                        a.query_bits = t->queries + j * t->nb;
                        a.luts = mode == HQ_MODE_HAMMING ? NULL : t->luts + j * t->m * t->kw;
                        check(hq_search(&a) == HQ_OK, "hq_search rc", t);
                        put(out, cnt, sizeof(int64_t));
                        put(out, rowids, (size_t)cnt[0] * sizeof(int64_t));
                        put(out, d, (size_t)cnt[0] * sizeof(float));
                        put(out, ham, (size_t)cnt[0] * sizeof(int32_t));
                    }
                    if (path == 3)
                        continue; /* hq_search_many's knob values are 0..2 */
                    a.n_queries = nq; /* the batch */
                    a.query_bits = t->queries;
                    a.luts = mode == HQ_MODE_HAMMING ? NULL : t->luts;
                    check(hq_search_many(&a) == HQ_OK, "hq_search_many rc", t);
                    put(out, cnt, (size_t)nq * sizeof(int64_t));
                    for (int64_t j = 0; j < nq; j++) {
                        put(out, rowids + j * k, (size_t)cnt[j] * sizeof(int64_t));
                        put(out, d + j * k, (size_t)cnt[j] * sizeof(float));
                        put(out, ham + j * k, (size_t)cnt[j] * sizeof(int32_t));
                    }
                }
    hq_knobs reset = {-1, 0, 32768};
    hq_knobs_set(&reset);
    free(dist);
    free(rowids);
    free(d);
    free(ham);
    free(cnt);
}

int main(void)
{
    static const int32_t sizes[] = {1, 7, 8, 9, 16, 17, 24, 32, 40, 64, 100, 128};
    static const int64_t rows[] = {0, 1, 7, 8, 9, 15, 1000, 5003};
    const int paths = hq_hamming_paths();
    long checks = 0;
    printf("cpu features %d, paths:", hq_cpu_features());
    for (int isa = 1; isa <= HQ_ISA_NEON; isa++)
        if (paths & (1 << isa))
            printf(" %s", isa_names[isa]);
    printf(" (in use: %s)\n", isa_names[hq_hamming_path()]);
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
        for (size_t r = 0; r < sizeof rows / sizeof *rows; r++)
            for (int variant = 0; variant < 3; variant++) {
                table t;
                table_make(&t, rows[r], sizes[s], variant == 2 ? 3 : 0, variant == 1);
                blob want = {0}, got = {0};
                hq_knobs scalar = {HQ_ISA_SCALAR, -1, -1};
                check(hq_knobs_set(&scalar) == HQ_OK, "knob isa=scalar", &t);
                run_all(&t, &want);
                for (int isa = HQ_ISA_AVX2; isa <= HQ_ISA_NEON; isa++) {
                    if (!(paths & (1 << isa)))
                        continue;
                    hq_knobs kn = {isa, -1, -1};
                    check(hq_knobs_set(&kn) == HQ_OK && hq_hamming_path() == isa, "knob isa", &t);
                    got.n = 0;
                    run_all(&t, &got);
                    check(got.n == want.n && memcmp(got.buf, want.buf, want.n) == 0, isa_names[isa],
                          &t);
                    checks++;
                }
                hq_knobs autok = {HQ_ISA_AUTO, -1, -1};
                hq_knobs_set(&autok);
                free(want.buf);
                free(got.buf);
                table_free(&t);
                if (failed)
                    return 1;
            }
    for (int isa = 0; isa <= HQ_ISA_NEON; isa++) { /* a path the build lacks is refused */
        hq_knobs kn = {isa, -1, -1};
        const int ok = hq_knobs_set(&kn) == HQ_OK;
        if (ok != (isa == 0 || (paths & (1 << isa)) != 0)) {
            fprintf(stderr, "FAIL: knob isa=%d accepted=%d\n", isa, ok);
            return 1;
        }
    }
    hq_knobs bad = {HQ_ISA_NEON + 1, -1, -1};
    if (hq_knobs_set(&bad) != HQ_ERR_ARG) {
        fprintf(stderr, "FAIL: knob isa=5 accepted\n");
        return 1;
    }
    printf("OK: %ld table x path comparisons against the scalar path, every one identical\n",
           checks);
    return 0;
}
