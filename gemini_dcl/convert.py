"""Convert the authors' GEMINI / GVSL weights into checkpoints of our networks.

Usage::

    python -m gemini_dcl.convert IN.pth OUT.pt --variant gemini3d|gemini2d|gvsl3d [--channels C x 9] ...

Our networks are layer for layer the authors', so tensors copy 1:1 (only
``module.`` prefixes are stripped and the authors' ``backbone.`` becomes
``unet.``); the widths are read from the tensor shapes unless given.

Output format (``torch.save``; loads with ``torch.load(..., weights_only=True)``)::

    {"state_dict": {...},                      # loads with strict=True
     "config": {"network": "GEMINI" | "GVSL", **constructor keyword arguments},
     "variant": "gemini3d" | "gemini2d" | "gvsl3d",
     "source": "IN.pth"}

:func:`network_from_checkpoint` rebuilds the network from it.

The converted config uses ``integration_steps=0``: the deformer output is a
plain displacement, as the authors trained it. Features, deformer output and
head outputs then equal the authors' network's; the warped images differ from
theirs only by the half-voxel defect of their warping (their sample index is
``p * N / (N - 1) - 0.5``; ours is exactly ``p + u``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Optional, Union

import torch
from torch import nn

from .networks import GEMINI, GVSL
from .pretrained import PathLike, extract_state_dict, read_checkpoint

__all__ = ["VARIANTS", "convert_checkpoint", "infer_config", "build_network", "network_from_checkpoint", "main"]

# variant -> (network class name, spatial dims)
VARIANTS = {"gemini3d": ("GEMINI", 3), "gemini2d": ("GEMINI", 2), "gvsl3d": ("GVSL", 3)}
_NETWORKS = {"GEMINI": GEMINI, "GVSL": GVSL}
# Tensors whose shapes give the widths, in channel order.
_CHANNEL_KEYS = (
    "unet.inc.double_conv.0.weight",
    *(f"unet.down{i}.maxpool_conv.1.double_conv.0.weight" for i in range(1, 5)),
    *(f"unet.up{i}.conv.double_conv.0.weight" for i in range(1, 5)),
)
_DEFORMER_KEYS = tuple(f"deformer.0.Conv{i}.one_conv.0.weight" for i in range(1, 6))
# Key prefixes that tell the networks apart, for error hints.
_SIGNATURES = (("deformer.", "GEMINI deformer.*"), ("f_conv.", "GVSL f_conv.*"))


def _check_variant(variant: str) -> tuple[str, int]:
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return VARIANTS[variant]


def _shape(state: Mapping[str, torch.Tensor], key: str, source: str, variant: str) -> torch.Size:
    if key not in state:
        held = [name for prefix, name in _SIGNATURES if any(k.startswith(prefix) for k in state)]
        hint = f" (it holds {' and '.join(held)} keys: another variant?)" if held else ""
        raise ValueError(f"{source}: key {key!r} is missing, cannot infer the widths of variant {variant!r}{hint}")
    return state[key].shape


def infer_config(state: Mapping[str, torch.Tensor], variant: str, source: str = "checkpoint") -> dict[str, Any]:
    """Constructor arguments of the network that ``state`` (normalised keys,
    see :func:`~gemini_dcl.pretrained.extract_state_dict`) belongs to, read
    from its tensor shapes; ``{"network": name, **kwargs}``."""
    name, spatial_dims = _check_variant(variant)
    first = _shape(state, _CHANNEL_KEYS[0], source, variant)
    if len(first) != spatial_dims + 2:
        raise ValueError(
            f"{source}: {_CHANNEL_KEYS[0]} has shape {list(first)}, a {len(first) - 2}D convolution, "
            f"but variant {variant!r} is {spatial_dims}D"
        )
    config: dict[str, Any] = {
        "network": name,
        "in_channels": first[1],
        "out_channels": _shape(state, "res_conv.3.weight", source, variant)[0],
        "channels": [_shape(state, k, source, variant)[0] for k in _CHANNEL_KEYS],
    }
    if name == "GEMINI":
        config["spatial_dims"] = spatial_dims
        config["deformer_channels"] = [_shape(state, k, source, variant)[0] for k in _DEFORMER_KEYS]
    else:
        config["affine_channels"] = _shape(state, "f_conv.double_conv.0.weight", source, variant)[0]
    return config


def build_network(config: Mapping[str, Any]) -> nn.Module:
    """The network of a converted checkpoint's ``config``: ``{"network": "GEMINI"|"GVSL", **kwargs}``."""
    kwargs = dict(config)
    name = kwargs.pop("network", None)
    if name not in _NETWORKS:
        raise ValueError(f"config['network'] must be one of {sorted(_NETWORKS)}, got {name!r}")
    return _NETWORKS[name](**kwargs)


