"""Atomic, resumable training checkpoints for ignite/MONAI engines.

A checkpoint holds the ``state_dict`` of every object in ``save_dict`` (model,
optimiser, scheduler, :class:`RNGState`, ...) and the engine's counters. It is
written to a hidden temporary file in the same folder and renamed over its
final name with ``os.replace``, so a process killed during a save (SIGKILL,
power loss) leaves the previous checkpoints intact and never a truncated file
under a checkpoint name. :class:`CheckpointHandler` resumes from the newest
readable checkpoint when the engine starts, so re-running the same command
after a kill continues the iteration count.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from monai.transforms import Randomizable

__all__ = ["atomic_save", "RNGState", "CheckpointHandler", "list_checkpoints", "load_checkpoint"]

logger = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<prefix>.+)_iter(?P<iteration>\d+)\.pt$")


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a temporary file in the same
    folder (same file system, so the rename is atomic), flushed to disk, then
    ``os.replace``. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _randomizables(transforms: Iterable[Any]) -> list[Randomizable]:
    """Every ``Randomizable`` inside ``transforms`` (Compose trees included)."""
    found: list[Randomizable] = []
    for t in transforms:
        if isinstance(t, Randomizable):
            found.append(t)
        found.extend(_randomizables(getattr(t, "transforms", ())))
    return found


class RNGState:
    """The random generators as a checkpointable object: torch (CPU and every
    CUDA device), numpy's global generator, Python's ``random``, and the
    ``RandomState`` of each MONAI ``Randomizable`` in ``transforms`` (data
    augmentation draws from those, not from the global generators)."""

    def __init__(self, transforms: Iterable[Any] = ()) -> None:
        self.transforms = _randomizables(transforms)

    def state_dict(self) -> dict[str, Any]:
        """The current states."""
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "transforms": [t.R.get_state() for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore states saved by :meth:`state_dict`; CUDA states are restored
        only when the device count matches, transforms only when their number does."""
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])
        if len(state["transforms"]) == len(self.transforms):
            for t, s in zip(self.transforms, state["transforms"]):
                t.R.set_state(s)
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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :class:`CheckpointHandler` (it holds numpy
    and Python RNG states, so it is not a weights-only file)."""
    return torch.load(path, map_location=map_location, weights_only=False)


def _unwrap(obj: Any) -> Any:
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


class CheckpointHandler:
    """Save and resume training state (an ignite handler: ``attach(engine)``).

    On ``STARTED``, if ``resume`` and ``ckpt_dir`` holds checkpoints, the newest
    readable one is loaded into every object of ``save_dict`` and the engine's
    iteration/epoch counters (and ``state_dict_user_keys``) are restored, so
    ignite continues the count mid-epoch if need be; ``max_epochs`` stays as
    configured, so a run can be extended. A checkpoint is written every
    ``save_interval`` iterations (0: never) and on ``COMPLETED``; only the
    newest ``n_saved`` are kept (older ones are deleted after the new one is
    in place). On ``COMPLETED`` the ``final_key`` object's weights alone are
    also written to ``final_path`` (the bundle's ``models/model.pt``).
    Under ``torch.distributed`` only rank 0 writes; every rank resumes.

    Args:
        ckpt_dir: folder of the checkpoints.
        save_dict: name -> object with ``state_dict``/``load_state_dict``.
        save_interval: iterations between checkpoints.
        n_saved: checkpoints kept.
        resume: load the newest checkpoint when the engine starts.
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
        self.ckpt_dir = Path(ckpt_dir)
        self.save_dict = dict(save_dict)
        self.save_interval = int(save_interval)
        self.n_saved = n_saved
        self.resume = resume
        self.final_path = None if final_path is None else Path(final_path)
        self.final_key = final_key
        self.prefix = prefix
        self._saved_iteration: int | None = None

    def attach(self, engine: Engine) -> None:
        """Register the handlers on ``engine``."""
        if self.resume:
            engine.add_event_handler(Events.STARTED, self.load_latest)
        if self.save_interval > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)
        if self.final_path is not None:
            engine.add_event_handler(Events.COMPLETED, self.save_final)

    @staticmethod
    def _is_writer() -> bool:
        return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0

    def save(self, engine: Engine) -> Path | None:
        """Write ``{prefix}_iter{N}.pt`` and prune old ones (rank 0 only)."""
        # The last interval save and the COMPLETED save can fall on one iteration.
        if not self._is_writer() or self._saved_iteration == engine.state.iteration:
            return None
        state = {name: _unwrap(obj).state_dict() for name, obj in self.save_dict.items()}
        state["engine"] = engine.state_dict()
        path = atomic_save(state, self.ckpt_dir / f"{self.prefix}_iter{engine.state.iteration:08d}.pt")
        for _, old in list_checkpoints(self.ckpt_dir, self.prefix)[: -self.n_saved]:
            old.unlink(missing_ok=True)
        self._saved_iteration = engine.state.iteration
        logger.info(f"saved checkpoint {path}")
        return path

    def save_final(self, engine: Engine) -> None:
        """Write the final weights of ``save_dict[final_key]`` to ``final_path``."""
        if self._is_writer() and self.final_path is not None:
            atomic_save(_unwrap(self.save_dict[self.final_key]).state_dict(), self.final_path)
            logger.info(f"saved final weights {self.final_path}")

    def load_latest(self, engine: Engine) -> Path | None:
        """Resume from the newest readable checkpoint; returns its path (None
        when there is none). An unreadable one is reported and the next older
        tried, so a damaged file cannot stop a restart."""
        for iteration, path in reversed(list_checkpoints(self.ckpt_dir, self.prefix)):
            try:
                state = load_checkpoint(path, map_location="cpu")
            except Exception as e:  # any unreadable file: fall back to an older one
                logger.warning(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); trying an older one")
                continue
            missing = [name for name in self.save_dict if name not in state]
            if missing:
                raise KeyError(f"checkpoint {path} has no {missing}; it has {sorted(state)}")
            for name, obj in self.save_dict.items():
                _unwrap(obj).load_state_dict(state[name])
            self._restore_engine(engine, state["engine"])
            logger.info(f"resumed from {path} at iteration {iteration}")
            return path
        return None

    @staticmethod
    def _restore_engine(engine: Engine, saved: Mapping[str, Any]) -> None:
        epoch_length = engine.state.epoch_length or saved.get("epoch_length")
        if saved.get("epoch_length") not in (None, epoch_length):
            raise ValueError(
                f"checkpoint was written with epoch_length={saved['epoch_length']}, this run has {epoch_length}; "
                "resuming would misplace the epoch boundaries"
            )
        engine.state.iteration = int(saved["iteration"])
        engine.state.epoch = engine.state.iteration // epoch_length
        for key in engine.state_dict_user_keys:
            if key in saved:
                setattr(engine.state, key, saved[key])
