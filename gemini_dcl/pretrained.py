"""Reading checkpoints (ours, MONAI/ignite's, the authors') and copying their
backbone weights into a network."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, NamedTuple, Union

import torch
from torch import nn

__all__ = [
    "LoadReport",
    "read_checkpoint",
    "extract_state_dict",
    "read_weights",
    "load_pretrained_backbone",
    "head_only_parameters",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
# Entries that wrap the state dict: ours / MONAI CheckpointSaver / common scripts.
_WRAPPER_KEYS = ("state_dict", "network", "model")
# Prefixes added by DistributedDataParallel / DataParallel and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# The authors' public GEMINI code names the backbone ``backbone``; GVSL and the
# released GEMINI weights use ``unet``.
_BACKBONE_ALIASES = ("backbone.",)
BACKBONE_PREFIX = "unet."


class LoadReport(NamedTuple):
    """What :func:`load_pretrained_backbone` did, as backbone key names
    (``unet.``-prefixed)."""

    loaded: list[str]
    """keys copied into the network."""
    missing: list[str]
    """backbone keys of the network the checkpoint lacks (left unchanged)."""
    unexpected: list[str]
    """backbone keys of the checkpoint the network lacks (ignored)."""
    skipped: list[str]
    """non-backbone keys of the checkpoint (deformer, heads; ignored)."""


def read_checkpoint(path: PathLike) -> Any:
    """``torch.load`` with ``weights_only=True`` on the CPU (zip and legacy
    formats). Raises ``FileNotFoundError`` or ``ValueError`` naming ``path``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {path} (corrupt, or not a PyTorch state dict): {exc}") from exc


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint with normalised names.

    ``obj``: a state dict, or a dict holding one under ``"state_dict"``,
    ``"network"`` or ``"model"`` (searched in that order, nested allowed).
    ``module.`` / ``_orig_mod.`` prefixes are stripped and the authors'
    ``backbone.`` prefix becomes ``unet.``. ``source`` names the checkpoint in
    errors. Raises ``ValueError`` for anything else.
    """
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{source} holds no state dict (got {type(obj).__name__})")
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{source}: entries that are not tensors: {not_tensors}")
    state: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        name = _normalise_key(str(key))
        if name in state:
            raise ValueError(f"{source}: key {key!r} clashes with another key after normalising to {name!r}")
        state[name] = value
    return state


def read_weights(path: PathLike) -> dict[str, torch.Tensor]:
    """The network weights stored in ``path`` (a plain state dict, a training
    checkpoint's ``model`` entry, a MONAI/DDP/authors' checkpoint), with
    normalised names: the project's one reader of weight files."""
    return extract_state_dict(read_checkpoint(path), os.fspath(path))


def _normalise_key(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    for alias in _BACKBONE_ALIASES:
        if key.startswith(alias):
            return BACKBONE_PREFIX + key[len(alias) :]
    return key


def _backbone_of(network: nn.Module) -> nn.Module:
    from .networks.blocks import UNetBase

    if isinstance(network, UNetBase):
        return network
    backbone = getattr(network, "unet", None)
    if not isinstance(backbone, UNetBase):
        raise TypeError(
            f"network must be a GEMINI, GVSL or UNetBase (a module with a UNetBase at .unet), got {type(network).__name__}"
        )
    return backbone


def load_pretrained_backbone(
    path_or_state_dict: Union[PathLike, Mapping[str, Any]], network: nn.Module, strict: bool = False
) -> LoadReport:
    """Copy the backbone (``unet.*``) weights of a checkpoint into ``network``.

    Args:
        path_or_state_dict: a checkpoint file or an already loaded object: a
            state dict of any of our networks, a MONAI/ignite checkpoint dict
            (``"network"``/``"model"``/``"state_dict"`` entry), a DDP
            (``module.``) state dict, the authors' ``.pth`` files, or a bare
            backbone state dict.
        network: a :class:`~gemini_dcl.networks.GEMINI`, :class:`~gemini_dcl.networks.GVSL`
            or a bare backbone; only its backbone changes.
        strict: raise ``ValueError`` if any backbone key is missing or unexpected.

    Returns:
        :class:`LoadReport` (also logged at INFO level).

    Raises:
        FileNotFoundError / ValueError naming the file if it is missing or unreadable;
        ValueError if no backbone weights match or a shape differs (naming the keys).
    """
    if isinstance(path_or_state_dict, Mapping):
        source, obj = "state dict", path_or_state_dict
    else:
        source, obj = os.fspath(path_or_state_dict), read_checkpoint(path_or_state_dict)
    state = extract_state_dict(obj, source)
    if not any(k.startswith(BACKBONE_PREFIX) for k in state):
        # A bare backbone state dict (e.g. saved from network.unet).
        state = {BACKBONE_PREFIX + k: v for k, v in state.items()}
    backbone = _backbone_of(network)
    target = {BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}
    offered = {k: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
    skipped = sorted(set(state) - set(offered))
    loaded = [k for k in target if k in offered]
    mismatched = [
        f"{k}: checkpoint {list(offered[k].shape)} vs network {list(target[k].shape)}"
        for k in loaded
        if offered[k].shape != target[k].shape
    ]
    if mismatched:
        raise ValueError(f"{source}: backbone shapes differ from the network's: " + "; ".join(mismatched))
    report = LoadReport(
        loaded=loaded,
        missing=[k for k in target if k not in offered],
        unexpected=sorted(set(offered) - set(target)),
        skipped=skipped,
    )
    if not loaded:
        raise ValueError(f"{source}: no backbone weights match the network (checkpoint keys: {sorted(state)[:10]}...)")
    if strict and (report.missing or report.unexpected):
        raise ValueError(f"{source}: missing backbone keys {report.missing}, unexpected {report.unexpected}")
    backbone.load_state_dict({k[len(BACKBONE_PREFIX) :]: offered[k] for k in loaded}, strict=False)
    logger.info(
        "%s: loaded %d backbone tensors, %d missing, %d unexpected, %d non-backbone skipped",
        source,
        len(report.loaded),
        len(report.missing),
        len(report.unexpected),
        len(report.skipped),
    )
    return report


def head_only_parameters(network: nn.Module) -> list[nn.Parameter]:
    """Linear probe: freeze every parameter of a GEMINI network except its
    head's (``res_conv``) and return the head's parameters (for the optimiser)."""
    head = getattr(network, "res_conv", None)
    if not isinstance(head, nn.Module):
        raise TypeError(f"network must be a GEMINI network with a res_conv head, got {type(network).__name__}")
    network.requires_grad_(False)
    head.requires_grad_(True)
    return list(head.parameters())
