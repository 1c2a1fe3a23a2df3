"""Builds the optional native host-ops extension `phaseedge._hostops` (cpp_ext/).

Everything else (packages, package-dir mapping, metadata) lives in pyproject.toml. The
build stays with setuptools rather than scikit-build-core because the design card maps
train/, export/ and benchmarks/ to phaseedge.* subpackages with setuptools' package-dir.

The extension is optional: without a C++ compiler (or without pybind11 at build time)
the package still installs and `phaseedge.hostops` runs on its numpy reference.
"""

from __future__ import annotations

import sys

from setuptools import setup

try:
    from pybind11.setup_helpers import Pybind11Extension, build_ext, has_flag
except ImportError:  # no pybind11 in a build without isolation: install the pure-Python package
    print("phaseedge: pybind11 not found, skipping the native host-ops extension", file=sys.stderr)
    setup()
    sys.exit(0)


class BuildExt(build_ext):
    """Adds OpenMP when the compiler supports it; the kernels also build (serial) without."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            flags, link = ["/O2", "/openmp", "/fp:precise"], []
        else:
            # -ffp-contract=off: no fused multiply-add, so sums round exactly like numpy's.
            flags, link = ["-O3", "-ffp-contract=off", "-fno-math-errno"], []
            if has_flag(self.compiler, "-fopenmp"):
                flags.append("-fopenmp")
                link.append("-fopenmp")
            else:
                print("phaseedge: compiler lacks -fopenmp, host ops build single-threaded", file=sys.stderr)
        for ext in self.extensions:
            ext.extra_compile_args += flags
            ext.extra_link_args += link
        super().build_extensions()


ext = Pybind11Extension(
    "phaseedge._hostops",
    sources=["cpp_ext/src/hostops.cpp"],
    depends=["cpp_ext/src/half.hpp"],
    include_dirs=["cpp_ext/src"],
    cxx_std=17,
    optional=True,  # a failed build warns and leaves the numpy path
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
