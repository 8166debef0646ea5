"""`make cuda-check`: the CUDA build of gemini_ops/_C loads with every symbol
resolved (run under LD_BIND_NOW=1), registers CUDA kernels for every op, and
its CPU kernels agree with the reference. With a GPU it also runs the CUDA
tests."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

import gemini_ops
from gemini_ops import reference

OPS = (
    "warp",
    "warp_backward",
    "integrate_velocity",
    "integrate_velocity_with_fields",
    "integrate_velocity_backward",
    "gss",
    "gss_backward",
    "local_ncc",
    "local_ncc_backward",
)


def main() -> int:
    info = gemini_ops.backend_info()
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}); library {info['library']}")
    if not info["compiled"]:
        print(f"FAIL: the library did not load: {info['load_error']}")
        return 1
    if not info["cuda"]:
        print("FAIL: the library was built without the CUDA kernels")
        return 1
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"gemini::{op}", "CUDA")]
    if missing:
        print(f"FAIL: no CUDA kernel registered for {missing}")
        return 1
    torch.manual_seed(0)
    image = torch.rand(2, 3, 6, 7, 8, dtype=torch.float64)
    ddf = torch.randn(2, 3, 6, 7, 8, dtype=torch.float64)
    err = (gemini_ops.warp(image, ddf) - reference.warp(image, ddf)).abs().max().item()
    if err > 1e-10:
        print(f"FAIL: CPU warp of the CUDA build differs from the reference by {err}")
        return 1
    print(f"OK: CUDA kernels registered for {len(OPS)} ops; CPU kernels of this build match the reference ({err:.1e})")
    if torch.cuda.is_available():
        tests = os.path.join(os.path.dirname(__file__), "..", "tests", "ops", "test_cuda.py")
        return subprocess.call([sys.executable, "-m", "pytest", "-q", tests])
    print("No GPU here: the CUDA kernels were compiled and linked, not run (their source runs emulated in make test).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
