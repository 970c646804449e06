"""Native kernels for hqdb: everything else is in pyproject.toml.

The cffi extension hqdb.kernels._native is optional: if it fails to compile, the install still
succeeds (with a warning) and hqdb runs on its numba fallback.
"""

import os

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when a native extension can't be built."""

    def run(self):
        self._failed = set()
        try:
            super().run()
        except Exception as exc:  # e.g. no compiler at all: raised before any extension
            self._warn("all extensions", exc)
            self._failed.update(ext.name for ext in self.extensions)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._warn(ext.name, exc)
            self._failed.add(ext.name)

    def copy_extensions_to_source(self):
        # Editable installs copy built extensions next to the sources: skip the failed ones.
        failed = getattr(self, "_failed", set())
        kept = self.extensions
        self.extensions = [e for e in kept if e.name not in failed]
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = kept

    # Editable and wheel builds list what build_ext produced: leave out what never got built.
    def get_outputs(self):
        outputs = super().get_outputs()
        if getattr(self, "_failed", None):
            outputs = [p for p in outputs if os.path.exists(p)]
        return outputs

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        if getattr(self, "_failed", None):
            mapping = {src: dst for src, dst in mapping.items() if os.path.exists(src)}
        return mapping

    @staticmethod
    def _warn(what, exc):
        bar = "*" * 72
        print(
            f"\n{bar}\nWARNING: hqdb could not build its native kernels ({what}): {exc}\n"
            f"hqdb will run on the (slower) numba fallback.\n{bar}\n",
            flush=True,
        )


setup(
    cffi_modules=["native/build_kernels.py:ffibuilder"],
    cmdclass={"build_ext": OptionalBuildExt},
)
