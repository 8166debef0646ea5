"""GEMINI / GVSL losses with the authors' definitions, on the fused ``gemini_ops``.

Shapes: images and features (B, C, *S); displacements (B, ndim, *S);
masks (B, 1, *S); ``S = (H, W)`` or ``(D, H, W)``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

import gemini_ops
from gemini_ops import GSSLoss

__all__ = ["smoothness_loss", "gvs_loss", "GSSLoss", "segmentation_ce", "soft_dice_loss", "SegLoss"]

_EPS = 1e-6  # the authors' epsilon inside log()


def smoothness_loss(ddf: torch.Tensor) -> torch.Tensor:
    """Diffusion regulariser: ``(1 / ndim) * sum_i mean((u(x + e_i) - u(x))**2)``,
    the mean over spatial axes ``i`` of the mean squared forward difference of
    all channels of ``ddf`` (B, ndim, *S). Returns a scalar."""
    if ddf.dim() not in (4, 5) or ddf.shape[1] != ddf.dim() - 2:
        raise ValueError(f"ddf must have shape (B, ndim, *S) with ndim 2 or 3 channels, got {list(ddf.shape)}")
    ndim = ddf.dim() - 2
    return sum(torch.diff(ddf, dim=2 + i).square().mean() for i in range(ndim)) / ndim


def gvs_loss(
    warped: torch.Tensor, fixed: torch.Tensor, mask: Optional[torch.Tensor] = None, window: int = 9
) -> torch.Tensor:
    """Geometric visual similarity: ``1 - sum(cc * mask) / max(sum(mask), 1e-6)``
    with ``cc`` the squared local NCC (``gemini_ops.local_ncc``: box window of
    side ``window``, zero padding, ``cross**2 / (var_w * var_f + 1e-5)``),
    averaged over channels. ``warped``, ``fixed`` (B, C, *S); ``mask``
    (B, 1, *S) or None (all voxels). Returns a scalar."""
    return 1.0 - gemini_ops.local_ncc(warped, fixed, window, mask, squared=True, eps=1e-5)


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.dim() not in (4, 5):
        raise ValueError(f"pred must have shape (B, C, *S) with 2 or 3 spatial dims, got {list(pred.shape)}")
    if target.shape != pred.shape:
        raise ValueError(f"target {list(target.shape)} must have the shape of pred {list(pred.shape)}")


def segmentation_ce(prob: torch.Tensor, target: torch.Tensor, binary: bool = False) -> torch.Tensor:
    """The authors' cross-entropy on probabilities ``prob`` and one-hot /
    multi-label ``target``, both (B, C, *S), mean over every element:
    ``-mean(y log(p + 1e-6))``, or with ``binary``
    ``-mean(y log(p + 1e-6) + (1 - y) log(1 - p + 1e-6))``."""
    _check_pair(prob, target)
    ce = target * torch.log(prob + _EPS)
    if binary:
        ce = ce + (1 - target) * torch.log(1 - prob + _EPS)
    return -ce.mean()


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """The authors' soft Dice loss, background included:
    ``1 - mean_{b,c} (2 sum(y p) + smooth) / (sum(y**2) + sum(p**2) + smooth)``,
    sums over space; ``prob``, ``target`` (B, C, *S)."""
    _check_pair(prob, target)
    spatial = tuple(range(2, prob.dim()))
    inter = (target * prob).sum(spatial)
    denom = target.square().sum(spatial) + prob.square().sum(spatial)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


class SegLoss(nn.Module):
    """Segmentation loss of the labelled step: ``ce_weight * CE + dice_weight * Dice``.

    Args:
        activation: ``"softmax"`` (mutually exclusive classes, background a
            channel: the 3D scripts) or ``"sigmoid"`` (multi-label with binary
            CE: the chest X-ray script).
        backend: ``"authors"``: :func:`segmentation_ce` (binary for sigmoid) +
            :func:`soft_dice_loss` on the probabilities; ``"monai"``:
            ``monai.losses.DiceCELoss`` (its own CE/BCE-with-logits and Dice
            definitions, ``squared_pred=True`` like the authors').
        ce_weight, dice_weight: term weights (the authors': 1 and 1; their
            scripts multiply the sum by 100).

    ``forward(logits, target)``: logits (B, C, *S); target (B, C, *S) one-hot
    / multi-label, or for softmax also an integer label map (B, 1, *S).
    Returns a scalar.
    """

    def __init__(
        self, activation: str = "softmax", backend: str = "authors", ce_weight: float = 1.0, dice_weight: float = 1.0
    ) -> None:
        super().__init__()
        if activation not in ("softmax", "sigmoid"):
            raise ValueError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")
        if backend not in ("authors", "monai"):
            raise ValueError(f"backend must be 'authors' or 'monai', got {backend!r}")
        self.activation, self.backend = activation, backend
        self.ce_weight, self.dice_weight = float(ce_weight), float(dice_weight)
        self.monai_loss: Optional[nn.Module] = None
        if backend == "monai":
            from monai.losses import DiceCELoss

            self.monai_loss = DiceCELoss(
                softmax=activation == "softmax",
                sigmoid=activation == "sigmoid",
                squared_pred=True,
                lambda_ce=ce_weight,
                lambda_dice=dice_weight,
            )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.dim() not in (4, 5):
            raise ValueError(f"logits must have shape (B, C, *S) with 2 or 3 spatial dims, got {list(logits.shape)}")
        if self.activation == "softmax" and target.shape[1] == 1 and logits.shape[1] > 1:
            target = _one_hot(target, logits.shape[1])
        target = target.to(logits.dtype)
        if self.monai_loss is not None:
            _check_pair(logits, target)
            return self.monai_loss(logits, target)
        if self.activation == "softmax":
            prob = torch.softmax(logits, dim=1)
        else:
            prob = torch.sigmoid(logits)
        ce = segmentation_ce(prob, target, binary=self.activation == "sigmoid")
        return self.ce_weight * ce + self.dice_weight * soft_dice_loss(prob, target)


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 1, *S) integer labels -> (B, num_classes, *S) one-hot."""
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError("target label map must hold integer class indices")
    labels = labels.long()
    if bool((labels < 0).any()) or bool((labels >= num_classes).any()):
        raise ValueError(f"target labels must lie in [0, {num_classes - 1}]")
    return torch.nn.functional.one_hot(labels[:, 0], num_classes).movedim(-1, 1)
