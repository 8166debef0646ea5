"""Typed functional API with argument checks and backend dispatch.

Every function takes ``backend=None`` (the compiled library when it loaded,
else the reference), ``"compiled"``, ``"emulated"`` (the CUDA kernel sources
run on the CPU; CPU tensors only) or ``"reference"`` (pure PyTorch). Options
the kernels lack (bicubic sampling, reflection padding, 1D or non-box or
MONAI-style local NCC) run the reference whatever the backend.

Precision, decided here only (:func:`_precision`): under ``torch.autocast``
the ops run in float32 and return float32; float16/bfloat16 CPU tensors are
computed in float32 and the result is cast back to their dtype; CUDA runs
float16/bfloat16 natively (float32 accumulation). The raw ``torch.ops.gemini``
ops do no casting.

Non-finite displacements: while :func:`set_finite_checks` is on (the
default; ``GEMINI_OPS_CHECK_FINITE=0`` turns it off at import) a displacement
or velocity holding NaN/Inf raises ``RuntimeError("<name> contains NaN or Inf
values")`` through ``torch._assert_async``, the same in eager mode and under
``torch.compile`` (no graph break). On CUDA that is a device-side assert,
which ends the process's CUDA context. NaN/Inf in images or features
propagate to the result like in any arithmetic.
"""

from __future__ import annotations

import math
import os
import warnings
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
    "all_finite",
]

MODES = ("bilinear", "nearest", "bicubic")
PADDINGS = ("zeros", "border", "reflection")
FUSED_MODES = ("bilinear", "nearest")
FUSED_PADDINGS = ("zeros", "border")
NCC_DENOMINATORS = ("eps", "clamp")
NCC_KERNELS = reference.NCC_KERNELS
BACKENDS = ("compiled", "emulated", "reference")
_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)
_CHECK_FINITE = os.environ.get("GEMINI_OPS_CHECK_FINITE", "1") != "0"
# When a gradient is needed the forward keeps every CHECKPOINT_EVERY-th
# intermediate field of up to 8 squaring steps (every ~sqrt(num_steps)-th
# beyond), and the backward recomputes only the fields in between.
CHECKPOINT_EVERY = 2


def set_finite_checks(enabled: bool) -> None:
    """Turn the NaN/Inf check of displacements and velocities on or off (it
    costs one reduction over the field)."""
    global _CHECK_FINITE
    _CHECK_FINITE = bool(enabled)


