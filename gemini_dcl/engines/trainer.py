"""GEMINI trainers as ``monai.engines`` trainers.

:class:`GeminiPairTrainer` runs GEMINI's deformable-homeomorphism step on a
pair of unlabelled images (DHL: smoothness + GVS, and the GSS pair) and then
calls :meth:`GeminiPairTrainer._second_step`, a hook for the step that pairs
with it: :class:`GeminiSemiTrainer` fills it with the labelled segmentation
step of GEMINI-Semi; a MIP pre-training trainer would fill it with the
restoration step. Both are ignite engines, so MONAI handlers (stats,
TensorBoard, validation, LR schedule, early stop, checkpoints) attach as usual.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer
from monai.utils.enums import CommonKeys as Keys
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

import gemini_ops

__all__ = ["PairForward", "GeminiPairTrainer", "GeminiSemiTrainer", "DEFAULT_LOSS_WEIGHTS", "cycle"]

logger = logging.getLogger(__name__)

# The authors' weights (GEMINI_FS_Semi): smoothness, GVS, GSS pair, labelled segmentation.
DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"smooth": 0.4, "gvs": 1.0, "gss": 0.8, "seg": 100.0}
AMP_MODES = ("none", "bf16", "fp16")


class PairForward(nn.Module):
    """Puts both of GEMINI's training computations behind one ``forward`` so
    that ``DistributedDataParallel`` (which only synchronises gradients of what
    ran through its own ``forward``) can wrap the network.

    ``forward(image)`` returns ``network(image)`` (head(features)).
    ``forward(image_a, image_b)`` returns a dict with ``feat_a``, ``feat_b`` and
    the displacements ``ddf_ab`` (A -> B) and ``ddf_ba``, all float32; the
    displacements are ``None`` when the features are not finite, because the
    fused ops refuse non-finite fields and the step is skipped anyway.
    The flows run with autocast off: the fused ops take float32 on the CPU and
    the integration is where half precision loses accuracy.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor, image_b: torch.Tensor | None = None) -> Any:
        """See the class docstring."""
        if image_b is None:
            return self.network(image)
        # A and B go through the backbone (and the deformer) as one batch: every
        # layer is per sample (GroupNorm included), so the result is the same,
        # and on the CPU a batch of 2 takes oneDNN's convolution instead of
        # PyTorch's much slower fallback for batch-1 3D convolutions.
        feat_a, feat_b = self.network.features(torch.cat([image, image_b])).float().chunk(2)
        out: dict[str, torch.Tensor | None] = {"feat_a": feat_a, "feat_b": feat_b, "ddf_ab": None, "ddf_ba": None}
        if bool(torch.isfinite(feat_a).all()) and bool(torch.isfinite(feat_b).all()):
            with torch.autocast(feat_a.device.type, enabled=False):
                ddf = self.network.flow(torch.cat([feat_a, feat_b]), torch.cat([feat_b, feat_a]))
            out["ddf_ab"], out["ddf_ba"] = ddf.chunk(2)
        return out


def cycle(loader: Iterable) -> Iterator:
    """Iterate ``loader`` forever, a fresh pass (and reshuffle) each time;
    a ``DistributedSampler`` gets a new epoch per pass so its order changes."""
    sampler = getattr(loader, "sampler", None)
    passes = 0
    while True:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(passes)
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the labelled data loader is empty")
        passes += 1


def _to_device(batch: Mapping, keys: Sequence[str], device: torch.device, non_blocking: bool) -> list[torch.Tensor]:
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch has no {missing}; it has {sorted(batch)}")
    return [torch.as_tensor(batch[k]).to(device, non_blocking=non_blocking) for k in keys]


