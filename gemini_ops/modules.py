"""``nn.Module`` wrappers: drop-ins for MONAI's ``Warp``, ``DVF2DDF`` and
``LocalNormalizedCrossCorrelationLoss`` (MONAI's defaults and semantics), and
the GEMINI losses built on the fused ops (the authors' conventions)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from . import functional as F

__all__ = ["Warp", "VelocityIntegrator", "LocalNormalizedCrossCorrelationLoss", "GSSLoss", "LocalNCCLoss"]

# MONAI's integer codes (those of its compiled ``grid_pull``) with an exact
# equivalent here. Its orders 2-7 are B-splines (3 is not grid_sample's bicubic).
_MODE_CODES = {0: "nearest", 1: "bilinear"}
_PADDING_CODES = {0: "border", 1: "reflection", 7: "zeros"}


def _option(name: str, value, codes: dict, choices: tuple) -> str:
    """A mode or padding given as a string, a MONAI ``StrEnum`` or an integer code."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in codes:
            raise ValueError(
                f"{name} integer code must be one of {codes} (MONAI's grid_pull codes with an equivalent here; "
                f"its B-spline orders 2-7 are not available), got {value}"
            )
        return codes[value]
    value = getattr(value, "value", value)
    F._check_choice(name, value, choices)
    return str(value)


