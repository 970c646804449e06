/* CPU features, test knobs, thread chunks and the info functions (see hq_kernels.h). */
#include "hq_common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Documented at hq_knobs in hq_kernels.h. */
HQ_INTERNAL hq_knobs hq_knob = {HQ_ISA_AUTO, 0, 32768};

/* ---------------------------------------------------------------------------------------- */
/* CPU features: detected once, when the module loads, not on every dispatch.                 */

static int cpu_features; /* HQ_CPU_* */
static int isa_paths = 1 << HQ_ISA_SCALAR; /* 1 << HQ_ISA_*: the scan paths this CPU and build run */
static int isa_best = HQ_ISA_SCALAR;       /* the fastest of them (HQ_ISA_AUTO) */
static int isa_now = HQ_ISA_SCALAR;        /* the one in use: the knob's, or isa_best */

#if defined(HQ_HAVE_AVX2) || defined(HQ_HAVE_AVX512) || defined(HQ_HAVE_NEON)
static void isa_add(int isa)
{
    isa_paths |= 1 << isa;
    isa_best = isa; /* added slowest first */
}
#endif

#ifdef HQ_X86_GNUC
/* Runs when the extension is loaded, before any kernel call (and before any thread starts). */
__attribute__((constructor)) static void cpu_detect(void)
{
    __builtin_cpu_init(); /* needed in a constructor: it may run before libgcc's own */
    int f = 0;
    if (__builtin_cpu_supports("popcnt"))
        f |= HQ_CPU_POPCNT;
    if (__builtin_cpu_supports("avx2"))
        f |= HQ_CPU_AVX2;
    if (__builtin_cpu_supports("avx512vpopcntdq"))
        f |= HQ_CPU_AVX512_VPOPCNTDQ;
    cpu_features = f;
#ifdef HQ_HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt"))
        isa_add(HQ_ISA_AVX2);
#endif
#ifdef HQ_HAVE_AVX512
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vpopcntdq"))
        isa_add(HQ_ISA_AVX512);
#endif
    isa_now = isa_best;
}
#elif defined(__aarch64__)
/* Advanced SIMD is part of every aarch64 CPU. */
__attribute__((constructor)) static void cpu_detect(void)
{
    cpu_features = HQ_CPU_NEON;
#ifdef HQ_HAVE_NEON
    isa_add(HQ_ISA_NEON);
#endif
    isa_now = isa_best;
}
#endif

int hq_cpu_features(void)
{
    return cpu_features;
}

int hq_hamming_paths(void)
{
    return isa_paths;
}

int hq_hamming_path(void)
{
    return isa_now;
}

HQ_INTERNAL int scan_isa(int32_t nb)
{
    return (nb == 8 || nb == 16 || nb == 32 || nb == 64 || nb == 128) ? isa_now : HQ_ISA_SCALAR;
}

const char *hq_hamming_impl(void)
{
    switch (isa_now) {
    case HQ_ISA_AVX512:
        return "avx512-vpopcntdq (8/16/32/64/128-byte codes), popcnt (other sizes)";
    case HQ_ISA_AVX2:
        return "avx2 (vpshufb nibble popcount + vpsadbw; 8/16/32/64/128-byte codes), popcnt (other "
               "sizes)";
    case HQ_ISA_NEON:
        return "neon (vcntq_u8 + pairwise adds; 8/16/32/64/128-byte codes), scalar (other sizes)";
    default:
        break;
    }
#ifdef HQ_HAVE_CLONES
    if (cpu_features & HQ_CPU_POPCNT)
        return "popcnt";
    return "swar";
#else
    return "portable";
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* Knobs                                                                                      */

void hq_knobs_get(hq_knobs *out)
{
    if (out)
        *out = hq_knob;
}

int hq_knobs_set(const hq_knobs *in)
{
    if (!in || in->isa > HQ_ISA_NEON || (in->isa > 0 && !(isa_paths & (1 << in->isa))) ||
        in->path > 3 || in->min_chunk_rows == 0)
        return HQ_ERR_ARG;
    if (in->isa >= 0) {
        hq_knob.isa = in->isa;
        isa_now = in->isa == HQ_ISA_AUTO ? isa_best : in->isa;
    }
    if (in->path >= 0)
        hq_knob.path = in->path;
    if (in->min_chunk_rows > 0)
        hq_knob.min_chunk_rows = in->min_chunk_rows;
    return HQ_OK;
}

/* ---------------------------------------------------------------------------------------- */
/* Threads                                                                                    */

int hq_openmp_available(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int hq_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

/* Below min_chunk_rows rows per chunk, splitting costs more than it saves. */
HQ_INTERNAL int32_t n_chunks(int64_t n_rows, int32_t threads)
{
#ifdef _OPENMP
    int64_t t = threads < 1 ? 1 : threads;
    int64_t by_size = n_rows / hq_knob.min_chunk_rows;
    if (t > HQ_MAX_CHUNKS)
        t = HQ_MAX_CHUNKS;
    if (t > by_size)
        t = by_size;
    return t < 1 ? 1 : (int32_t)t;
#else
    (void)n_rows;
    (void)threads;
    return 1;
#endif
}
