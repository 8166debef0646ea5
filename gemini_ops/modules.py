"""``nn.Module`` wrappers: drop-ins for MONAI's ``Warp`` and ``DVF2DDF``, and
the GEMINI losses built on the fused ops."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from . import functional as F

__all__ = ["Warp", "VelocityIntegrator", "GSSLoss", "LocalNCCLoss"]


class Warp(nn.Module):
    """Same call as ``monai.networks.blocks.Warp``: ``forward(image, ddf)``.

    Args:
        mode: ``"bilinear"`` or ``"nearest"``.
        padding_mode: ``"zeros"`` or ``"border"``.
    """

    def __init__(self, mode: str = "bilinear", padding_mode: str = "zeros", backend: Optional[str] = None) -> None:
        super().__init__()
        F._check_choice("mode", mode, F.MODES)
        F._check_choice("padding_mode", padding_mode, F.PADDINGS)
        self.mode, self.padding_mode, self.backend = mode, padding_mode, backend

    def forward(self, image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        """image (B, C, *S), ddf (B, ndim, *S) -> warped image (B, C, *S)."""
        return F.warp(image, ddf, self.mode, self.padding_mode, backend=self.backend)


class VelocityIntegrator(nn.Module):
    """Same call as ``monai.networks.blocks.DVF2DDF``: ``forward(dvf) -> ddf``
    by scaling and squaring in ``num_steps`` fused steps (bilinear only)."""

    def __init__(
        self, num_steps: int = 7, mode: str = "bilinear", padding_mode: str = "zeros", backend: Optional[str] = None
    ) -> None:
        super().__init__()
        if mode != "bilinear":
            raise ValueError(f"mode must be 'bilinear' for velocity integration, got {mode!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"num_steps must be an int >= 0, got {num_steps!r}")
        F._check_choice("padding_mode", padding_mode, F.PADDINGS)
        self.num_steps, self.padding_mode, self.backend = num_steps, padding_mode, backend

    def forward(self, dvf: torch.Tensor) -> torch.Tensor:
        """dvf (B, ndim, *S) -> displacement of exp(dvf), (B, ndim, *S)."""
        return F.integrate_velocity(dvf, self.num_steps, self.padding_mode, backend=self.backend)


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
        if total == 0:
            return feat_fixed.new_zeros(())
        fw, dw = self.feature_weight / total, self.flow_weight / total
        sim = F.gss_similarity(
            feat_moving, feat_fixed, ddf, mask, "mean", grad_scales=(fw, fw, dw), backend=self.backend
        )
        return total * (1.0 - sim)


class LocalNCCLoss(nn.Module):
    """GVS loss: ``1 - masked mean of the local NCC`` (squared by default),
    box window ``window`` with zero padding."""

    def __init__(self, window: int = 9, squared: bool = True, eps: float = 1e-5, backend: Optional[str] = None) -> None:
        super().__init__()
        self.window, self.squared, self.eps, self.backend = window, squared, eps, backend

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """pred, target (B, C, *S); mask (B, 1, *S) or None. Returns a scalar."""
        cc = F.local_ncc(pred, target, self.window, mask, self.squared, self.eps, "mean", backend=self.backend)
        return 1.0 - cc
