"""Resumable training checkpoints for ignite/MONAI engines, built on ignite's
``Checkpoint`` + ``DiskSaver`` (atomic writes, rank 0 only) and MONAI's
``CheckpointLoader``.

A checkpoint ``checkpoint_iterNNNNNNNN.pt`` holds the ``state_dict`` of every
object of ``save_dict`` (model, optimiser, scheduler, :class:`RNGState`, ...),
of the trainer (iteration, epoch length, skipped steps) and of the ignite
``Checkpoint`` itself (which files it keeps). Everything in it is a tensor or a
plain Python value, so it reads with ``torch.load(weights_only=True)``, as
MONAI's ``CheckpointLoader`` does. Re-running the command of a killed run
resumes from the newest readable checkpoint; a damaged newest file is skipped
with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader
from monai.transforms import Randomizable

from gemini_dcl.pretrained import read_checkpoint

__all__ = ["RNGState", "CheckpointHandler", "list_checkpoints", "latest_checkpoint", "save_weights"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<prefix>.+)_iter(?P<iteration>\d+)\.pt$")


def _randomizables(transforms: Iterable[Any]) -> list[Randomizable]:
    """Every ``Randomizable`` inside ``transforms`` (Compose trees included)."""
    found: list[Randomizable] = []
    for t in transforms:
        if isinstance(t, Randomizable):
            found.append(t)
        found.extend(_randomizables(getattr(t, "transforms", ())))
    return found


def _numpy_state_to_plain(state: tuple) -> tuple:
    # numpy's key array as a tensor: weights-only loading refuses numpy arrays
    name, keys, pos, has_gauss, cached = state
    return name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from_plain(state: tuple) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, cached


class RNGState:
    """The random generators as a checkpointable object: torch (CPU and every
    CUDA device), numpy's global generator, Python's ``random``, and the
    ``RandomState`` of each MONAI ``Randomizable`` in ``transforms`` (data
    augmentation draws from those, not from the global generators). ignite and
    MONAI checkpoint only objects with a ``state_dict``; no such object exists
    for the generators, hence this one. Its state holds only tensors and plain
    values, so checkpoints stay weights-only loadable."""

    def __init__(self, transforms: Iterable[Any] = ()) -> None:
        self.transforms = _randomizables(transforms)

    def state_dict(self) -> dict[str, Any]:
        """The current states."""
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state_to_plain(np.random.get_state()),
            "python": random.getstate(),
            "transforms": [_numpy_state_to_plain(t.R.get_state()) for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore states saved by :meth:`state_dict`; CUDA states are restored
        only when the device count matches, transforms only when their number does."""
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))
        python = state["python"]
        random.setstate((python[0], tuple(python[1]), python[2]))
        if len(state["transforms"]) == len(self.transforms):
            for t, s in zip(self.transforms, state["transforms"]):
                t.R.set_state(_numpy_state_from_plain(s))
        else:
            logger.warning(
                f"checkpoint has {len(state['transforms'])} transform random states, the pipeline "
                f"{len(self.transforms)}: augmentation restarts from the current states"
            )


