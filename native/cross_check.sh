#!/bin/sh
# Build hqdb's kernel sources with native/scan_check.c (every Hamming scan path against the
# scalar one, in plain C) and run it:
#
#   sh native/cross_check.sh            # aarch64: aarch64-linux-gnu-gcc, run under qemu-aarch64
#   sh native/cross_check.sh host       # this machine's gcc, run here (scalar/AVX2/AVX-512 on x86)
#
# aarch64 builds the NEON scans (hq_scan_neon.c): every source is compiled with -Wall -Wextra
# -Werror, linked, and run under qemu-user when qemu-aarch64 is installed (Debian:
# `apt-get install gcc-aarch64-linux-gnu qemu-user`). Exit status 77 = skipped (no cross
# compiler); the compile-only result when qemu is missing is said on stdout. CC / QEMU override
# the tools.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${1:-aarch64}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
SOURCES="hq_cpu.c hq_scan.c hq_scan_avx2.c hq_scan_avx512.c hq_scan_neon.c hq_select.c hq_rerank.c hq_search.c hq_batch.c"
FLAGS="-O3 -ffp-contract=off -std=gnu11 -Wall -Wextra -Werror -fopenmp"

if [ "$TARGET" = host ]; then
    CC=${CC:-gcc}
    RUN=""
else
    CC=${CC:-aarch64-linux-gnu-gcc}
    if ! command -v "$CC" >/dev/null 2>&1; then
        echo "SKIP: no $CC (Debian: apt-get install gcc-aarch64-linux-gnu)"
        exit 77
    fi
    QEMU=${QEMU:-qemu-aarch64}
    # where the aarch64 libc and loader live (Debian's cross packages: /usr/aarch64-linux-gnu)
    SYSROOT=${SYSROOT:-/usr/aarch64-linux-gnu}
    RUN="$QEMU -L $SYSROOT"
fi

echo "compiler: $("$CC" --version | head -n 1) ($("$CC" -dumpmachine))"
cd "$HERE"
for src in $SOURCES scan_check.c; do
    "$CC" $FLAGS -I. -c "$src" -o "$OUT/$src.o"
done
echo "compiled: $SOURCES scan_check.c with $FLAGS"
if [ "$TARGET" != host ]; then
    # the NEON scans must really be there: VCNT in the object
    if command -v "${CC%gcc}objdump" >/dev/null 2>&1; then
        n=$("${CC%gcc}objdump" -d "$OUT/hq_scan_neon.c.o" | grep -c "cnt	v" || true)
        echo "hq_scan_neon.c.o: $n vcnt instructions"
        [ "$n" -gt 0 ] || { echo "FAIL: no NEON popcount in hq_scan_neon.c.o"; exit 1; }
    fi
fi
"$CC" -fopenmp "$OUT"/*.o -o "$OUT/scan_check" -lm
if [ -n "$RUN" ] && ! command -v "${RUN%% *}" >/dev/null 2>&1; then
    echo "compiled and linked only: no ${RUN%% *} to run it (Debian: apt-get install qemu-user)"
    exit 0
fi
$RUN "$OUT/scan_check"
