"""Pure-PyTorch reference of every op: the oracle of the tests and the fallback
when the compiled library is missing.

Conventions (shared by every backend):

* images and features: ``(B, C, *S)`` with ``S = (H, W)`` or ``(D, H, W)``
  (the local NCC also ``(L,)``);
* displacements ``ddf`` and velocities: ``(B, ndim, *S)`` in voxel units, channel
  ``i`` displaces spatial axis ``i`` (MONAI's ``Warp``/``DVF2DDF`` convention);
* sampling at voxel centres: ``out(x) = image(x + ddf(x))``, exactly (the
  ``align_corners=True`` grid).

These functions do no argument checking; :mod:`gemini_ops.functional` does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "warp",
    "integrate_velocity",
    "sample_mask",
    "gss_map",
    "local_ncc_map",
    "ncc_kernel",
    "box_sum",
    "jacobian_determinant",
]


def _sample_points(ddf: torch.Tensor) -> torch.Tensor:
    """Absolute sample coordinates ``x + ddf(x)`` in voxels, (B, ndim, *S)."""
    ndim = ddf.shape[1]
    axes = [torch.arange(n, dtype=ddf.dtype, device=ddf.device) for n in ddf.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
    return ddf + grid.reshape(1, ndim, *ddf.shape[2:])


def _normalised_grid(ddf: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """``grid_sample`` grid (B, *S, ndim) in (x=last axis, ..., first axis)
    order. ``align_corners=False``: voxel ``p`` maps to ``(2p + 1) / n - 1``,
    exact for every size including 1 (a size-1 axis pads like any other).
    ``align_corners=True`` (what reflection padding needs, to reflect about the
    first and last voxel centres): ``2p / max(n - 1, 1) - 1``, which pins a
    size-1 axis to its only voxel."""
    ndim = ddf.shape[1]
    pts = _sample_points(ddf)
    sizes = torch.tensor(ddf.shape[2:], dtype=ddf.dtype, device=ddf.device).reshape(1, ndim, *([1] * ndim))
    if align_corners:
        pts = 2.0 * pts / (sizes - 1.0).clamp_min(1.0) - 1.0
    else:
        pts = (2.0 * pts + 1.0) / sizes - 1.0
    pts = pts.permute(0, *range(2, 2 + ndim), 1)
    return pts.flip(-1)


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """``out(x) = image(x + ddf(x))`` through ``grid_sample``, sampling at voxel
    centres; ``mode`` also ``"bicubic"`` (2D only, like ``grid_sample``) and
    ``padding_mode`` also ``"reflection"`` (about the first and last voxel centres)."""
    align = padding_mode == "reflection"
    grid = _normalised_grid(ddf, align)
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding_mode, align_corners=align)


def integrate_velocity(
    velocity: torch.Tensor, steps: int = 7, padding_mode: str = "zeros", mode: str = "bilinear"
) -> torch.Tensor:
    """Scaling and squaring: ``u0 = v / 2**steps``; ``u <- u + u o (id + u)``, ``steps`` times."""
    ddf = velocity / (2**steps)
    for _ in range(steps):
        ddf = ddf + warp(ddf, ddf, mode, padding_mode)
    return ddf


def sample_mask(ddf: torch.Tensor) -> torch.Tensor:
    """1 where the sample point ``x + ddf(x)``, rounded to the nearest voxel
    (half to even), lies inside the volume; (B, 1, *S), dtype of ``ddf``."""
    pts = torch.round(_sample_points(ddf.detach()))
    inside = torch.ones_like(pts[:, :1], dtype=torch.bool)
    for i, n in enumerate(ddf.shape[2:]):
        inside &= (pts[:, i : i + 1] >= 0) & (pts[:, i : i + 1] <= n - 1)
    return inside.to(ddf.dtype)


def gss_map(feat_moving: torch.Tensor, feat_fixed: torch.Tensor, ddf: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-voxel cosine along channels between ``warp(feat_moving, ddf)`` and
    ``feat_fixed``: ``<w, f> / (max(|w|, eps) * max(|f|, eps))``, (B, 1, *S)."""
    warped = warp(feat_moving, ddf, "bilinear", "zeros")
    return F.cosine_similarity(warped, feat_fixed, dim=1, eps=eps).unsqueeze(1)


