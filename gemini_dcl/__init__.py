"""gemini_dcl: the GEMINI / GVSL method (networks, losses, transforms,
trainers, registration tools, figures, checkpoint converter, sample data)."""

from .pretrained import LoadReport, load_pretrained_backbone, read_weights

__version__ = "0.1.0"

__all__ = ["load_pretrained_backbone", "LoadReport", "read_weights"]