def list_checkpoints(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> list[tuple[int, Path]]:
    """(iteration, path) of the checkpoints ``{prefix}_iter{N}.pt`` in
    ``ckpt_dir``, oldest first. Temporary files of interrupted saves are not listed."""
    found = []
    for p in Path(ckpt_dir).glob(f"{prefix}_iter*.pt"):
        m = _NAME.match(p.name)
        if m and m["prefix"] == prefix:
            found.append((int(m["iteration"]), p))
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> Path | None:
    """The newest checkpoint of ``ckpt_dir`` that reads as a weights-only
    file, or None. An unreadable one (a partial copy, a full disk) is reported
    and the next older tried, so a damaged file cannot stop a restart."""
    for _, path in reversed(list_checkpoints(ckpt_dir, prefix)):
        try:
            read_checkpoint(path)
        except ValueError as e:
            logger.warning(f"{e}; trying an older checkpoint")
            continue
        return path
    return None


class _DiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` that tolerates deleting a file already gone: a
    run killed between ignite's removal of its oldest checkpoint and the next
    save resumes with that file still listed in the restored ``Checkpoint``."""

    def remove(self, filename: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            super().remove(filename)


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a plain ``state_dict`` to ``path`` atomically (ignite's
    ``DiskSaver``: a temporary file in the same folder, then ``os.replace``;
    rank 0 only under ``torch.distributed``)."""
    path = Path(path)
    _DiskSaver(path.parent, create_dir=True, require_empty=False)(dict(state_dict), path.name)
    return path


class CheckpointHandler:
    """Save and resume the full training state (an ignite handler:
    ``attach(engine)``).

    It composes ignite's ``Checkpoint`` (every ``save_interval`` iterations and
    on ``COMPLETED``, keeping the newest ``n_saved``, through an atomic
    ``DiskSaver``) with MONAI's ``CheckpointLoader`` (on ``STARTED``, from
    :func:`latest_checkpoint`, when ``resume``). Neither can be configured
    alone for this: the trainer must be in the saved objects, and a config
    naming the trainer inside its own handler list would be circular, so the
    engine is added here at ``attach``; and ``CheckpointLoader`` needs the path
    of the newest *readable* file, which is only known at start. The
    iteration count continues mid-epoch; ``max_epochs`` stays as configured,
    so a finished run can be extended. On ``COMPLETED`` the ``final_key``
    object's plain ``state_dict`` also goes to ``final_path`` (the run's
    ``model.pt``).

    Args:
        ckpt_dir: folder of the checkpoints.
        save_dict: name -> object with ``state_dict``/``load_state_dict``.
        save_interval: iterations between checkpoints (0: only at the end).
        n_saved: checkpoints kept.
        resume: load the newest readable checkpoint when the engine starts.
        final_path: where to write the final weights (None: not written).
        final_key: which ``save_dict`` entry ``final_path`` gets.
        prefix: checkpoint file-name prefix.
    """

    def __init__(
        self,
        ckpt_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        save_interval: int = 0,
        n_saved: int = 2,
        resume: bool = True,
        final_path: str | os.PathLike | None = None,
        final_key: str = "model",
        prefix: str = "checkpoint",
    ) -> None:
        if n_saved < 1:
            raise ValueError(f"n_saved must be >= 1, got {n_saved}")
        if final_path is not None and final_key not in save_dict:
            raise KeyError(f"final_key {final_key!r} is not in save_dict {sorted(save_dict)}")
        for reserved in ("trainer", "checkpointer"):
            if reserved in save_dict:
                raise KeyError(f"save_dict must not use the name {reserved!r}: the handler adds it")
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.n_saved = n_saved
        self.resume = resume
        self.final_path = None if final_path is None else Path(final_path)
        self.final_key = final_key
        self.prefix = prefix
        self.checkpoint: Checkpoint | None = None

    def attach(self, engine: Engine) -> None:
        """Register saving, resuming and the final weights on ``engine``."""
        to_save = {**self.save_dict, "trainer": engine}
        self.checkpoint = Checkpoint(
            to_save,
            _DiskSaver(self.ckpt_dir, create_dir=True, require_empty=False),
            filename_pattern=self.prefix + "_iter{global_step:08d}.{ext}",
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.iteration,
            include_self=True,
        )
        if self.resume:
            path = latest_checkpoint(self.ckpt_dir, self.prefix)
            if path is not None:
                saved = read_checkpoint(path)["trainer"].get("epoch_length")
                if None not in (saved, engine.state.epoch_length) and saved != engine.state.epoch_length:
                    raise ValueError(
                        f"checkpoint {path} was written with epoch_length={saved}, this run has "
                        f"{engine.state.epoch_length}; resuming would misplace the epoch boundaries"
                    )
                logger.info(f"resuming from {path}")
                to_load = {**to_save, "checkpointer": self.checkpoint}
                CheckpointLoader(load_path=str(path), load_dict=to_load, map_location="cpu").attach(engine)
        if self.save_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.checkpoint)
        engine.add_event_handler(Events.COMPLETED, self._save_last)
        if self.final_path is not None:
            engine.add_event_handler(Events.COMPLETED, self.save_final)

    def _save_last(self, engine: Engine) -> None:
        # the last interval save may already hold this iteration
        last = self.checkpoint.last_checkpoint
        if last is None or Path(last).name != f"{self.prefix}_iter{engine.state.iteration:08d}.pt":
            self.checkpoint(engine)

    def save_final(self, engine: Engine) -> None:
        """Write the final weights of ``save_dict[final_key]`` to ``final_path``."""
        obj = self.save_dict[self.final_key]
        if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
            obj = obj.module
        logger.info(f"saving final weights {save_weights(obj.state_dict(), self.final_path)}")
