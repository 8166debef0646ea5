"""Typed functional API with argument checks and backend dispatch.

Every function takes ``backend=None`` (the compiled library when it loaded,
else the reference), ``"compiled"``, ``"emulated"`` (the CUDA kernel sources
run on the CPU; CPU tensors only) or ``"reference"`` (pure PyTorch).

Non-finite values: a displacement or velocity with NaN/Inf raises
``ValueError`` (it names no sample location); NaN/Inf in images or features
propagate to the result like in any arithmetic.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import _library, reference

__all__ = [
    "warp",
    "integrate_velocity",
    "gss_similarity",
    "local_ncc",
    "jacobian_determinant",
    "folding_fraction",
    "masked_mean",
    "set_finite_checks",
]

MODES = ("bilinear", "nearest")
PADDINGS = ("zeros", "border")
BACKENDS = ("compiled", "emulated", "reference")
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_CHECK_FINITE = True


def set_finite_checks(enabled: bool) -> None:
    """Turn the NaN/Inf check of displacements and velocities on or off (it
    costs one reduction over the field and, on CUDA, a synchronisation)."""
    global _CHECK_FINITE
    _CHECK_FINITE = bool(enabled)


def _ops(backend: Optional[str]):
    """The op namespace for ``backend``, or None for the reference."""
    if backend is None:
        return torch.ops.gemini if _library.load() else None
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
    if backend == "reference":
        return None
    if not _library.load():
        raise RuntimeError(f"backend={backend!r} needs the compiled library: {_library.load_error()}")
    return torch.ops.gemini if backend == "compiled" else torch.ops.gemini_emulated


def _autocast(*tensors):
    """Under autocast the ops run in float32 (inputs of mixed or reduced precision are cast)."""
    if any(
        isinstance(t, torch.Tensor) and t.device.type in ("cpu", "cuda") and torch.is_autocast_enabled(t.device.type)
        for t in tensors
    ):
        return tuple(t.float() if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)
    return tensors


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()


def _check_tensor(name: str, t, backend: Optional[str]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in (4, 5):
        raise ValueError(
            f"{name} must have shape (B, C, H, W) or (B, C, D, H, W), got {tuple(t.shape)} ({t.dim()} dims)"
        )
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    allowed = _CUDA_DTYPES if t.device.type == "cuda" else _CPU_DTYPES
    if t.dtype not in allowed:
        names = ", ".join(str(d).replace("torch.", "") for d in allowed)
        raise TypeError(f"{name} must be a floating tensor ({names} on {t.device.type}), got {t.dtype}")
    if backend == "emulated" and t.device.type != "cpu":
        raise ValueError(f"{name}: the emulated backend runs CPU tensors only, got device {t.device}")


def _check_same(names: tuple, tensors: tuple) -> None:
    first_name, first = names[0], tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")


def _check_field(name: str, field: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    ndim = like.dim() - 2
    expected = (like.shape[0], ndim, *like.shape[2:])
    if tuple(field.shape) != expected:
        raise ValueError(
            f"{name} must have shape (B, ndim, *spatial) = {expected} to match {like_name} {tuple(like.shape)}, "
            f"got {tuple(field.shape)}"
        )
    if _CHECK_FINITE and not _tracing() and not bool(torch.isfinite(field).all()):
        raise ValueError(f"{name} contains NaN or Inf values")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def warp(
    image: torch.Tensor,
    ddf: torch.Tensor,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Warp ``image`` (B, C, *S) by the displacement ``ddf`` (B, ndim, *S):
    ``out(x) = image(x + ddf(x))``, voxel units, sampled at voxel centres.

    ``mode``: ``"bilinear"`` (trilinear in 3D) or ``"nearest"`` (half to even);
    ``padding_mode``: ``"zeros"`` or ``"border"`` outside the volume.
    Gradients flow to ``image`` and (bilinear) ``ddf``. Returns (B, C, *S).
    """
    image, ddf = _autocast(image, ddf)
    _check_tensor("image", image, backend)
    _check_tensor("ddf", ddf, backend)
    _check_same(("image", "ddf"), (image, ddf))
    _check_field("ddf", ddf, "image", image)
    _check_choice("mode", mode, MODES)
    _check_choice("padding_mode", padding_mode, PADDINGS)
    ops = _ops(backend)
    if ops is None:
        return reference.warp(image, ddf, mode, padding_mode)
    return ops.warp(image, ddf, mode, padding_mode)


def integrate_velocity(
    velocity: torch.Tensor, steps: int = 7, padding_mode: str = "zeros", *, backend: Optional[str] = None
) -> torch.Tensor:
    """Displacement of ``exp(velocity)`` by scaling and squaring (MONAI's
    ``DVF2DDF``): ``u = v / 2**steps``, then ``steps`` times
    ``u <- u + warp(u, u)``. ``velocity``: (B, ndim, *S); returns (B, ndim, *S).
    ``steps=0`` returns the velocity itself (a plain displacement).
    The backward recomputes the intermediate fields instead of keeping them.
    """
    (velocity,) = _autocast(velocity)
    _check_tensor("velocity", velocity, backend)
    _check_field("velocity", velocity, "velocity", velocity)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    _check_choice("padding_mode", padding_mode, PADDINGS)
    ops = _ops(backend)
    if ops is None:
        return reference.integrate_velocity(velocity, steps, padding_mode)
    return ops.integrate_velocity(velocity, steps, padding_mode)


