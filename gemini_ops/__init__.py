"""gemini_ops: fused warping, velocity integration, GSS similarity and local
NCC as torch custom ops (CPU, CUDA), with a pure-PyTorch reference."""

from __future__ import annotations

import torch

from . import _library, emulated, reference
from ._library import cached_bytes, empty_cache
from .functional import (
    all_finite,
    folding_fraction,
    gss_similarity,
    integrate_velocity,
    jacobian_determinant,
    local_ncc,
    masked_mean,
    set_finite_checks,
    warp,
)
from .modules import GSSLoss, LocalNCCLoss, LocalNormalizedCrossCorrelationLoss, VelocityIntegrator, Warp

__version__ = "0.1.0"

_library.load()


def backend_info() -> dict:
    """Which backends this install has: ``compiled`` (the C++ library loaded),
    ``cuda`` (CUDA kernels compiled in), ``emulated`` (the CUDA kernel sources
    built for the host), ``reference`` (always), ``cuda_available`` (a GPU is
    usable now), ``cpu_capability`` (the instruction set the CPU kernels run:
    "default", "avx2" or "avx512"), and versions."""
    compiled = _library.load()
    return {
        "compiled": compiled,
        "cuda": _library.compiled_with_cuda(),
        "emulated": compiled and hasattr(torch.ops.gemini_emulated, "warp"),
        "reference": True,
        "cuda_available": torch.cuda.is_available(),
        "cpu_capability": _library.cpu_capability(),
        "library": _library.loaded_path(),
        "load_error": _library.load_error(),
        "gemini_ops_version": __version__,
        "torch_version": torch.__version__,
        "torch_cuda_version": torch.version.cuda,
    }


__all__ = [
    "warp",
    "integrate_velocity",
    "gss_similarity",
    "local_ncc",
    "jacobian_determinant",
    "folding_fraction",
    "masked_mean",
    "set_finite_checks",
    "all_finite",
    "Warp",
    "VelocityIntegrator",
    "GSSLoss",
    "LocalNCCLoss",
    "LocalNormalizedCrossCorrelationLoss",
    "backend_info",
    "empty_cache",
    "cached_bytes",
    "emulated",
    "reference",
]
