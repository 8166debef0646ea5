"""GEMINI training engines (``monai.engines`` trainers), their handlers and
the bundle workflows (test evaluation, pair registration)."""

from .handlers import HistoryLogger, read_history
from .trainer import NetworkForward, PairStep, SegStep, Step, StepTrainer, cycle
from .workflows import PairRegistration, SegRegEvaluation

__all__ = [
    "Step",
    "StepTrainer",
    "NetworkForward",
    "PairStep",
    "SegStep",
    "cycle",
    "HistoryLogger",
    "read_history",
    "SegRegEvaluation",
    "PairRegistration",
]
