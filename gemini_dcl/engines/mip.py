"""Self-supervised pre-training trainers (``monai.engines`` trainers):
GEMINI-MIP and GVSL.

:class:`GeminiMIPTrainer` is :class:`~gemini_dcl.engines.trainer.GeminiPairTrainer`
(the DHL/GSS step on an unlabelled pair) plus a separate optimiser step that
restores an appearance-corrupted copy of image A to the clean A (MSE x100,
the authors' GEMINI_SS_MIP). :class:`GVSLTrainer` is GVSL's single step:
restoration of the corrupted A plus Z-matching (affine then deformable head)
of B onto A with a selectable similarity ("ncc", "mi", "ssim") and
smoothness. Both keep the base trainer's guarantees: AMP (``"bf16"`` /
``"fp16"``), NaN-skip (no optimiser update for a non-finite loss, counted in
``state.skipped_steps``, ranks agree under DDP) and resumable state through
:class:`gemini_dcl.checkpoint.CheckpointHandler`.

Batches come from the pair pipeline: keys ``image_a``, ``image_b`` (spatially
augmented together) and ``image_a_corrupt`` (the corrupted copy of A made by
:func:`gemini_dcl.transforms.restoration_corruption` before the spatial
augmentation, so it is aligned with the clean A).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from monai.losses import GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss, SSIMLoss
from torch import nn
from torch.optim import Optimizer

import gemini_ops
from gemini_dcl.networks.gvsl import affine_to_ddf

from .trainer import GeminiPairTrainer, _to_device

__all__ = [
    "MIP_LOSS_WEIGHTS",
    "GVSL_LOSS_WEIGHTS",
    "SIMILARITIES",
    "similarity_loss",
    "GVSLForward",
    "GeminiMIPTrainer",
    "GVSLTrainer",
]

# The authors' GEMINI_SS_MIP weights: the pair terms of GEMINI, restoration x100.
MIP_LOSS_WEIGHTS: dict[str, float] = {"smooth": 0.4, "gvs": 1.0, "gss": 0.8, "restore": 100.0}
# GVSL: similarity, smoothness and restoration all weight 1, one step.
GVSL_LOSS_WEIGHTS: dict[str, float] = {"sim": 1.0, "smooth": 1.0, "restore": 1.0}
SIMILARITIES = ("ncc", "mi", "ssim")


def _merge_weights(given: Mapping[str, float] | None, defaults: Mapping[str, float]) -> dict[str, float]:
    unknown = set(given or {}) - set(defaults)
    if unknown:
        raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **{k: float(v) for k, v in (given or {}).items()}}


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


class GVSLForward(nn.Module):
    """GVSL's registration + restoration behind one ``forward`` (for DDP, like
    :class:`~gemini_dcl.engines.trainer.PairForward`), with the encoders under
    the caller's autocast and the geometric tail in float32: the fused warp
    takes only float32 on the CPU, and the affine/integration lose accuracy in
    half precision. Same outputs as ``GVSL.forward(moving, fixed)``, as float32;
    ``None`` instead of the geometric outputs when the encodings are not finite
    (the fused ops refuse non-finite fields, and the step is skipped anyway).
    ``forward(image)`` alone is the restoration head on ``image``.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor | None = None) -> Any:
        """See the class docstring."""
        net = self.network
        if fixed is None:
            return net.head(net.features(moving))
        bottleneck_moving, feat_moving = net.encode(moving)
        bottleneck_fixed, feat_fixed = net.encode(fixed)
        restored = net.res_conv(feat_fixed)
        out: dict[str, torch.Tensor | None] = dict.fromkeys(("theta", "affine_ddf", "flow", "ddf", "warped"))
        out["restored"] = restored.float()
        encodings = (bottleneck_moving, feat_moving, bottleneck_fixed, feat_fixed)
        if not all(bool(torch.isfinite(t).all()) for t in encodings):
            return out
        with torch.autocast(moving.device.type, enabled=False):
            shape = list(moving.shape[2:])
            theta = net.affine(bottleneck_moving.float(), bottleneck_fixed.float(), shape)
            affine_ddf = affine_to_ddf(theta, shape)
            flow = net.deformable(gemini_ops.warp(feat_moving.float(), affine_ddf), feat_fixed.float())
            # Exact composition (the affine is linear): affine_ddf(x + flow) = affine_ddf(x) + (A - I) flow.
            ddf = affine_ddf + torch.einsum("bij,bj...->bi...", theta[:, :, :3], flow)
            warped = gemini_ops.warp(moving.float(), ddf)
        out.update(theta=theta, affine_ddf=affine_ddf, flow=flow, ddf=ddf, warped=warped)
        return out