def _validate(state: Mapping[str, torch.Tensor], config: Mapping[str, Any], source: str) -> None:
    """Raise ``ValueError`` naming every unknown, missing or misshapen tensor."""
    try:
        with torch.device("meta"):  # shapes only, nothing allocated
            expected = {k: v.shape for k, v in build_network(config).state_dict().items()}
    except ValueError as exc:
        raise ValueError(f"{source}: widths {dict(config)} do not make a valid network: {exc}") from exc
    problems = []
    unknown = sorted(set(state) - set(expected))
    missing = sorted(set(expected) - set(state))
    if unknown:
        problems.append(f"unknown keys {unknown}")
    if missing:
        problems.append(f"missing keys {missing}")
    problems += [
        f"{k} has shape {list(state[k].shape)}, expected {list(shape)}"
        for k, shape in expected.items()
        if k in state and state[k].shape != shape
    ]
    if problems:
        raise ValueError(f"{source} does not match {config['network']} {dict(config)}: " + "; ".join(problems))


def convert_checkpoint(
    source: Union[PathLike, Mapping[str, Any]],
    output: Optional[PathLike] = None,
    variant: str = "gemini3d",
    channels: Optional[Sequence[int]] = None,
    deformer_channels: Optional[Sequence[int]] = None,
    in_channels: Optional[int] = None,
    out_channels: Optional[int] = None,
    affine_channels: Optional[int] = None,
    integration_steps: int = 0,
) -> dict[str, Any]:
    """Convert the authors' weights (a ``.pth`` path, plain or legacy format,
    or a loaded state dict) into our checkpoint format (module docstring),
    written to ``output`` if given and returned.

    Widths not given are inferred from the tensors; given ones must agree with
    them. ``deformer_channels`` applies to GEMINI, ``affine_channels`` to GVSL.

    Raises:
        ValueError: unknown variant, unreadable file, unknown/missing keys or
            mismatched shapes (each named).
        FileNotFoundError: ``source`` does not exist.
    """
    name, _ = _check_variant(variant)
    if isinstance(source, Mapping):
        label, obj = "state dict", source
    else:
        label, obj = os.fspath(source), read_checkpoint(source)
    state = extract_state_dict(obj, label)
    config = infer_config(state, variant, label)
    given = {
        "channels": channels,
        "deformer_channels": deformer_channels if name == "GEMINI" else None,
        "affine_channels": affine_channels if name == "GVSL" else None,
        "in_channels": in_channels,
        "out_channels": out_channels,
    }
    for key, value in given.items():
        if value is not None:
            config[key] = list(value) if isinstance(value, Sequence) else value
    config["integration_steps"] = integration_steps
    _validate(state, config, label)
    checkpoint = {
        "state_dict": {k: v.detach().clone().contiguous() for k, v in state.items()},
        "config": config,
        "variant": variant,
        "source": label,
    }
    if output is not None:
        torch.save(checkpoint, output)
    return checkpoint


def network_from_checkpoint(checkpoint: Union[PathLike, Mapping[str, Any]]) -> nn.Module:
    """Build the network of a converted checkpoint (path or loaded dict) and
    load its weights with ``strict=True``."""
    if isinstance(checkpoint, Mapping):
        label, obj = "checkpoint", checkpoint
    else:
        label, obj = os.fspath(checkpoint), read_checkpoint(checkpoint)
    if not isinstance(obj.get("config"), Mapping):
        raise ValueError(f"{label} has no 'config' entry: not written by gemini_dcl.convert")
    network = build_network(obj["config"])
    network.load_state_dict(extract_state_dict(obj, label), strict=True)
    return network


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gemini_dcl.convert",
        description="Convert the authors' GEMINI/GVSL weights into a gemini_dcl checkpoint.",
    )
    parser.add_argument("input", help="the authors' .pth state dict (plain or legacy format)")
    parser.add_argument("output", help="where to write the converted checkpoint (.pt)")
    parser.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    parser.add_argument("--channels", type=int, nargs=9, metavar="C", help="backbone widths (default: inferred)")
    parser.add_argument("--deformer-channels", type=int, nargs=5, metavar="C", help="GEMINI deformer widths")
    parser.add_argument("--affine-channels", type=int, help="GVSL affine trunk width")
    parser.add_argument("--in-channels", type=int)
    parser.add_argument("--out-channels", type=int)
    parser.add_argument("--integration-steps", type=int, default=0, help="0 (default): the authors' plain displacement")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status (2 on bad input)."""
    args = _parser().parse_args(argv)
    try:
        checkpoint = convert_checkpoint(
            args.input,
            args.output,
            variant=args.variant,
            channels=args.channels,
            deformer_channels=args.deformer_channels,
            in_channels=args.in_channels,
            out_channels=args.out_channels,
            affine_channels=args.affine_channels,
            integration_steps=args.integration_steps,
        )
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}: {checkpoint['config']} ({len(checkpoint['state_dict'])} tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