class GeminiPairTrainer(Trainer):
    """GEMINI's step on an unlabelled pair, plus a hook for a second step.

    Per iteration, on the pair (A, B) of ``train_data_loader``'s batch (keys
    ``pair_keys``): features fA, fB; displacements u_AB, u_BA from the deformer
    (velocity integrated by the network); masks of valid sample points; loss =
    ``smooth`` x (smoothness(u_AB) + smoothness(u_BA)) + ``gvs`` x (GVS(A∘u_AB,
    B) + GVS(B∘u_BA, A)) + ``gss`` x (GSS pair AB + BA); one optimiser step.
    Then :meth:`_second_step` (nothing here).

    A step whose loss is not finite (or whose features are not) makes no
    optimiser update: ``engine.state.skipped_steps`` counts it (saved in
    checkpoints through ``state_dict_user_keys``) and a warning names the
    phase and iteration. Under DDP the ranks agree on skipping.

    Args:
        device: where to train.
        max_epochs: epochs to run.
        train_data_loader: the unlabelled pair stream (dict batches). Not read
            when ``unlabeled_phase`` is False (then ``epoch_length`` is required).
        network: a GEMINI network (``features``, ``flow``, ``forward``); the
            trainer wraps it in :attr:`forward_class` and, when
            ``torch.distributed`` is initialised, in ``DistributedDataParallel``.
        optimizer: one optimiser for all steps (as in the authors' code).
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        loss_weights: ``smooth``, ``gvs``, ``gss`` (and the subclass's keys);
            missing keys take :data:`DEFAULT_LOSS_WEIGHTS`.
        unlabeled_phase: False turns the pair step off (baselines).
        amp: ``"none"``/False, ``"bf16"`` (autocast to bfloat16, CPU or GPU),
            ``"fp16"`` (CUDA only, with a GradScaler); True means fp16 on CUDA
            and bf16 elsewhere. Losses are computed in float32.
        gvs_window: side of the local NCC box.
        gss_feature_weight, gss_flow_weight: the GSS pair's inner weights.
        pair_keys: batch keys of A and B.
        inferer: the single-image forward of the second step,
            ``inferer(image, network)`` (default ``SimpleInferer``).
        train_handlers, key_train_metric, additional_metrics, non_blocking:
            as in ``monai.engines.SupervisedTrainer``.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | None,
        network: nn.Module,
        optimizer: Optimizer,
        epoch_length: int | None = None,
        loss_weights: Mapping[str, float] | None = None,
        unlabeled_phase: bool = True,
        amp: bool | str = False,
        gvs_window: int = 9,
        gss_feature_weight: float = 0.1,
        gss_flow_weight: float = 1.0,
        pair_keys: Sequence[str] = ("image_a", "image_b"),
        inferer: Inferer | None = None,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
    ) -> None:
        from gemini_dcl.losses import gvs_loss, smoothness_loss

        if not unlabeled_phase:
            if epoch_length is None:
                raise ValueError("epoch_length is required when unlabeled_phase is False")
            train_data_loader = None  # ignite then runs epoch_length iterations with batch None
        elif train_data_loader is None:
            raise ValueError("train_data_loader (the unlabelled pairs) is required when unlabeled_phase is True")
        device = torch.device(device)
        self.amp_mode = self._amp_mode(amp, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            amp=self.amp_mode == "fp16",  # Trainer.run makes a GradScaler only then; bf16 needs none
            decollate=False,
        )
        self.network = self._training_module(network, device)
        self.optimizer = optimizer
        self.inferer = SimpleInferer() if inferer is None else inferer
        unknown = set(loss_weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}")
        self.loss_weights = {**DEFAULT_LOSS_WEIGHTS, **{k: float(v) for k, v in (loss_weights or {}).items()}}
        self.unlabeled_phase = unlabeled_phase
        self.pair_keys = tuple(pair_keys)
        self.gvs_window = gvs_window
        self._smoothness, self._gvs = smoothness_loss, gvs_loss
        self.gss = gemini_ops.GSSLoss(gss_feature_weight, gss_flow_weight)
        self.state.skipped_steps = 0
        self.state_dict_user_keys.append("skipped_steps")

    # The module whose forward runs every training computation (DDP only
    # synchronises gradients of what runs through its wrapped forward).
    forward_class: type[nn.Module] = PairForward

    def _training_module(self, network: nn.Module, device: torch.device) -> nn.Module:
        """``network`` behind :attr:`forward_class`, wrapped in
        ``DistributedDataParallel`` when ``torch.distributed`` is initialised."""
        if isinstance(network, (DistributedDataParallel, self.forward_class)):
            raise TypeError(
                f"pass the bare network: the trainer wraps it in {self.forward_class.__name__} and, under "
                f"torch.distributed, in DistributedDataParallel (got {type(network).__name__})"
            )
        module = self.forward_class(network)
        if dist.is_available() and dist.is_initialized():
            # the pair and the second step each leave part of the network unused
            ids = [device] if device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
        return module

    @staticmethod
    def _amp_mode(amp: bool | str, device: torch.device) -> str:
        if isinstance(amp, bool) or amp is None:
            mode = ("fp16" if device.type == "cuda" else "bf16") if amp else "none"
        else:
            mode = str(amp).lower()
        if mode not in AMP_MODES:
            raise ValueError(f"amp must be a bool or one of {AMP_MODES}, got {amp!r}")
        if mode == "fp16" and device.type != "cuda":
            raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' on the CPU")
        return mode

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_mode == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp_mode == "bf16" else torch.float16
        return torch.autocast(self.state.device.type, dtype=dtype)

    def _iteration(self, engine: GeminiPairTrainer, batchdata: Any) -> dict:
        """One iteration: the pair step (if on), then :meth:`_second_step`.
        Returns the weighted loss terms as floats, their sum as ``loss`` and
        the running ``skipped_steps`` count."""
        engine.network.train()
        output: dict[str, float] = {}
        if engine.unlabeled_phase:
            output.update(engine._optimise("pair", lambda: engine._pair_losses(batchdata)))
        output.update(engine._second_step(batchdata))
        output[Keys.LOSS] = sum(v for k, v in output.items() if k.startswith("loss_"))
        output["skipped_steps"] = engine.state.skipped_steps
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output

    def _pair_losses(self, batchdata: Mapping) -> dict[str, torch.Tensor]:
        image_a, image_b = _to_device(batchdata, self.pair_keys, self.state.device, self.non_blocking)
        with self._autocast():
            out = self.network(image_a, image_b)
        if out["ddf_ab"] is None:
            nan = out["feat_a"].new_tensor(float("nan"))
            return {"loss_smooth": nan, "loss_gvs": nan, "loss_gss": nan}
        w = self.loss_weights
        smooth = gvs = gss = 0.0
        for moving, fixed, f_moving, f_fixed, ddf in (
            (image_a, image_b, out["feat_a"], out["feat_b"], out["ddf_ab"]),
            (image_b, image_a, out["feat_b"], out["feat_a"], out["ddf_ba"]),
        ):
            moving, fixed = moving.float(), fixed.float()
            # Voxels whose sample point falls outside the moving image carry no
            # information; the mask is a constant of the step (the authors detach it).
            mask = gemini_ops.warp(torch.ones_like(moving[:, :1]), ddf.detach(), "nearest")
            smooth = smooth + self._smoothness(ddf)
            gvs = gvs + self._gvs(gemini_ops.warp(moving, ddf), fixed, mask, window=self.gvs_window)
            gss = gss + self.gss(f_moving, f_fixed, ddf, mask)
        return {"loss_smooth": w["smooth"] * smooth, "loss_gvs": w["gvs"] * gvs, "loss_gss": w["gss"] * gss}

    def _second_step(self, batchdata: Any) -> dict[str, float]:
        """The step after the pair step, on the iteration's batch; returns its
        loss terms (keys starting with ``loss_``). Subclasses call
        :meth:`_optimise` here."""
        return {}

    def _all_finite(self, loss: torch.Tensor) -> bool:
        finite = torch.isfinite(loss.detach()).all().to(torch.float32)
        if dist.is_available() and dist.is_initialized():
            # Every rank must take the same branch, or DDP's all-reduce in
            # backward waits forever on the rank that skipped.
            finite = finite.to(self.state.device)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def _optimise(self, phase: str, compute: Callable[[], Mapping[str, torch.Tensor]]) -> dict[str, float]:
        """Zero the gradients, compute the weighted terms, step unless the total
        is not finite. Returns the terms as floats (NaN ones included, so logs
        show what went wrong)."""
        self.optimizer.zero_grad(set_to_none=True)
        terms = compute()
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = sum(terms.values())
        self.fire_event(IterationEvents.LOSS_COMPLETED)
        values = {name: float(t.detach()) for name, t in terms.items()}
        if not self._all_finite(loss):
            self.state.skipped_steps += 1
            self.logger.warning(
                f"iteration {self.state.iteration}: {phase} loss is not finite ({values}); "
                f"optimiser step skipped ({self.state.skipped_steps} skipped so far)"
            )
            return values
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            # a finite loss can still give non-finite gradients (reduced
            # precision); one such step would leave NaN in every weight
            grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
            if grads and not self._all_finite(torch.stack([g.detach().float().abs().sum() for g in grads])):
                self.state.skipped_steps += 1
                self.logger.warning(
                    f"iteration {self.state.iteration}: {phase} gradients are not finite; "
                    f"optimiser step skipped ({self.state.skipped_steps} skipped so far)"
                )
                return values
            self.optimizer.step()
        return values


class GeminiSemiTrainer(GeminiPairTrainer):
    """GEMINI-Semi: the pair step, then a separate optimiser step on a batch of
    the labelled stream, ``seg`` x ``seg_loss(logits, label)`` (label: class
    indices, (B, 1, *S)).

    The labelled loader is cycled forever by an iterator the trainer holds, so
    a handful of labelled cases serve any number of unlabelled iterations.

    Args:
        labeled_data_loader: batches with ``image_key`` and ``label_key``.
        seg_loss: e.g. ``gemini_dcl.losses`` CE + Dice, or
            ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``.
        image_key, label_key: batch keys of the labelled stream.
        other arguments: see :class:`GeminiPairTrainer`.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | None,
        labeled_data_loader: Iterable,
        network: nn.Module,
        optimizer: Optimizer,
        seg_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        image_key: str = "image",
        label_key: str = "label",
        **kwargs: Any,
    ) -> None:
        super().__init__(device, max_epochs, train_data_loader, network, optimizer, **kwargs)
        self.labeled_data_loader = labeled_data_loader
        self._labeled = cycle(labeled_data_loader)
        self.seg_loss = seg_loss
        self.image_key, self.label_key = image_key, label_key

    def _second_step(self, batchdata: Any) -> dict[str, float]:
        # GEMINI-Semi's second step draws from its own (labelled) stream
        batch = next(self._labeled)
        image, label = _to_device(batch, (self.image_key, self.label_key), self.state.device, self.non_blocking)

        def compute() -> dict[str, torch.Tensor]:
            with self._autocast():
                logits = self.inferer(image, self.network)
            return {"loss_seg": self.loss_weights["seg"] * self.seg_loss(logits.float(), label)}

        return self._optimise("seg", compute)
