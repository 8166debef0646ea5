"""GEMINI training engines (``monai.engines`` trainers), their handlers and
the bundle workflows (test evaluation, pair registration)."""

from .handlers import HistoryLogger, read_history
from .trainer import DEFAULT_LOSS_WEIGHTS, GeminiPairTrainer, GeminiSemiTrainer, PairForward, cycle
from .workflows import PairRegistration, SegRegEvaluation

__all__ = [
    "DEFAULT_LOSS_WEIGHTS",
    "GeminiPairTrainer",
    "GeminiSemiTrainer",
    "PairForward",
    "cycle",
    "HistoryLogger",
    "read_history",
    "SegRegEvaluation",
    "PairRegistration",
]
