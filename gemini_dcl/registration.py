"""Registration with a trained GEMINI-style network: displacement, warped image
and labels, Jacobian determinant, folding fraction, Dice (MONAI's
``compute_dice``) of nearest-neighbour and of linearly warped one-hot labels,
and the GVS value.

Convention (``gemini_ops``): ``warp(image, ddf)(x) = image(x + ddf(x))``, with
``ddf`` in voxel units on the grid of the *output*. ``net.flow(f_a, f_b)`` is
the flow A->B of GEMINI: ``warp(A, flow(f_a, f_b))`` is A resampled onto B's
grid and should look like B. So with A = ``moving`` and B = ``fixed``,
``ddf = net.flow(net.features(moving), net.features(fixed))`` lives on the
fixed grid and ``warp(moving, ddf)`` is compared with ``fixed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

import gemini_ops

__all__ = [
    "RegistrationNetwork",
    "RegistrationResult",
    "warp_label",
    "warp_label_linear",
    "dice_per_class",
    "gvs_value",
    "register",
]


class RegistrationNetwork(Protocol):
    """What :func:`register` needs of a network (``gemini_dcl.networks.GEMINI`` has it)."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, *S) -> per-voxel features (B, C, *S)."""
        ...

    def flow(self, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        """Features of A and B -> displacement A->B (B, ndim, *S), voxel units."""
        ...


@dataclass
class RegistrationResult:
    """Output of :func:`register`; B: batch, K: number of classes including background.

    Attributes:
        ddf: displacement on the fixed grid, (B, ndim, *S), voxel units.
        warped: moving image resampled onto the fixed grid, (B, C, *S).
        jacobian: determinant of the Jacobian of ``x -> x + ddf(x)``, (B, 1, *S).
        folding_fraction: share of voxels with determinant <= 0, (B,)
            (``gemini_ops.folding_fraction``).
        gvs, gvs_before: GVS value (:func:`gvs_value`) of the warped and of the
            unregistered moving image against the fixed one, (B,).
        warped_label: moving label warped with nearest neighbour, (B, 1, *S),
            dtype of ``moving_label``; None without ``moving_label``.
        dice: Dice of ``warped_label`` and ``fixed_label`` per foreground class
            1..K-1, (B, K-1), NaN where a class is absent from both; None
            without both labels.
        dice_linear: the same for the linearly warped one-hot label
            (:func:`warp_label_linear`), which does not lose thin structures
            to nearest-neighbour sampling.
        dice_before: the same for the unregistered ``moving_label``.
        mean_dice, mean_dice_linear, mean_dice_before: means over the present
            classes, (B,).
    """

    ddf: torch.Tensor
    warped: torch.Tensor
    jacobian: torch.Tensor
    folding_fraction: torch.Tensor
    gvs: torch.Tensor
    gvs_before: torch.Tensor
    warped_label: Optional[torch.Tensor] = None
    dice: Optional[torch.Tensor] = None
    dice_linear: Optional[torch.Tensor] = None
    dice_before: Optional[torch.Tensor] = None
    mean_dice: Optional[torch.Tensor] = None
    mean_dice_linear: Optional[torch.Tensor] = None
    mean_dice_before: Optional[torch.Tensor] = None


def warp_label(label: torch.Tensor, ddf: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Warp an integer label map with nearest-neighbour sampling, keeping its dtype.

    Args:
        label: (B, C, *S), any integer or integer-valued float dtype.
        ddf: (B, ndim, *S) displacement in voxels (float32/float64).
        padding_mode: ``"zeros"`` (outside -> label 0, background) or ``"border"``.

    Returns:
        (B, C, *S), same dtype and label set as ``label`` (plus 0 with zero padding).
    """
    # integers up to 2**24 are exact in float32, so nearest sampling returns the same values
    warped = gemini_ops.warp(label.to(ddf.dtype), ddf, mode="nearest", padding_mode=padding_mode)
    return torch.round(warped).to(label.dtype)


def warp_label_linear(label: torch.Tensor, ddf: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Warp an integer label map as a one-hot image with linear interpolation
    and take the argmax: (B, 1, *S) -> (B, 1, *S) int64. Outside the image
    the one-hot map is zero, which argmax turns into class 0 (background)."""
    onehot = one_hot(label.long(), num_classes, dtype=ddf.dtype, dim=1)
    return gemini_ops.warp(onehot, ddf).argmax(1, keepdim=True)


def dice_per_class(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Dice ``2|P_c & T_c| / (|P_c| + |T_c|)`` of integer label maps per
    foreground class, by ``monai.metrics.compute_dice``.

    Args:
        pred, target: (B, 1, *S) integer-valued label maps.
        num_classes: K, classes 0..K-1 (0 is background and not scored).

    Returns:
        (B, K-1) float32; NaN where class c is absent from both maps (0 where
        it is only in ``pred``).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    p = one_hot(pred.long(), num_classes, dim=1)
    t = one_hot(target.long(), num_classes, dim=1)
    dice = compute_dice(p, t, include_background=False, ignore_empty=False).float()
    absent = (p[:, 1:] + t[:, 1:]).flatten(2).sum(-1) == 0
    return torch.where(absent, torch.full_like(dice, float("nan")), dice)


def gvs_value(warped: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """GEMINI's GVS loss value per sample, ``1 - mean squared local NCC``
    (window 9, :func:`gemini_dcl.losses.gvs_loss`): (B, C, *S) pair -> (B,).
    Lower is more similar."""
    from .losses import gvs_loss

    return torch.stack([gvs_loss(w[None], f[None]) for w, f in zip(warped, fixed)])


def _check_pair(moving: torch.Tensor, fixed: torch.Tensor) -> None:
    for name, t in (("moving", moving), ("fixed", fixed)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() not in (4, 5):
            raise ValueError(f"{name} must have shape (B, C, H, W) or (B, C, D, H, W), got {tuple(t.shape)}")
    if moving.shape != fixed.shape:
        raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} must have the same shape")


def _check_label(name: str, label: Optional[torch.Tensor], image: torch.Tensor) -> None:
    if label is None:
        return
    expected = (image.shape[0], 1, *image.shape[2:])
    if not isinstance(label, torch.Tensor) or tuple(label.shape) != expected:
        shape = tuple(label.shape) if isinstance(label, torch.Tensor) else type(label).__name__
        raise ValueError(f"{name} must be a tensor of shape (B, 1, *spatial) = {expected}, got {shape}")


@torch.no_grad()
def register(
    net: RegistrationNetwork,
    moving: torch.Tensor,
    fixed: torch.Tensor,
    moving_label: Optional[torch.Tensor] = None,
    fixed_label: Optional[torch.Tensor] = None,
    num_classes: Optional[int] = None,
) -> RegistrationResult:
    """Register ``moving`` onto ``fixed`` with ``net`` (no gradients; the
    caller chooses ``net.eval()``).

    Args:
        net: has ``features(x)`` and ``flow(feat_a, feat_b)`` (A->B).
        moving, fixed: (B, C, *S) images on the same grid, 2D or 3D.
        moving_label, fixed_label: optional (B, 1, *S) integer label maps.
        num_classes: K for Dice; default ``max(labels) + 1`` (at least 2).

    Returns:
        :class:`RegistrationResult`, ``ddf = net.flow(features(moving), features(fixed))``.
    """
    _check_pair(moving, fixed)
    _check_label("moving_label", moving_label, moving)
    _check_label("fixed_label", fixed_label, fixed)
    ddf = net.flow(net.features(moving), net.features(fixed))
    expected = (moving.shape[0], moving.dim() - 2, *moving.shape[2:])
    if tuple(ddf.shape) != expected:
        raise ValueError(f"net.flow returned shape {tuple(ddf.shape)}, expected (B, ndim, *spatial) = {expected}")
    warped = gemini_ops.warp(moving.to(ddf.dtype), ddf)
    result = RegistrationResult(
        ddf=ddf,
        warped=warped,
        jacobian=gemini_ops.jacobian_determinant(ddf),
        folding_fraction=torch.stack([gemini_ops.folding_fraction(d[None]) for d in ddf]).to(ddf.dtype),
        gvs=gvs_value(warped, fixed.to(ddf.dtype)),
        gvs_before=gvs_value(moving.to(ddf.dtype), fixed.to(ddf.dtype)),
    )
    if moving_label is not None:
        result.warped_label = warp_label(moving_label, ddf)
        if fixed_label is not None:
            k = num_classes or max(int(max(moving_label.max(), fixed_label.max())) + 1, 2)
            result.dice = dice_per_class(result.warped_label, fixed_label, k)
            result.dice_linear = dice_per_class(warp_label_linear(moving_label, ddf, k), fixed_label, k)
            result.dice_before = dice_per_class(moving_label, fixed_label, k)
            result.mean_dice = result.dice.nanmean(1)
            result.mean_dice_linear = result.dice_linear.nanmean(1)
            result.mean_dice_before = result.dice_before.nanmean(1)
    return result
