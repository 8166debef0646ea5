"""Ignite handlers of the GEMINI bundles."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from numbers import Number
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

__all__ = ["HistoryLogger", "read_history"]


def _scalars(values: Any) -> dict[str, float]:
    if not isinstance(values, Mapping):
        return {}
    out = {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, Number) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


class HistoryLogger:
    """Append the training history to a JSON-lines file (one object per line:
    ``kind`` ``"train"`` with the iteration's scalar outputs, or ``"val"``
    with the evaluator's metrics after each validation). Appending keeps the
    history of a resumed run in one file; the figures read it with
    :func:`read_history`. Only rank 0 writes.

    Args:
        path: the ``.jsonl`` file.
        evaluator: the validation engine whose ``state.metrics`` are logged
            each time it completes, at the trainer's iteration.
        interval: log every ``interval`` iterations.
    """

    def __init__(self, path: str | os.PathLike, evaluator: Engine | None = None, interval: int = 1) -> None:
        self.path = Path(path)
        self.evaluator = evaluator
        self.interval = interval
        self._trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        """Register on ``engine`` (the trainer) and on the evaluator."""
        self._trainer = engine
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.log_train)
        if self.evaluator is not None:
            self.evaluator.add_event_handler(Events.COMPLETED, self.log_val)

    def _write(self, record: dict) -> None:
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(
                json.dumps(
                    {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
                )
                + "\n"
            )

    def log_train(self, engine: Engine) -> None:
        """Log the trainer's scalar outputs."""
        self._write(
            {"kind": "train", "iteration": engine.state.iteration, "epoch": engine.state.epoch}
            | _scalars(engine.state.output)
        )

    def log_val(self, evaluator: Engine) -> None:
        """Log the evaluator's metrics at the trainer's current iteration."""
        metrics = _scalars(evaluator.state.metrics)
        if metrics:
            state = self._trainer.state
            self._write({"kind": "val", "iteration": state.iteration, "epoch": state.epoch} | metrics)


def read_history(path: str | os.PathLike) -> dict[str, list[dict]]:
    """The records of a :class:`HistoryLogger` file split by kind; a resumed
    run's repeated iterations keep their last record."""
    kinds: dict[str, dict[int, dict]] = {"train": {}, "val": {}}
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            kinds.setdefault(record["kind"], {})[record["iteration"]] = record
    return {kind: [rows[i] for i in sorted(rows)] for kind, rows in kinds.items()}