def masked_mean(values: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """``sum(values * mask) / max(sum(mask), 1e-6)`` over everything (plain
    mean without a mask); an empty mask gives 0 and zero gradients."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.expand_as(values).sum().clamp_min(1e-6)


def _check_mask(mask: Optional[torch.Tensor], like: torch.Tensor) -> None:
    if mask is None:
        return
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    expected = (like.shape[0], 1, *like.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask must have shape (B, 1, *spatial) = {expected}, got {tuple(mask.shape)}")
    if mask.device != like.device:
        raise ValueError(f"mask is on {mask.device} but the images are on {like.device}")


def _check_reduction(reduction: str) -> None:
    _check_choice("reduction", reduction, ("mean", "none"))


def gss_similarity(
    feat_moving: torch.Tensor,
    feat_fixed: torch.Tensor,
    ddf: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    reduction: str = "mean",
    *,
    eps: float = 1e-8,
    grad_scales: tuple = (1.0, 1.0, 1.0),
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Geometric semantic similarity: cosine along channels between
    ``warp(feat_moving, ddf)`` and ``feat_fixed`` (both (B, C, *S); ``ddf``
    (B, ndim, *S)), computed in one fused pass that never stores the warped
    C-channel tensor.

    Without ``mask`` (B, 1, *S), voxels whose sample point rounded to the
    nearest voxel falls outside the moving volume are excluded.
    ``reduction="mean"``: masked mean (a scalar; an empty mask gives 0);
    ``"none"``: the per-voxel cosine times the mask, (B, 1, *S).
    ``grad_scales`` multiply the gradients reaching (feat_moving, feat_fixed,
    ddf); the value is unchanged (GEMINI's stop-gradient pair in one forward).
    """
    feat_moving, feat_fixed, ddf = _autocast(feat_moving, feat_fixed, ddf)
    _check_tensor("feat_moving", feat_moving, backend)
    _check_tensor("feat_fixed", feat_fixed, backend)
    _check_tensor("ddf", ddf, backend)
    _check_same(("feat_moving", "feat_fixed", "ddf"), (feat_moving, feat_fixed, ddf))
    if feat_moving.shape != feat_fixed.shape:
        raise ValueError(
            f"feat_moving {tuple(feat_moving.shape)} and feat_fixed {tuple(feat_fixed.shape)} must have the same shape"
        )
    _check_field("ddf", ddf, "feat_moving", feat_moving)
    _check_mask(mask, feat_fixed)
    _check_reduction(reduction)
    if len(grad_scales) != 3:
        raise ValueError(f"grad_scales must hold 3 numbers (feat_moving, feat_fixed, ddf), got {grad_scales!r}")
    s_m, s_f, s_d = (float(s) for s in grad_scales)
    ops = _ops(backend)
    if ops is None:
        cos = reference.gss_map(_scale_grad(feat_moving, s_m), _scale_grad(feat_fixed, s_f), _scale_grad(ddf, s_d), eps)
        valid = reference.sample_mask(ddf)
    else:
        cos, valid = ops.gss(feat_moving, feat_fixed, ddf, float(eps), s_m, s_f, s_d)
    weight = valid if mask is None else mask.to(cos.dtype)
    if reduction == "none":
        return cos * weight
    return masked_mean(cos, weight)


def _scale_grad(t: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return t
    detached = t.detach()
    return detached + scale * (t - detached)


def local_ncc(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int = 9,
    mask: Optional[torch.Tensor] = None,
    squared: bool = True,
    eps: float = 1e-5,
    reduction: str = "mean",
    *,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Local normalised cross-correlation of ``a`` and ``b`` (B, C, *S) over a
    centred box of side ``window`` (odd) with zero padding, by running box sums.

    With ``n = window**ndim``: ``cross = S_ab - S_a S_b / n``,
    ``var = S_xx - S_x**2 / n``; ``cc = cross**2 / (var_a var_b + eps)``
    (``squared``, the GVS term) or ``cross / sqrt(var_a var_b + eps)``.
    ``reduction="none"``: the map (B, C, *S); ``"mean"``: its (masked) mean.
    """
    a, b = _autocast(a, b)
    _check_tensor("a", a, backend)
    _check_tensor("b", b, backend)
    _check_same(("a", "b"), (a, b))
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"window must be an int, got {type(window).__name__}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be an odd int >= 1, got {window}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _check_mask(mask, a)
    _check_reduction(reduction)
    ops = _ops(backend)
    if ops is None:
        cc = reference.local_ncc_map(a, b, window, bool(squared), float(eps))
    else:
        cc = ops.local_ncc(a, b, window, bool(squared), float(eps))
    if reduction == "none":
        return cc
    return masked_mean(cc, mask)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + ddf(x)`` per voxel, (B, 1, *S);
    ``ddf`` (B, ndim, *S) with every spatial size >= 2. Central differences
    inside, one-sided on the border."""
    _check_tensor("ddf", ddf, None)
    if ddf.shape[1] != ddf.dim() - 2:
        raise ValueError(f"ddf must have ndim={ddf.dim() - 2} channels, got shape {tuple(ddf.shape)}")
    if min(ddf.shape[2:]) < 2:
        raise ValueError(f"ddf spatial sizes must be >= 2 for finite differences, got {tuple(ddf.shape[2:])}")
    return reference.jacobian_determinant(ddf)


def folding_fraction(ddf: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Share of voxels (within ``mask`` if given) whose Jacobian determinant is <= 0."""
    det = jacobian_determinant(ddf)
    _check_mask(mask, ddf)
    return masked_mean((det <= 0).to(det.dtype), mask)
