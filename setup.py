"""Builds the optional native host-ops extension `phaseedge._hostops` (cpp_ext/).

Everything else (packages, package-dir mapping, metadata) lives in pyproject.toml. The
build stays with setuptools rather than scikit-build-core because the design card maps
train/, export/ and benchmarks/ to phaseedge.* subpackages with setuptools' package-dir.

The extension is optional: without a C++ compiler (or without pybind11 at build time)
the package still installs and `phaseedge.hostops` runs on its numpy reference.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

CUDA_SOURCE = Path(__file__).resolve().parent / "cpp_ext" / "cuda" / "hostops.cu"
#: SASS for Turing .. Blackwell; PTX of the first is JIT-compiled by the driver for anything newer
CUDA_ARCHS = "75;80;86;89;90;100;120"

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

    def run(self) -> None:
        super().run()
        self._build_cuda()  # after run(): setuptools builds out of place first, then copies in place

    def _build_cuda(self) -> None:
        """CUDA host-op kernels (optional): a fatbin beside the extension when nvcc is found.

        SASS for common GPUs plus PTX for the oldest arch, which the driver JIT-compiles for
        newer ones. PHASEEDGE_CUDA_ARCHS="75;80;..." overrides the list, PHASEEDGE_NO_CUDA=1
        skips it. A failure only warns: the CPU host ops do not depend on it.
        """
        if os.environ.get("PHASEEDGE_NO_CUDA", "") not in ("", "0"):
            return
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
        nvcc = shutil.which("nvcc") or shutil.which("nvcc", path=os.path.join(cuda_home, "bin"))
        if not nvcc:
            print("phaseedge: nvcc not found, skipping the CUDA host-op kernels", file=sys.stderr)
            return
        target = Path(self.get_ext_fullpath("phaseedge._hostops")).parent / "_hostops_cuda.fatbin"
        if not self.force and target.is_file() and target.stat().st_mtime >= CUDA_SOURCE.stat().st_mtime:
            return
        archs = [a.strip() for a in os.environ.get("PHASEEDGE_CUDA_ARCHS", CUDA_ARCHS).split(";") if a.strip()]
        gencode = [f"-gencode=arch=compute_{archs[0]},code=compute_{archs[0]}"]
        gencode += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        cmd = [nvcc, "-std=c++17", "-O3", "-fatbin", *gencode, str(CUDA_SOURCE), "-o", str(target)]
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            subprocess.run(cmd, check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            print(f"phaseedge: building the CUDA host-op kernels failed ({e}); CPU host ops unaffected",
                  file=sys.stderr)


ext = Pybind11Extension(
    "phaseedge._hostops",
    sources=["cpp_ext/src/hostops.cpp"],
    depends=["cpp_ext/src/half.hpp"],
    include_dirs=["cpp_ext/src"],
    cxx_std=17,
    optional=True,  # a failed build warns and leaves the numpy path
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
