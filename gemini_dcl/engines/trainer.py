"""One ``monai.engines`` trainer for every GEMINI/GVSL bundle, composed of steps.

:class:`StepTrainer` runs, per iteration, a list of steps on the iteration's
batch; each step is a callable ``(engine, batch) -> {name: weighted loss
term}`` and gets its own optimiser step (zero the gradients, forward, sum the
terms, backward, step). The trainer owns what is common to all of them: AMP,
the non-finite guard (no update from a non-finite loss or gradient, counted in
``state.skipped_steps``, ranks agree under DDP), ``DistributedDataParallel``
wrapping, and MONAI's iteration events (``FORWARD_COMPLETED``,
``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` per step, ``MODEL_COMPLETED`` per
iteration). Each network owns its training forward (``GEMINI.pair_forward``,
``GVSL.training_forward``, and ``forward`` for one image); steps reach it
through :meth:`StepTrainer.forward`, so under DDP it runs inside the wrapped
module's ``forward`` as DDP requires.

Steps here: :class:`PairStep` (GEMINI's deformable homeomorphism learning
and GSS on an unlabelled pair) and :class:`SegStep` (the labelled
segmentation step of GEMINI-Semi); :mod:`gemini_dcl.engines.mip` adds the
restoration step of GEMINI-MIP and GVSL's step. GEMINI-Semi is
``[PairStep(), SegStep(...)]``, GEMINI-MIP ``[PairStep(), RestoreStep()]``,
GVSL ``[GVSLStep()]``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

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

__all__ = ["Step", "StepTrainer", "NetworkForward", "PairStep", "SegStep", "cycle", "to_device"]

logger = logging.getLogger(__name__)

AMP_MODES = ("none", "bf16", "fp16")


class Step(Protocol):
    """One optimiser step of an iteration."""

    name: str
    """names the step in warnings."""
    loss_weights: Mapping[str, float]
    """the weight keys it reads from ``engine.loss_weights`` and their defaults."""

    def __call__(self, engine: StepTrainer, batch: Any) -> dict[str, torch.Tensor]:
        """The weighted loss terms (keys starting with ``loss_``)."""


class NetworkForward(nn.Module):
    """Runs any method of ``network`` through this module's ``forward``
    (``forward(*args, method="forward")``): ``DistributedDataParallel`` only
    synchronises the gradients of what ran through its wrapped ``forward``,
    and the training forwards are other methods of the networks."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, *args: Any, method: str = "forward") -> Any:
        """``network.<method>(*args)``."""
        return getattr(self.network, method)(*args)


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