def ncc_kernel(kernel_type: str, window: int, dtype=torch.float32) -> torch.Tensor:
    """1D weights of a local NCC window of side ``window`` (odd), the kernels of
    MONAI's ``LocalNormalizedCrossCorrelationLoss``: ``"rectangular"`` (ones),
    ``"triangular"`` (a box of side ``f`` convolved with itself, ``f`` the
    largest odd number <= (window + 1) / 2, zero-padded to ``window``) or
    ``"gaussian"`` (``exp(-x**2 / (2 sigma**2))``, ``sigma = window / 3``).
    Built in float32 by default, as MONAI does, so that the weights are MONAI's."""
    half = window // 2
    if kernel_type == "rectangular":
        return torch.ones(window, dtype=dtype)
    if kernel_type == "triangular":
        f = (window + 1) // 2
        f -= 1 - f % 2
        box = torch.full((1, 1, f), 1.0 / f, dtype=dtype)
        tri = F.conv1d(box, box, padding=f - 1).reshape(-1)
        pad = half - (f - 1)
        return F.pad(tri, (pad, pad))
    if kernel_type == "gaussian":
        sigma = window / 3.0
        x = torch.arange(-half, half + 1, dtype=dtype)
        return torch.exp(-0.5 * (x / sigma) ** 2)
    raise ValueError(f"kernel_type must be one of {NCC_KERNELS}, got {kernel_type!r}")


NCC_KERNELS = ("rectangular", "triangular", "gaussian")


def box_sum(x: torch.Tensor, window: int, kernel: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted sum over a centred window of side ``window`` with zero padding,
    per channel, one 1D convolution per spatial axis; ``kernel`` (``window``
    weights) defaults to ones (a box). 1D, 2D or 3D."""
    ndim = x.dim() - 2
    channels = x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    weights = torch.ones(window, dtype=x.dtype, device=x.device) if kernel is None else kernel.to(x)
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = window
        padding = [0] * ndim
        padding[axis] = window // 2
        x = conv(x, weights.reshape(1, 1, *shape).expand(channels, 1, *shape), padding=tuple(padding), groups=channels)
    return x


def local_ncc_map(
    a: torch.Tensor,
    b: torch.Tensor,
    window: int = 9,
    squared: bool = True,
    eps: float = 1e-5,
    *,
    denominator: str = "eps",
    smooth_nr: float = 0.0,
    kernel_type: str = "rectangular",
) -> torch.Tensor:
    """Local normalised cross-correlation per voxel and channel, (B, C, *S).

    With window weights ``k`` (:func:`ncc_kernel`), ``n = sum(k)**ndim`` and
    weighted window sums ``S_*`` (zero padding): ``cross = S_ab - S_a S_b / n``,
    ``var_a = S_aa - S_a**2 / n`` (same for b). ``denominator="eps"`` (the
    authors'): ``cross**2 / (var_a var_b + eps)`` if ``squared`` else
    ``cross / sqrt(var_a var_b + eps)``. ``denominator="clamp"`` (MONAI's):
    ``(cross**2 + smooth_nr) / (max(var_a, eps) max(var_b, eps))`` if
    ``squared`` else ``cross / sqrt(max(var_a, eps) max(var_b, eps))``.
    """
    kernel = ncc_kernel(kernel_type, window)
    n = float(kernel.double().sum()) ** (a.dim() - 2)
    s_a, s_b, s_aa, s_bb, s_ab = box_sum(torch.cat([a, b, a * a, b * b, a * b], dim=1), window, kernel).chunk(5, 1)
    cross = s_ab - s_a * s_b / n
    var_a = s_aa - s_a * s_a / n
    var_b = s_bb - s_b * s_b / n
    if denominator == "clamp":
        var_a, var_b = var_a.clamp_min(eps), var_b.clamp_min(eps)
        if squared:
            return (cross * cross + smooth_nr) / (var_a * var_b)
        return cross / torch.sqrt(var_a * var_b)
    if squared:
        return cross * cross / (var_a * var_b + eps)
    return cross / torch.sqrt(var_a * var_b + eps)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of ``I + grad(ddf)`` per voxel, (B, 1, *S); central
    differences inside, one-sided differences on the border."""
    ndim = ddf.shape[1]
    spatial = list(range(2, 2 + ndim))
    grads = [torch.gradient(ddf[:, i], dim=[d - 1 for d in spatial]) for i in range(ndim)]
    jac = [[grads[i][j] + (1.0 if i == j else 0.0) for j in range(ndim)] for i in range(ndim)]
    if ndim == 2:
        det = jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    else:
        det = (
            jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0])
        )
    return det.unsqueeze(1)