class GeminiMIPTrainer(GeminiPairTrainer):
    """GEMINI-MIP pre-training: the pair step of :class:`GeminiPairTrainer`
    (smoothness + GVS + GSS on (A, B)), then a separate optimiser step
    ``restore`` x ``restore_loss(network(A_corrupt), A)`` on the same batch.

    Args:
        restore_loss: default ``torch.nn.MSELoss()`` (the authors').
        corrupt_key: batch key of the corrupted A (the clean target is
            ``pair_keys[0]``).
        loss_weights: ``smooth``, ``gvs``, ``gss``, ``restore``
            (defaults :data:`MIP_LOSS_WEIGHTS`).
        other arguments: see :class:`GeminiPairTrainer`; the network is a
            ``GEMINI`` with ``out_channels`` = image channels.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        restore_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        corrupt_key: str = "image_a_corrupt",
        loss_weights: Mapping[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("unlabeled_phase", True):
            raise ValueError("GEMINI-MIP restores the pair's image A: unlabeled_phase must stay True")
        weights = _merge_weights(loss_weights, MIP_LOSS_WEIGHTS)
        pair_weights = {k: weights[k] for k in ("smooth", "gvs", "gss")}
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, loss_weights=pair_weights, **kwargs)
        self.loss_weights = weights
        self.restore_loss = restore_loss if restore_loss is not None else nn.MSELoss()
        self.corrupt_key = corrupt_key
    def _second_step(self, batchdata: Mapping) -> dict[str, float]:
        clean, corrupt = _to_device(
            batchdata, (self.pair_keys[0], self.corrupt_key), self.state.device, self.non_blocking
        )

        def compute() -> dict[str, torch.Tensor]:
            with self._autocast():
                restored = self.inferer(corrupt, self.network)
            return {"loss_restore": self.loss_weights["restore"] * self.restore_loss(restored.float(), clean.float())}

        return self._optimise("restore", compute)


class GVSLTrainer(GeminiPairTrainer):
    """GVSL pre-training, one optimiser step per iteration on the batch
    (A, B, A_corrupt): the network registers B (moving) onto the corrupted A
    (fixed; the authors share one forward for both tasks) and restores A:

    loss = ``sim`` x similarity(warp(B, ddf), A) + ``smooth`` x
    smoothness(deformable flow) + ``restore`` x MSE(restored, A).

    Args:
        network: a ``GVSL`` (the trainer wraps it in :class:`GVSLForward`).
        similarity: ``"ncc"``, ``"mi"``, ``"ssim"`` (:func:`similarity_loss`)
            or a loss module ``(warped, fixed) -> scalar``.
        restore_loss: default ``torch.nn.MSELoss()``.
        corrupt_key: batch key of the corrupted A.
        loss_weights: ``sim``, ``smooth``, ``restore`` (defaults :data:`GVSL_LOSS_WEIGHTS`).
        ncc_window: box side of the ``"ncc"`` similarity.
        other arguments: see :class:`GeminiPairTrainer` (its GVS/GSS settings are unused).
    """

    forward_class = GVSLForward

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        similarity: str | nn.Module = "ncc",
        restore_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        corrupt_key: str = "image_a_corrupt",
        loss_weights: Mapping[str, float] | None = None,
        ncc_window: int = 9,
        **kwargs: Any,
    ) -> None:
        if not kwargs.get("unlabeled_phase", True):
            raise ValueError("GVSL trains on the pair stream: unlabeled_phase must stay True")
        weights = _merge_weights(loss_weights, GVSL_LOSS_WEIGHTS)
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, **kwargs)
        self.loss_weights = weights
        self.similarity = similarity_loss(similarity, 3, ncc_window) if isinstance(similarity, str) else similarity
        self.restore_loss = restore_loss if restore_loss is not None else nn.MSELoss()
        self.corrupt_key = corrupt_key

    def _pair_losses(self, batchdata: Mapping) -> dict[str, torch.Tensor]:
        keys = (self.pair_keys[0], self.pair_keys[1], self.corrupt_key)
        image_a, image_b, corrupt = _to_device(batchdata, keys, self.state.device, self.non_blocking)
        with self._autocast():
            out = self.network(image_b, corrupt)
        target = image_a.float()
        w = self.loss_weights
        if out["warped"] is None:
            nan = target.new_tensor(float("nan"))
            return {"loss_sim": nan, "loss_smooth": nan, "loss_restore": nan}
        return {
            "loss_sim": w["sim"] * self.similarity(out["warped"], target),
            "loss_smooth": w["smooth"] * self._smoothness(out["flow"]),
            "loss_restore": w["restore"] * self.restore_loss(out["restored"], target),
        }
