"""Pure-PyTorch reference of every op: the oracle of the tests and the fallback
when the compiled library is missing.

Conventions (shared by every backend):

* images and features: ``(B, C, *S)`` with ``S = (H, W)`` or ``(D, H, W)``;
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
    "jacobian_determinant",
]


def _sample_points(ddf: torch.Tensor) -> torch.Tensor:
    """Absolute sample coordinates ``x + ddf(x)`` in voxels, (B, ndim, *S)."""
    ndim = ddf.shape[1]
    axes = [torch.arange(n, dtype=ddf.dtype, device=ddf.device) for n in ddf.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
    return ddf + grid.reshape(1, ndim, *ddf.shape[2:])


def _normalised_grid(ddf: torch.Tensor) -> torch.Tensor:
    """``grid_sample`` grid (B, *S, ndim) in (x=last axis, ..., first axis)
    order for ``align_corners=False``: voxel ``p`` maps to ``(2p + 1) / n - 1``,
    exact for every size including 1 (``align_corners=True`` would pin a
    size-1 axis to its only voxel and never pad)."""
    ndim = ddf.shape[1]
    pts = _sample_points(ddf)
    sizes = torch.tensor(ddf.shape[2:], dtype=ddf.dtype, device=ddf.device).reshape(1, ndim, *([1] * ndim))
    pts = (2.0 * pts + 1.0) / sizes - 1.0
    pts = pts.permute(0, *range(2, 2 + ndim), 1)
    return pts.flip(-1)


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> torch.Tensor:
    """``out(x) = image(x + ddf(x))`` through ``grid_sample``, sampling at voxel centres."""
    return F.grid_sample(image, _normalised_grid(ddf), mode=mode, padding_mode=padding_mode, align_corners=False)


def integrate_velocity(velocity: torch.Tensor, steps: int = 7, padding_mode: str = "zeros") -> torch.Tensor:
    """Scaling and squaring: ``u0 = v / 2**steps``; ``u <- u + u o (id + u)``, ``steps`` times."""
    ddf = velocity / (2**steps)
    for _ in range(steps):
        ddf = ddf + warp(ddf, ddf, "bilinear", padding_mode)
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


def box_sum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Sum over a centred box of side ``window`` with zero padding, per channel."""
    ndim = x.dim() - 2
    channels = x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[ndim - 1]
    weight = torch.ones((channels, 1) + (window,) * ndim, dtype=x.dtype, device=x.device)
    return conv(x, weight, padding=window // 2, groups=channels)


def local_ncc_map(
    a: torch.Tensor, b: torch.Tensor, window: int = 9, squared: bool = True, eps: float = 1e-5
) -> torch.Tensor:
    """Local normalised cross-correlation per voxel and channel, (B, C, *S).

    With ``n = window**ndim`` and box sums ``S_*`` (zero padding):
    ``cross = S_ab - S_a S_b / n``, ``var_a = S_aa - S_a**2 / n`` (same for b);
    ``cross**2 / (var_a var_b + eps)`` if ``squared`` else
    ``cross / sqrt(var_a var_b + eps)``.
    """
    n = float(window ** (a.dim() - 2))
    s_a, s_b = box_sum(a, window), box_sum(b, window)
    s_aa, s_bb, s_ab = box_sum(a * a, window), box_sum(b * b, window), box_sum(a * b, window)
    cross = s_ab - s_a * s_b / n
    var_a = s_aa - s_a * s_a / n
    var_b = s_bb - s_b * s_b / n
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