def to_device(batch: Mapping, keys: Sequence[str], device: torch.device, non_blocking: bool) -> list[torch.Tensor]:
    """``batch[k]`` for each key as a tensor on ``device``; a missing key is named."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"batch has no {missing}; it has {sorted(batch)}")
    return [torch.as_tensor(batch[k]).to(device, non_blocking=non_blocking) for k in keys]


class StepTrainer(Trainer):
    """Runs ``steps`` in order on each batch, each with its own optimiser step.

    A step whose loss (or gradient) is not finite makes no optimiser update:
    ``engine.state.skipped_steps`` counts it (saved in checkpoints through
    ``state_dict_user_keys``) and a warning names the step and iteration.
    The iteration's output holds every step's terms as floats, their sum as
    ``loss`` and the running ``skipped_steps``.

    Args:
        device: where to train.
        max_epochs: epochs to run.
        train_data_loader: the batches given to every step; None when no step
            reads it (e.g. supervised only: then ``epoch_length`` is required
            and each step draws its own data).
        network: the bare network; the trainer wraps it in :class:`NetworkForward`
            and, when ``torch.distributed`` is initialised, in ``DistributedDataParallel``.
        optimizer: used by every step (one optimiser, as in the authors' code).
        steps: the steps (see :class:`Step`).
        epoch_length: iterations per epoch (default ``len(train_data_loader)``).
        loss_weights: overrides of the steps' weights (keys: the union of the
            steps' ``loss_weights``); an unknown key is an error.
        inferer: the single-image forward of the steps, ``inferer(image, network)``
            (default ``SimpleInferer``).
        amp: ``"none"``/False, ``"bf16"`` (autocast to bfloat16, CPU or GPU),
            ``"fp16"`` (CUDA only, with a GradScaler); True means fp16 on CUDA
            and bf16 elsewhere. Losses are computed in float32.
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
        steps: Sequence[Step],
        epoch_length: int | None = None,
        loss_weights: Mapping[str, float] | None = None,
        inferer: Inferer | None = None,
        amp: bool | str = False,
        non_blocking: bool = False,
        train_handlers: Sequence | None = None,
        key_train_metric: dict | None = None,
        additional_metrics: dict | None = None,
    ) -> None:
        if not steps:
            raise ValueError("steps must hold at least one step")
        if train_data_loader is None and epoch_length is None:
            raise ValueError("epoch_length is required when there is no train_data_loader")
        device = torch.device(device)
        self.amp_mode = self._amp_mode(amp, device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,  # None: ignite runs epoch_length iterations with batch None
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
        self.steps = list(steps)
        self.loss_weights = self._weights(self.steps, loss_weights)
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.state.skipped_steps = 0
        self.state_dict_user_keys.append("skipped_steps")

    @staticmethod
    def _weights(steps: Sequence[Step], given: Mapping[str, float] | None) -> dict[str, float]:
        defaults: dict[str, float] = {}
        for step in steps:
            defaults.update(step.loss_weights)
        unknown = set(given or {}) - set(defaults)
        if unknown:
            raise ValueError(f"unknown loss_weights keys {sorted(unknown)}; known: {sorted(defaults)}")
        return {**defaults, **{k: float(v) for k, v in (given or {}).items()}}

    @staticmethod
    def _training_module(network: nn.Module, device: torch.device) -> nn.Module:
        if isinstance(network, (DistributedDataParallel, NetworkForward)):
            raise TypeError(
                "pass the bare network: the trainer wraps it in NetworkForward and, under "
                f"torch.distributed, in DistributedDataParallel (got {type(network).__name__})"
            )
        module = NetworkForward(network)
        if dist.is_available() and dist.is_initialized():
            # each step leaves part of the network unused
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

    def autocast(self) -> contextlib.AbstractContextManager:
        """The step's autocast context for ``amp``."""
        if self.amp_mode == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp_mode == "bf16" else torch.float16
        return torch.autocast(self.state.device.type, dtype=dtype)

    def forward(self, method: str, *args: torch.Tensor) -> Any:
        """``network.<method>(*args)`` under autocast, through the (DDP-)wrapped module."""
        with self.autocast():
            return self.network(*args, method=method)

    def infer(self, image: torch.Tensor) -> torch.Tensor:
        """The network's prediction for ``image`` through ``inferer``, under autocast, as float32."""
        with self.autocast():
            return self.inferer(image, self.network).float()

    def batch(self, batch: Mapping, keys: Sequence[str]) -> list[torch.Tensor]:
        """``batch[k]`` for each key, on the trainer's device."""
        return to_device(batch, keys, self.state.device, self.non_blocking)

    def _iteration(self, engine: StepTrainer, batchdata: Any) -> dict:
        engine.network.train()
        output: dict[str, float] = {}
        for step in engine.steps:
            output.update(engine._optimise(step, batchdata))
        output[Keys.LOSS] = sum(v for k, v in output.items() if k.startswith("loss_"))
        output["skipped_steps"] = engine.state.skipped_steps
        engine.state.output = output
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return output

    def _all_finite(self, value: torch.Tensor) -> bool:
        finite = torch.isfinite(value.detach()).all().to(torch.float32)
        if dist.is_available() and dist.is_initialized():
            # Every rank must take the same branch, or DDP's all-reduce in
            # backward waits forever on the rank that skipped.
            finite = finite.to(self.state.device)
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite.item() > 0)

    def _skip(self, step: Step, what: str) -> None:
        self.state.skipped_steps += 1
        self.logger.warning(
            f"iteration {self.state.iteration}: {step.name} {what}; "
            f"optimiser step skipped ({self.state.skipped_steps} skipped so far)"
        )

    def _optimise(self, step: Step, batch: Any) -> dict[str, float]:
        """Zero the gradients, run ``step``, step the optimiser unless its loss
        or gradients are not finite. Returns the terms as floats (NaN ones
        included, so logs show what went wrong)."""
        self.optimizer.zero_grad(set_to_none=True)
        terms = step(self, batch)
        self.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = sum(terms.values())
        self.fire_event(IterationEvents.LOSS_COMPLETED)
        values = {name: float(t.detach()) for name, t in terms.items()}
        if not self._all_finite(loss):
            self._skip(step, f"loss is not finite ({values})")
            return values
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.fire_event(IterationEvents.BACKWARD_COMPLETED)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return values
        loss.backward()
        self.fire_event(IterationEvents.BACKWARD_COMPLETED)
        # a finite loss can still give non-finite gradients (reduced
        # precision); one such step would leave NaN in every weight
        grads = [p.grad for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and not self._all_finite(torch.stack([g.detach().float().abs().sum() for g in grads])):
            self._skip(step, "gradients are not finite")
            return values
        self.optimizer.step()
        return values


class PairStep:
    """GEMINI's step on an unlabelled pair (A, B) (batch keys ``pair_keys``):
    ``GEMINI.pair_forward`` gives features fA, fB and displacements u_AB,
    u_BA (velocity integrated by the network); masks of valid sample points;
    terms ``smooth`` x (smoothness(u_AB) + smoothness(u_BA)), ``gvs`` x
    (GVS(A∘u_AB, B) + GVS(B∘u_BA, A)), ``gss`` x (GSS pair AB + BA).

    Args:
        gvs_window: side of the local NCC box.
        gss_feature_weight, gss_flow_weight: the GSS pair's inner weights.
        pair_keys: batch keys of A and B.
    """

    name = "pair"
    # the authors' weights (GEMINI_FS_Semi, GEMINI_SS_MIP)
    loss_weights: Mapping[str, float] = {"smooth": 0.4, "gvs": 1.0, "gss": 0.8}

    def __init__(
        self,
        gvs_window: int = 9,
        gss_feature_weight: float = 0.1,
        gss_flow_weight: float = 1.0,
        pair_keys: Sequence[str] = ("image_a", "image_b"),
    ) -> None:
        from gemini_dcl.losses import gvs_loss, smoothness_loss

        self.gvs_window = gvs_window
        self.pair_keys = tuple(pair_keys)
        self.smoothness, self.gvs = smoothness_loss, gvs_loss
        self.gss = gemini_ops.GSSLoss(gss_feature_weight, gss_flow_weight)

    def __call__(self, engine: StepTrainer, batch: Mapping) -> dict[str, torch.Tensor]:
        """See the class docstring."""
        image_a, image_b = engine.batch(batch, self.pair_keys)
        out = engine.forward("pair_forward", image_a, image_b)
        if out["ddf_ab"] is None:
            nan = out["feat_a"].new_tensor(float("nan"))
            return {"loss_smooth": nan, "loss_gvs": nan, "loss_gss": nan}
        w = engine.loss_weights
        smooth = gvs = gss = 0.0
        for moving, fixed, f_moving, f_fixed, ddf in (
            (image_a, image_b, out["feat_a"], out["feat_b"], out["ddf_ab"]),
            (image_b, image_a, out["feat_b"], out["feat_a"], out["ddf_ba"]),
        ):
            moving, fixed = moving.float(), fixed.float()
            # Voxels whose sample point falls outside the moving image carry no
            # information; the mask is a constant of the step (the authors detach it).
            mask = gemini_ops.warp(torch.ones_like(moving[:, :1]), ddf.detach(), "nearest")
            smooth = smooth + self.smoothness(ddf)
            gvs = gvs + self.gvs(gemini_ops.warp(moving, ddf), fixed, mask, window=self.gvs_window)
            # GSS's own mask is this one (the sample point's nearest voxel is
            # inside), and without one given the op sums the masked mean itself
            gss = gss + self.gss(f_moving, f_fixed, ddf)
        return {"loss_smooth": w["smooth"] * smooth, "loss_gvs": w["gvs"] * gvs, "loss_gss": w["gss"] * gss}


class SegStep:
    """GEMINI-Semi's labelled step: ``seg`` x ``loss(network(image), label)``
    (label: class indices, (B, 1, *S)) on a batch of its own labelled stream,
    which it cycles forever, so a handful of labelled cases serve any number
    of iterations.

    Args:
        data_loader: batches with ``image_key`` and ``label_key``.
        loss: e.g. ``gemini_dcl.losses.SegLoss`` (CE + Dice), or
            ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)``.
        image_key, label_key: batch keys.
    """

    name = "seg"
    loss_weights: Mapping[str, float] = {"seg": 100.0}

    def __init__(
        self,
        data_loader: Iterable,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.data_loader = data_loader
        self._batches = cycle(data_loader)
        self.loss = loss
        self.image_key, self.label_key = image_key, label_key

    def __call__(self, engine: StepTrainer, batch: Any) -> dict[str, torch.Tensor]:
        """See the class docstring (``batch``, the trainer's, is not used)."""
        image, label = engine.batch(next(self._batches), (self.image_key, self.label_key))
        return {"loss_seg": engine.loss_weights["seg"] * self.loss(engine.infer(image), label)}