def all_finite(tensor: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool tensor: no NaN or Inf in ``tensor`` (non-empty). The
    extremes hold any NaN or Inf, so this is one reduction pass without a
    full-size mask: on the CPU about a tenth of the time of
    ``torch.isfinite(tensor).all()`` (0.38 vs 3.96 ms at 3x96^3, float32)."""
    lo, hi = torch.aminmax(tensor)
    return torch.isfinite(lo) & torch.isfinite(hi)


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


def _check_tensor(name: str, t, backend: Optional[str], dims: tuple = (4, 5)) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() not in dims:
        shapes = {3: "(B, C, L)", 4: "(B, C, H, W)", 5: "(B, C, D, H, W)"}
        expected = " or ".join(shapes[d] for d in dims)
        raise ValueError(f"{name} must have shape {expected}, got {tuple(t.shape)} ({t.dim()} dims)")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty: shape {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a floating tensor (float32, float64, float16, bfloat16), got {t.dtype}")
    if backend == "emulated" and t.device.type != "cpu":
        raise ValueError(f"{name}: the emulated backend runs CPU tensors only, got device {t.device}")


def _precision(names: tuple, tensors: tuple, backend: Optional[str], dims: tuple = (4, 5)):
    """Check ``tensors`` and apply the one precision policy of gemini_ops (see
    the module docstring). Returns the tensors to compute with and the dtype to
    cast the result to (None: keep it)."""
    for name, t in zip(names, tensors):
        _check_tensor(name, t, backend, dims)
    first_name, first = names[0], tensors[0]
    device_type = first.device.type
    autocast = device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type)
    for name, t in zip(names[1:], tensors[1:]):
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")
        if t.dtype != first.dtype and not autocast:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
    if autocast:
        return tuple(t.float() for t in tensors), None
    if device_type != "cuda" and first.dtype in _HALF:
        return tuple(t.float() for t in tensors), first.dtype
    return tensors, None


def _restore(result: torch.Tensor, dtype: Optional[torch.dtype]) -> torch.Tensor:
    return result if dtype is None else result.to(dtype)


def _check_field(name: str, field: torch.Tensor, like_name: str, like: torch.Tensor) -> None:
    ndim = like.dim() - 2
    expected = (like.shape[0], ndim, *like.shape[2:])
    if tuple(field.shape) != expected:
        raise ValueError(
            f"{name} must have shape (B, ndim, *spatial) = {expected} to match {like_name} {tuple(like.shape)}, "
            f"got {tuple(field.shape)}"
        )
    if _CHECK_FINITE:
        torch._assert_async(all_finite(field), f"{name} contains NaN or Inf values")


def _check_choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_steps(num_steps) -> None:
    """``num_steps`` of scaling and squaring: an int >= 0."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int):
        raise TypeError(f"num_steps must be an int, got {type(num_steps).__name__}")
    if num_steps < 0:
        raise ValueError(f"num_steps must be >= 0, got {num_steps}")


def check_window(name: str, window) -> None:
    """A local NCC window side: an odd int >= 1."""
    if isinstance(window, bool) or not isinstance(window, int):
        raise TypeError(f"{name} must be an int, got {type(window).__name__}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"{name} must be an odd int >= 1, got {window}")


def check_nonnegative(name: str, value) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{name} must be >= 0, got {value}")


def check_warp_options(mode, padding_mode) -> None:
    _check_choice("mode", mode, MODES)
    _check_choice("padding_mode", padding_mode, PADDINGS)


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

    ``mode``: ``"bilinear"`` (trilinear in 3D), ``"nearest"`` (half to even)
    or ``"bicubic"`` (2D only); ``padding_mode``: ``"zeros"``, ``"border"`` or
    ``"reflection"`` (about the first and last voxel centres) outside the
    volume. Bilinear and nearest with zeros or border padding run the fused
    kernels; bicubic and reflection run torch's ``grid_sample``.
    Gradients flow to ``image`` and (bilinear, bicubic) ``ddf``. Returns (B, C, *S).
    """
    (image, ddf), out_dtype = _precision(("image", "ddf"), (image, ddf), backend)
    _check_field("ddf", ddf, "image", image)
    check_warp_options(mode, padding_mode)
    if mode == "bicubic" and image.dim() != 4:
        raise ValueError(f"mode='bicubic' needs a 2D image (B, C, H, W), got shape {tuple(image.shape)}")
    ops = _ops(backend)
    if ops is None or mode not in FUSED_MODES or padding_mode not in FUSED_PADDINGS:
        return _restore(reference.warp(image, ddf, mode, padding_mode), out_dtype)
    return _restore(ops.warp(image, ddf, mode, padding_mode), out_dtype)


def integrate_velocity(
    velocity: torch.Tensor,
    num_steps: int = 7,
    padding_mode: str = "zeros",
    *,
    backend: Optional[str] = None,
    steps: Optional[int] = None,
) -> torch.Tensor:
    """Displacement of ``exp(velocity)`` by scaling and squaring (MONAI's
    ``DVF2DDF``, bilinear): ``u = v / 2**num_steps``, then ``num_steps`` times
    ``u <- u + warp(u, u)``. ``velocity``: (B, ndim, *S); returns (B, ndim, *S).
    ``num_steps=0`` returns the velocity itself (a plain displacement).
    ``padding_mode`` ``"zeros"`` or ``"border"`` run fused ops; ``"reflection"``
    runs the reference. When a gradient is needed the forward keeps every
    second intermediate field (every ~sqrt(num_steps)-th beyond 8 steps) and
    the backward recomputes only the ones in between.
    ``steps`` is a deprecated alias of ``num_steps``.
    """
    if steps is not None:
        warnings.warn("integrate_velocity(steps=...) is deprecated: use num_steps", DeprecationWarning, stacklevel=2)
        num_steps = steps
    (velocity,), out_dtype = _precision(("velocity",), (velocity,), backend)
    _check_field("velocity", velocity, "velocity", velocity)
    check_steps(num_steps)
    _check_choice("padding_mode", padding_mode, PADDINGS)
    ops = _ops(backend)
    if ops is None or padding_mode not in FUSED_PADDINGS:
        return _restore(reference.integrate_velocity(velocity, num_steps, padding_mode), out_dtype)
    if velocity.requires_grad and torch.is_grad_enabled():
        every = CHECKPOINT_EVERY if num_steps <= 8 else math.ceil(math.sqrt(num_steps))
        ddf, _checkpoints = ops.integrate_velocity_with_fields(velocity, num_steps, every, padding_mode)
        return _restore(ddf, out_dtype)
    return _restore(ops.integrate_velocity(velocity, num_steps, padding_mode), out_dtype)


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
    The CPU kernels sum the mean without a mask themselves, with no per-voxel
    map or gradient in between.
    """
    (feat_moving, feat_fixed, ddf), out_dtype = _precision(
        ("feat_moving", "feat_fixed", "ddf"), (feat_moving, feat_fixed, ddf), backend
    )
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
    elif mask is None and reduction == "mean":  # the op sums the masked mean itself
        return _restore(ops.gss(feat_moving, feat_fixed, ddf, float(eps), s_m, s_f, s_d, True)[0], out_dtype)
    else:
        cos, valid = ops.gss(feat_moving, feat_fixed, ddf, float(eps), s_m, s_f, s_d, False)
    weight = valid if mask is None else mask.to(cos.dtype)
    if reduction == "none":
        return _restore(cos * weight, out_dtype)
    return _restore(masked_mean(cos, weight), out_dtype)


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
    denominator: str = "eps",
    smooth_nr: float = 0.0,
    kernel_type: str = "rectangular",
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Local normalised cross-correlation of ``a`` and ``b`` (B, C, *S), 1D, 2D
    or 3D, over a centred window of side ``window`` (odd) with zero padding.

    With window weights ``k`` (``kernel_type`` ``"rectangular"``: ones, or
    MONAI's ``"triangular"``/``"gaussian"``), ``n = sum(k)**ndim`` and
    weighted sums ``S_*`` over the window: ``cross = S_ab - S_a S_b / n``,
    ``var = S_xx - S_x**2 / n``. Two denominators:

    * ``"eps"`` (the authors', GEMINI's GVS term): ``cc = cross**2 /
      (var_a var_b + eps)`` (``squared``) or ``cross / sqrt(var_a var_b + eps)``.
      It collapses where ``var_a var_b`` is not much larger than ``eps``:
      at low intensity or contrast a perfect match scores near 0.
    * ``"clamp"`` (MONAI's ``LocalNormalizedCrossCorrelationLoss``):
      ``cc = (cross**2 + smooth_nr) / (max(var_a, eps) max(var_b, eps))``
      (``squared``) or ``cross / sqrt(max(var_a, eps) max(var_b, eps))``;
      ``eps`` is MONAI's ``smooth_dr``, a floor on each variance, so a match
      scores 1 as long as each local variance exceeds ``eps``.

    2D/3D box windows with ``denominator="eps"`` run the fused kernel (running
    box sums); the other options run the reference (separable convolutions).
    ``reduction="none"``: the map (B, C, *S); ``"mean"``: its (masked) mean.
    The fused kernel keeps its five box sums per voxel for the backward when
    a gradient is needed, and sums a mean without ``mask`` itself (no map).
    """
    (a, b), out_dtype = _precision(("a", "b"), (a, b), backend, dims=(3, 4, 5))
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    check_window("window", window)
    check_nonnegative("eps", eps)
    _check_choice("denominator", denominator, NCC_DENOMINATORS)
    _check_choice("kernel_type", kernel_type, NCC_KERNELS)
    if smooth_nr != 0 and not (denominator == "clamp" and squared):
        raise ValueError(f"smooth_nr applies to denominator='clamp' with squared=True only, got smooth_nr={smooth_nr}")
    _check_mask(mask, a)
    _check_reduction(reduction)
    ops = _ops(backend)
    if ops is None or a.dim() == 3 or kernel_type != "rectangular" or denominator != "eps":
        cc = reference.local_ncc_map(
            a,
            b,
            window,
            bool(squared),
            float(eps),
            denominator=denominator,
            smooth_nr=float(smooth_nr),
            kernel_type=kernel_type,
        )
    else:
        keep_sums = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
        # a plain mean is summed by the op, without a full-size map and its gradient
        mean = reduction == "mean" and mask is None
        cc = ops.local_ncc(a, b, window, bool(squared), float(eps), keep_sums, mean)[0]
        if mean:
            return _restore(cc, out_dtype)
    if reduction == "none":
        return _restore(cc, out_dtype)
    return _restore(masked_mean(cc, mask), out_dtype)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of ``x -> x + ddf(x)`` per voxel, (B, 1, *S);
    ``ddf`` (B, ndim, *S) with every spatial size >= 2. Central differences
    inside, one-sided on the border."""
    (ddf,), out_dtype = _precision(("ddf",), (ddf,), None)
    if ddf.shape[1] != ddf.dim() - 2:
        raise ValueError(f"ddf must have ndim={ddf.dim() - 2} channels, got shape {tuple(ddf.shape)}")
    if min(ddf.shape[2:]) < 2:
        raise ValueError(f"ddf spatial sizes must be >= 2 for finite differences, got {tuple(ddf.shape[2:])}")
    return _restore(reference.jacobian_determinant(ddf), out_dtype)


def folding_fraction(ddf: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Share of voxels (within ``mask`` if given) whose Jacobian determinant is <= 0."""
    det = jacobian_determinant(ddf)
    _check_mask(mask, ddf)
    return masked_mean((det <= 0).to(det.dtype), mask)
