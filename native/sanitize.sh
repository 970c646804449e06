#!/bin/sh
# Build hqdb's native kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a scratch
# copy of the project and run the kernel property tests (and any test files given) against
# that build. Any sanitizer report aborts the run with a non-zero exit status.
#
#   sh native/sanitize.sh                        # tests/test_kernels.py
#   sh native/sanitize.sh tests/test_batch.py    # more test files
#
# Needs gcc with libasan/libubsan (Debian: gcc ships them). Not part of the default test run.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -r "$ROOT/hqdb" "$ROOT/native" "$ROOT/tests" "$ROOT/migrations" "$ROOT/setup.py" "$ROOT/pyproject.toml" "$WORK/"
cd "$WORK"
rm -f hqdb/kernels/_native*.so
SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
# Through CC, so the OpenMP probe's test link and the extension's link both get the runtimes.
CC="gcc $SAN" "$PY" setup.py -q build_ext --inplace >build.log 2>&1 || {
    cat build.log; exit 1; }
ls hqdb/kernels/_native*.so >/dev/null
PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
export LD_PRELOAD="$PRELOAD"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
"$PY" -c "import hqdb.kernels as k; b = k.info()['backend']; assert b == 'native', b; print('sanitized native kernels:', k.info())"
[ $# -gt 0 ] || set -- tests/test_kernels.py
"$PY" -m pytest -q -p no:cacheprovider "$@"
