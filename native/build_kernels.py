"""cffi (API mode) build of hqdb's native search kernels as the extension ``hqdb.kernels._native``.

Used by setup.py through ``cffi_modules=["native/build_kernels.py:ffibuilder"]``: build it with
``pip install -e .`` (or ``pip install .``). The sources, one stage each, are listed in SOURCES
(and described in hq_kernels.h); they are compiled together into the one extension.

Flags: ``-O3 -ffp-contract=off`` keeps float arithmetic exactly as written (no FMA fusion, never
``-ffast-math``) so results match the numba fallback bit for bit. OpenMP is used when a probe
compile with ``-fopenmp`` succeeds (set ``HQDB_NO_OPENMP=1`` to build without it). No
``-march=native``: the Hamming scans have AVX2 and AVX-512 versions (target attributes) and a
multi-versioned portable one, chosen at run time by the CPU's features, and a NEON version on
aarch64 (``HQDB_NATIVE_PORTABLE=1`` builds only the portable code, to test it on any machine).
"""

from __future__ import annotations

import os
import sys
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [
    "hq_cpu.c",
    "hq_scan.c",
    "hq_scan_avx2.c",
    "hq_scan_avx512.c",
    "hq_scan_neon.c",
    "hq_select.c",
    "hq_rerank.c",
    "hq_search.c",
    "hq_batch.c",
]
HEADERS = ["hq_kernels.h", "hq_common.h"]


def _cdef_from_header() -> str:
    """The public header's declarations (its preprocessor lines dropped: cffi's cdef takes
    plain declarations), so the header and the cffi interface never drift apart."""
    with open(os.path.join(HERE, "hq_kernels.h"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("#"))


CDEF = _cdef_from_header()


def _rel(path: str) -> str:
    # setuptools wants source paths relative to the project root (the cwd of a build).
    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _is_msvc() -> bool:
    return sys.platform == "win32" and "GCC" not in sys.version


def _openmp_works(flag: str) -> bool:
    """Compile and link a tiny OpenMP program with the compiler setuptools will use."""
    if os.environ.get("HQDB_NO_OPENMP") == "1":
        return False
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler
    except ImportError:  # pragma: no cover - very old setuptools
        from distutils.ccompiler import new_compiler
        from distutils.sysconfig import customize_compiler
    try:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as f:
                f.write(
                    "#include <omp.h>\n"
                    "int main(void) { int n = 0;\n"
                    "#pragma omp parallel reduction(+:n)\n"
                    "  n += 1;\n"
                    "  return n > 0 && omp_get_max_threads() > 0 ? 0 : 1; }\n"
                )
            cc = new_compiler()
            customize_compiler(cc)
            objs = cc.compile([src], output_dir=tmp, extra_postargs=[flag])
            cc.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=[flag])
        return True
    except Exception:  # any compiler/linker failure just means "no OpenMP"
        return False


def _flags() -> tuple[list[str], list[str]]:
    if _is_msvc():
        compile_args = ["/O2", "/fp:precise"]
        return (compile_args + ["/openmp"], []) if _openmp_works("/openmp") else (compile_args, [])
    compile_args = ["-O3", "-ffp-contract=off", "-std=gnu11"]
    if os.environ.get("HQDB_NATIVE_PORTABLE") == "1":  # only the portable C (tests that path)
        compile_args.append("-DHQ_PORTABLE")
    link_args: list[str] = []
    if _openmp_works("-fopenmp"):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    return compile_args, link_args


_compile_args, _link_args = _flags()

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "hqdb.kernels._native",
    '#include "hq_kernels.h"',
    sources=[_rel(os.path.join(HERE, name)) for name in SOURCES],
    include_dirs=[_rel(HERE)],
    depends=[_rel(os.path.join(HERE, name)) for name in HEADERS],
    extra_compile_args=_compile_args,
    extra_link_args=_link_args,
)