class Warp(nn.Module):
    """Drop-in for ``monai.networks.blocks.Warp``: same arguments, defaults
    (bilinear, ``"border"`` padding) and results; ``forward(image, ddf)``.

    Args:
        mode: ``"bilinear"``, ``"nearest"``, ``"bicubic"`` (2D only, as in
            MONAI), or MONAI's integer codes 0 (nearest), 1 (bilinear).
        padding_mode: ``"border"``, ``"zeros"``, ``"reflection"``, or the
            codes 0 (border), 1 (reflection), 7 (zeros).
        jitter: sample on the grid shifted by MONAI's fixed ``U[0, 1)`` offsets
            (drawn with seed 0, as MONAI does).
        backend: see :mod:`gemini_ops.functional`.

    Bilinear/nearest with zeros/border padding run the fused kernels; bicubic
    and reflection run torch's ``grid_sample`` (as MONAI does). As in MONAI, a
    spatial axis of size 1 is pinned to its only voxel (its displacement is
    ignored). Integer codes mean what they mean in MONAI's compiled
    ``grid_pull``; MONAI without its compiled extension (the plain pip install)
    silently runs bilinear/border for any integer code. Its B-spline codes
    2-7 are refused.
    ``gemini_ops.warp`` keeps the authors' default, zero padding.
    """

    def __init__(
        self,
        mode: Union[str, int] = "bilinear",
        padding_mode: Union[str, int] = "border",
        jitter: bool = False,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.mode = _option("mode", mode, _MODE_CODES, F.MODES)
        self.padding_mode = _option("padding_mode", padding_mode, _PADDING_CODES, F.PADDINGS)
        self.jitter, self.backend = bool(jitter), backend
        self._offsets: Optional[torch.Tensor] = None

    def _fused_integration(self, spatial: tuple) -> bool:
        """Whether scaling and squaring with this sampling can run the fused
        integration op on volumes of size ``spatial``."""
        return (
            self.mode == "bilinear"
            and self.padding_mode in F.FUSED_PADDINGS
            and not self.jitter
            and min(spatial, default=1) > 1
        )

    def _jitter(self, ddf: torch.Tensor) -> torch.Tensor:
        cached = self._offsets
        if cached is None or cached.shape != ddf.shape or cached.dtype != ddf.dtype or cached.device != ddf.device:
            with torch.random.fork_rng(devices=[ddf.device] if ddf.device.type == "cuda" else []):
                torch.random.manual_seed(0)
                cached = torch.rand(ddf.shape, dtype=ddf.dtype, device=ddf.device)
            self._offsets = cached
        return cached

    def forward(self, image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """image (B, C, *S), ddf (B, ndim, *S) -> warped image (B, C, *S)."""
        # a ddf of the wrong shape goes to gemini_ops.warp untouched, which names the problem
        if isinstance(ddf, torch.Tensor) and ddf.dim() in (4, 5) and ddf.shape[1] == ddf.dim() - 2:
            if self.jitter:
                ddf = ddf + self._jitter(ddf)
            keep = [n > 1 for n in ddf.shape[2:]]
            if not all(keep):
                ddf = ddf * torch.tensor(keep, dtype=ddf.dtype, device=ddf.device).reshape(1, -1, *[1] * len(keep))
        return F.warp(image, ddf, self.mode, self.padding_mode, backend=self.backend)


class VelocityIntegrator(nn.Module):
    """Drop-in for ``monai.networks.blocks.DVF2DDF``: same arguments, defaults
    (7 steps, bilinear, zero padding) and results; ``forward(dvf) -> ddf`` by
    scaling and squaring, ``u = dvf / 2**num_steps``, then ``num_steps`` times
    ``u <- u + warp_layer(u, u)``.

    Bilinear sampling with zeros/border padding on volumes with every side
    >= 2 runs one fused op (the backward recomputes the fields); other modes
    loop over :class:`Warp`. ``num_steps=0`` (which MONAI refuses) returns
    ``dvf`` unchanged.
    """

    def __init__(
        self,
        num_steps: int = 7,
        mode: Union[str, int] = "bilinear",
        padding_mode: Union[str, int] = "zeros",
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        F.check_steps(num_steps)
        self.num_steps = num_steps
        self.warp_layer = Warp(mode=mode, padding_mode=padding_mode, backend=backend)

    def forward(self, dvf: torch.Tensor) -> torch.Tensor:
        """dvf (B, ndim, *S) -> displacement of exp(dvf), (B, ndim, *S)."""
        warp = self.warp_layer
        if isinstance(dvf, torch.Tensor) and warp._fused_integration(tuple(dvf.shape[2:])):
            return F.integrate_velocity(dvf, self.num_steps, warp.padding_mode, backend=warp.backend)
        ddf = dvf / (2**self.num_steps)
        for _ in range(self.num_steps):
            ddf = ddf + warp(ddf, ddf)
        return ddf


class LocalNormalizedCrossCorrelationLoss(nn.Module):
    """Drop-in for ``monai.losses.LocalNormalizedCrossCorrelationLoss``: same
    arguments, defaults and value, ``-reduce(ncc)`` with MONAI's squared NCC
    ``(cross**2 + smooth_nr) / (max(var_p, smooth_dr) max(var_t, smooth_dr))``
    (``gemini_ops.local_ncc(..., denominator="clamp")``).

    Args:
        spatial_dims: 1, 2 or 3.
        kernel_size: odd window side.
        kernel_type: ``"rectangular"``, ``"triangular"`` or ``"gaussian"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (the map, negated).
        smooth_nr, smooth_dr: MONAI's numerator term and variance floor.
        backend: see :mod:`gemini_ops.functional`.

    The fused kernel computes the authors' ``eps`` denominator only, so this
    loss runs separable convolutions (the reference), like MONAI; for GEMINI's
    GVS term use :class:`LocalNCCLoss`.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        kernel_size: int = 3,
        kernel_type: str = "rectangular",
        reduction: str = "mean",
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-5,
        backend: Optional[str] = None,
    ) -> None:
        super().__init__()
        F._check_choice("spatial_dims", spatial_dims, (1, 2, 3))
        F.check_window("kernel_size", kernel_size)
        F._check_choice("kernel_type", kernel_type, F.NCC_KERNELS)
        reduction = getattr(reduction, "value", reduction)
        F._check_choice("reduction", reduction, ("none", "mean", "sum"))
        F.check_nonnegative("smooth_dr", smooth_dr)
        self.ndim, self.kernel_size, self.kernel_type = spatial_dims, kernel_size, kernel_type
        self.reduction = reduction
        self.smooth_nr, self.smooth_dr, self.backend = float(smooth_nr), float(smooth_dr), backend

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target (B, C, *S) with ``spatial_dims`` spatial axes."""
        if isinstance(pred, torch.Tensor) and pred.dim() - 2 != self.ndim:
            raise ValueError(f"pred must have {self.ndim} spatial dimensions, got shape {tuple(pred.shape)}")
        ncc = F.local_ncc(
            pred,
            target,
            self.kernel_size,
            None,
            True,
            self.smooth_dr,
            "none",
            denominator="clamp",
            smooth_nr=self.smooth_nr,
            kernel_type=self.kernel_type,
            backend=self.backend,
        )
        if self.reduction == "sum":
            return ncc.sum().neg()
        if self.reduction == "mean":
            return ncc.mean().neg()
        return ncc.neg()


class GSSLoss(nn.Module):
    """GEMINI's GSS pair from one fused forward.

    ``loss = (feature_weight + flow_weight) * (1 - gss)``, whose gradient equals
    that of ``feature_weight * (1 - gss(f, f', u.detach())) +
    flow_weight * (1 - gss(f.detach(), f'.detach(), u))``: the features are
    trained with the flow fixed and the flow with the features fixed.
    """

    def __init__(self, feature_weight: float = 0.1, flow_weight: float = 1.0, backend: Optional[str] = None) -> None:
        super().__init__()
        if feature_weight < 0 or flow_weight < 0:
            raise ValueError(f"weights must be >= 0, got feature_weight={feature_weight}, flow_weight={flow_weight}")
        self.feature_weight, self.flow_weight, self.backend = float(feature_weight), float(flow_weight), backend

    def forward(
        self,
        feat_moving: torch.Tensor,
        feat_fixed: torch.Tensor,
        ddf: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """feat_moving, feat_fixed (B, C, *S); ddf (B, ndim, *S) moving->fixed;
        mask (B, 1, *S) or None (valid sample points). Returns a scalar."""
        total = self.feature_weight + self.flow_weight
        # both weights 0: a zero loss whose gradients are zeros, as any other weights' are tensors
        fw, dw = (self.feature_weight / total, self.flow_weight / total) if total else (0.0, 0.0)
        sim = F.gss_similarity(
            feat_moving, feat_fixed, ddf, mask, "mean", grad_scales=(fw, fw, dw), backend=self.backend
        )
        return total * (1.0 - sim)


class LocalNCCLoss(nn.Module):
    """GEMINI's GVS loss: ``1 - masked mean of the local NCC`` (squared by
    default), box window ``window`` with zero padding and the authors'
    ``denominator="eps"``; ``denominator="clamp"`` uses MONAI's variance floor
    (``eps`` then plays ``smooth_dr``), see :func:`gemini_ops.local_ncc`. Not
    MONAI's loss: that is :class:`LocalNormalizedCrossCorrelationLoss`."""

    def __init__(
        self,
        window: int = 9,
        squared: bool = True,
        eps: float = 1e-5,
        backend: Optional[str] = None,
        *,
        denominator: str = "eps",
    ) -> None:
        super().__init__()
        F._check_choice("denominator", denominator, F.NCC_DENOMINATORS)
        self.window, self.squared, self.eps, self.backend = window, squared, eps, backend
        self.denominator = denominator

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """pred, target (B, C, *S); mask (B, 1, *S) or None. Returns a scalar."""
        cc = F.local_ncc(
            pred,
            target,
            self.window,
            mask,
            self.squared,
            self.eps,
            "mean",
            denominator=self.denominator,
            backend=self.backend,
        )
        return 1.0 - cc
