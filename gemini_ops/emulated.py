"""The ops on the emulated CUDA backend: the very ``csrc/cuda/*.cu`` kernels
compiled as host C++ through ``csrc/include/gemini/cuda_shim.h``, on CPU
tensors. Same signatures as :mod:`gemini_ops.functional`; for verification,
not speed."""

from __future__ import annotations

import functools

from . import functional as _F

warp = functools.partial(_F.warp, backend="emulated")
integrate_velocity = functools.partial(_F.integrate_velocity, backend="emulated")
gss_similarity = functools.partial(_F.gss_similarity, backend="emulated")
local_ncc = functools.partial(_F.local_ncc, backend="emulated")

__all__ = ["warp", "integrate_velocity", "gss_similarity", "local_ncc"]
