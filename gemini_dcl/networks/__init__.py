"""GEMINI and GVSL networks (layer for layer the authors', with their
``state_dict`` keys)."""

from .gemini import GEMINI
from .gvsl import GVSL, affine_matrix, affine_to_ddf

__all__ = ["GEMINI", "GVSL", "affine_matrix", "affine_to_ddf"]
