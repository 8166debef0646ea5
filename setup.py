"""Builds gemini_ops/_C: the CPU kernels and the emulated CUDA kernels always,
the real CUDA kernels when torch is a CUDA build (FORCE_CUDA=1 insists).

The CPU kernels (csrc/cpu/isa_*.cpp) are compiled once per instruction set
(portable, AVX2, AVX-512) and chosen at run time; see csrc/cpu/capability.h.

Environment:
    FORCE_CUDA=1          build the CUDA kernels or fail saying why
    CUDA_HOME             the CUDA toolkit (found from known places otherwise;
                          never guessed from a wrapper nvcc on PATH)
    TORCH_CUDA_ARCH_LIST  needed for a CUDA build on a machine without a GPU
    GEMINI_SANITIZE=1     AddressSanitizer + UndefinedBehaviorSanitizer build
    MAX_JOBS              parallel compile jobs
"""

from __future__ import annotations

import glob
import os
import site
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _toolkit_ok(path: str) -> bool:
    lib = any(glob.glob(os.path.join(path, d, "libcudart.so*")) for d in ("lib64", "lib", "targets/*/lib"))
    return os.path.isfile(os.path.join(path, "bin", "nvcc")) and lib


def _find_cuda_home(cuda_version: str | None) -> str | None:
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    if cuda_version:
        candidates.append(f"/usr/local/cuda-{cuda_version}")
    candidates += ["/usr/local/cuda", *sorted(glob.glob("/usr/local/cuda-*"), reverse=True), "/opt/cuda"]
    for path in candidates:
        if path and _toolkit_ok(path):
            return os.path.realpath(path)
    return None


def _nvidia_wheel_includes() -> list[str]:
    """cuBLAS/cuSPARSE headers that ATen/cuda needs come with torch's pip
    `nvidia-*` wheels, not always with the toolkit."""
    roots = site.getsitepackages() + [site.getusersitepackages()] + [p for p in sys.path if "site-packages" in p]
    found = []
    for root in dict.fromkeys(roots):
        for inc in sorted(glob.glob(os.path.join(root, "nvidia", "*", "include"))):
            if glob.glob(os.path.join(inc, "cublas*.h")) or glob.glob(os.path.join(inc, "cusparse*.h")):
                found.append(inc)
    return found


def _want_cuda(torch_cuda: str | None) -> tuple[bool, str | None]:
    force = os.environ.get("FORCE_CUDA", "0") == "1"
    if torch_cuda is None:
        if force:
            sys.exit("FORCE_CUDA=1 but the installed torch is a CPU build (torch.version.cuda is None)")
        return False, None
    home = _find_cuda_home(torch_cuda)
    if home is None:
        if force:
            sys.exit("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME to the toolkit folder")
        print("gemini_ops: torch has CUDA but no toolkit was found; building the CPU kernels only", file=sys.stderr)
        return False, None
    return True, home


def main() -> None:
    import torch

    build_cuda, cuda_home = _want_cuda(torch.version.cuda)
    if build_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # read when cpp_extension is imported
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            sys.exit(
                "gemini_ops: building the CUDA kernels without a visible GPU needs TORCH_CUDA_ARCH_LIST "
                "(for example TORCH_CUDA_ARCH_LIST='8.0;9.0')"
            )

    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    csrc = os.path.join("csrc")
    sources = [os.path.join(csrc, f) for f in ("ops.cpp", "ops_emulated.cpp")]
    sources += sorted(glob.glob(os.path.join(csrc, "cpu", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "emulated", "*.cpp")))
    include_dirs = [os.path.join(HERE, csrc, "include"), os.path.join(HERE, csrc, "cuda")]
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    link = ["-fopenmp"]
    if os.environ.get("GEMINI_SANITIZE") == "1":
        san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"]
        cxx = ["-O1", "-fopenmp", *san]
        link = ["-fopenmp", *san]
    define_macros = []
    if build_cuda:
        sources += [os.path.join(csrc, "ops_cuda.cpp")] + sorted(glob.glob(os.path.join(csrc, "cuda", "*.cu")))
        include_dirs += _nvidia_wheel_includes()
        define_macros.append(("GEMINI_WITH_CUDA", None))
        ext = CUDAExtension(
            "gemini_ops._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link,
        )
    else:
        ext = CppExtension(
            "gemini_ops._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx},
            extra_link_args=link,
        )
    setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=True)})


main()
