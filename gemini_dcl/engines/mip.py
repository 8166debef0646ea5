"""The self-supervised pre-training steps of :class:`~gemini_dcl.engines.StepTrainer`:
GEMINI-MIP and GVSL.

GEMINI-MIP (the authors' GEMINI_SS_MIP) is ``[PairStep(), RestoreStep()]``:
GEMINI's pair step, then a separate optimiser step restoring an
appearance-corrupted copy of image A to the clean A (MSE x100). GVSL is
``[GVSLStep()]``: one step of restoration of the corrupted A plus Z-matching
(affine then deformable head) of B onto A with a selectable similarity
("ncc", "mi", "ssim") and smoothness.

Batches come from the pair pipeline: keys ``image_a``, ``image_b`` (spatially
augmented together) and ``image_a_corrupt`` (the corrupted copy of A made by
:func:`gemini_dcl.transforms.restoration_corruption` before the spatial
augmentation, so it is aligned with the clean A).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss, SSIMLoss
from torch import nn

from .trainer import StepTrainer

__all__ = ["SIMILARITIES", "similarity_loss", "RestoreStep", "GVSLStep"]

SIMILARITIES = ("ncc", "mi", "ssim")


def similarity_loss(name: str, spatial_dims: int = 3, window: int = 9) -> nn.Module:
    """The image-similarity loss of GVSL's Z-matching (lower is better):

    - ``"ncc"``: local NCC over a ``window``-sided box (the authors'),
      ``monai.losses.LocalNormalizedCrossCorrelationLoss`` (value ``-mean(ncc)``);
    - ``"mi"``: ``GlobalMutualInformationLoss`` (value ``-MI``), suggested by the
      GVSL author where NCC learned nothing on brain MRI (GVSL issue 7);
    - ``"ssim"``: ``SSIMLoss`` with data range 1 (value ``1 - SSIM``).
    """
    name = str(name).lower()
    if name == "ncc":
        return LocalNormalizedCrossCorrelationLoss(spatial_dims=spatial_dims, kernel_size=window)
    if name == "mi":
        return GlobalMutualInformationLoss()
    if name == "ssim":
        return SSIMLoss(spatial_dims=spatial_dims, data_range=1.0)
    raise ValueError(f"similarity must be one of {SIMILARITIES}, got {name!r}")


class RestoreStep:
    """GEMINI-MIP's restoration step: ``restore`` x ``loss(network(A_corrupt), A)``.

    Args:
        loss: default ``torch.nn.MSELoss()`` (the authors').
        corrupt_key: batch key of the corrupted A.
        target_key: batch key of the clean A.
    """

    name = "restore"
    loss_weights: Mapping[str, float] = {"restore": 100.0}

    def __init__(
        self,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        corrupt_key: str = "image_a_corrupt",
        target_key: str = "image_a",
    ) -> None:
        self.loss = nn.MSELoss() if loss is None else loss
        self.corrupt_key, self.target_key = corrupt_key, target_key

    def __call__(self, engine: StepTrainer, batch: Mapping) -> dict[str, torch.Tensor]:
        """See the class docstring."""
        clean, corrupt = engine.batch(batch, (self.target_key, self.corrupt_key))
        return {"loss_restore": engine.loss_weights["restore"] * self.loss(engine.infer(corrupt), clean.float())}


class GVSLStep:
    """GVSL's single step on (A, B, A_corrupt): ``GVSL.training_forward``
    registers B (moving) onto the corrupted A (fixed; the authors share one
    forward for both tasks) and restores A; terms ``sim`` x similarity(warp(B),
    A), ``smooth`` x smoothness(deformable flow), ``restore`` x MSE(restored, A).

    Args:
        similarity: ``"ncc"``, ``"mi"``, ``"ssim"`` (:func:`similarity_loss`)
            or a loss module ``(warped, fixed) -> scalar``.
        restore_loss: default ``torch.nn.MSELoss()``.
        corrupt_key: batch key of the corrupted A.
        pair_keys: batch keys of A and B.
        ncc_window: box side of the ``"ncc"`` similarity.
    """

    name = "gvsl"
    # GVSL: similarity, smoothness and restoration all weight 1, one step.
    loss_weights: Mapping[str, float] = {"sim": 1.0, "smooth": 1.0, "restore": 1.0}

    def __init__(
        self,
        similarity: str | nn.Module = "ncc",
        restore_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        corrupt_key: str = "image_a_corrupt",
        pair_keys: tuple[str, str] = ("image_a", "image_b"),
        ncc_window: int = 9,
    ) -> None:
        from gemini_dcl.losses import smoothness_loss

        self.similarity = similarity_loss(similarity, 3, ncc_window) if isinstance(similarity, str) else similarity
        self.restore_loss = nn.MSELoss() if restore_loss is None else restore_loss
        self.smoothness = smoothness_loss
        self.keys = (*pair_keys, corrupt_key)

    def __call__(self, engine: StepTrainer, batch: Mapping) -> dict[str, torch.Tensor]:
        """See the class docstring."""
        image_a, image_b, corrupt = engine.batch(batch, self.keys)
        out = engine.forward("training_forward", image_b, corrupt)
        target = image_a.float()
        w = engine.loss_weights
        if out["warped"] is None:
            nan = target.new_tensor(float("nan"))
            return {"loss_sim": nan, "loss_smooth": nan, "loss_restore": nan}
        return {
            "loss_sim": w["sim"] * self.similarity(out["warped"], target),
            "loss_smooth": w["smooth"] * self.smoothness(out["flow"]),
            "loss_restore": w["restore"] * self.restore_loss(out["restored"], target),
        }
