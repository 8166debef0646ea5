"""Building blocks shared by :class:`GEMINI` and :class:`GVSL`.

Module and attribute names follow the authors' code so that ``state_dict``
keys match their released weights (``inc.double_conv.0.weight``,
``down1.maxpool_conv.1.double_conv.0.weight``, ``Conv1.one_conv.0.weight``...).
Every GroupNorm has ``out_channels // 8`` groups (the authors' rule), so
every width must be at least 8 and divisible by ``width // 8``; multiples of
8 always work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "conv_type",
    "check_spatial_dims",
    "check_widths",
    "check_input",
    "pad_to_multiple",
    "crop",
    "kaiming_init",
    "DoubleConv",
    "OneConv",
    "Down",
    "Up",
    "UNetBase",
    "UNetShallow",
    "head",
]

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_POOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
# The authors' 3D code upsamples with align_corners=True, their 2D code with the
# default False; keeping both reproduces their networks exactly.
_UPSAMPLE = {2: ("bilinear", False), 3: ("trilinear", True)}


def conv_type(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return _CONV[check_spatial_dims(spatial_dims)]


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise ``ValueError``."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def check_widths(name: str, widths: Sequence[int], length: int) -> tuple[int, ...]:
    """Validate a tuple of ``length`` layer widths usable with GroupNorm(width // 8)."""
    widths = tuple(widths)
    if len(widths) != length:
        raise ValueError(f"{name} must hold {length} widths, got {len(widths)}: {widths}")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, int) or w < 8 or w % (w // 8) != 0:
            raise ValueError(
                f"{name}: every width must be an int >= 8 divisible by width // 8 (GroupNorm groups), "
                f"e.g. a multiple of 8; got {w!r} in {widths}"
            )
    return widths


def check_input(name: str, x: torch.Tensor, spatial_dims: int, channels: int) -> None:
    """Raise ``ValueError`` unless ``x`` is (B, channels, *S) with ``spatial_dims`` axes."""
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"{name} must have shape (B, C, {'D, H, W' if spatial_dims == 3 else 'H, W'}) for spatial_dims="
            f"{spatial_dims}, got {x.dim()} dims {list(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {x.shape[1]} (shape {list(x.shape)})")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[int]]:
    """Zero-pad every spatial axis of ``x`` (B, C, *S) up to a multiple of
    ``multiple``, split evenly (the extra voxel of an odd pad goes to the end,
    as in the authors' code). Returns the padded tensor and the start offset
    per spatial axis for :func:`crop`."""
    starts: list[int] = []
    pads: list[int] = []
    for n in x.shape[2:]:
        diff = (multiple - n % multiple) % multiple
        starts.append(diff // 2)
        # F.pad lists the last axis first.
        pads = [diff // 2, diff - diff // 2] + pads
    return F.pad(x, pads), starts


def crop(x: torch.Tensor, starts: list[int], sizes: list[int]) -> torch.Tensor:
    """Undo :func:`pad_to_multiple`: ``sizes[i]`` voxels from ``starts[i]`` on spatial axis ``i``."""
    for i in range(len(starts)):
        x = x.narrow(2 + i, starts[i], sizes[i])
    return x


def kaiming_init(module: nn.Module) -> None:
    """Kaiming-normal weights for every convolution in ``module`` (biases keep
    PyTorch's default); GroupNorm weight 1 and bias 0 (the authors' init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight)
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _conv_gn_act(spatial_dims: int, in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        conv_type(spatial_dims)(in_channels, out_channels, kernel_size=3, padding=1),
        nn.GroupNorm(out_channels // 8, out_channels),
        nn.LeakyReLU(0.2),
    ]


class DoubleConv(nn.Module):
    """[Conv k3 p1, GroupNorm(out // 8), LeakyReLU(0.2)] x 2: (B, in, *S) -> (B, out, *S)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            *_conv_gn_act(spatial_dims, in_channels, out_channels),
            *_conv_gn_act(spatial_dims, out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class OneConv(nn.Module):
    """Conv k3 p1, GroupNorm(out // 8), LeakyReLU(0.2): (B, in, *S) -> (B, out, *S)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.one_conv = nn.Sequential(*_conv_gn_act(spatial_dims, in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.one_conv(x)


class Down(nn.Module):
    """Max-pool 2 then :class:`DoubleConv`: (B, in, *S) -> (B, out, *S/2)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(_POOL[spatial_dims](2), DoubleConv(spatial_dims, in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


def _upsample(spatial_dims: int) -> nn.Upsample:
    mode, align_corners = _UPSAMPLE[spatial_dims]
    return nn.Upsample(scale_factor=2, mode=mode, align_corners=align_corners)


class Up(nn.Module):
    """Upsample ``x`` x2, concatenate **[skip, upsampled]**, :class:`DoubleConv`.
    ``in_channels`` counts both: (B, c_x, *S/2), (B, c_skip, *S) -> (B, out, *S)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = _upsample(spatial_dims)
        self.conv = DoubleConv(spatial_dims, in_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetBase(nn.Module):
    """The authors' ``UNet_base`` backbone: 4 down and 4 up levels.

    Input (B, in_channels, *S) of any size: zero-padded to a multiple of 16
    (split evenly), cropped back at the end. Returns ``(bottleneck, features)``:
    (B, channels[4], *P/16) with P the padded size, and (B, channels[8], *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        c = check_widths("channels", channels, 9)
        self.inc = DoubleConv(spatial_dims, in_channels, c[0])
        self.down1 = Down(spatial_dims, c[0], c[1])
        self.down2 = Down(spatial_dims, c[1], c[2])
        self.down3 = Down(spatial_dims, c[2], c[3])
        self.down4 = Down(spatial_dims, c[3], c[4])
        self.up1 = Up(spatial_dims, c[4] + c[3], c[5])
        self.up2 = Up(spatial_dims, c[5] + c[2], c[6])
        self.up3 = Up(spatial_dims, c[6] + c[1], c[7])
        self.up4 = Up(spatial_dims, c[7] + c[0], c[8])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sizes = list(x.shape[2:])
        x, starts = pad_to_multiple(x, 16)
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return x5, crop(x, starts, sizes)


class UNetShallow(nn.Module):
    """The authors' ``UNet_shallow`` (GEMINI's deformer trunk): single conv
    blocks ``Conv1..Conv5``, two max-pool levels, up path concatenating
    **[upsampled, skip]**. Pads to a multiple of 4 and crops back:
    (B, in_channels, *S) -> (B, channels[4], *S).
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int]) -> None:
        super().__init__()
        c = check_widths("deformer_channels", channels, 5)
        self.Conv1 = OneConv(spatial_dims, in_channels, c[0])
        self.Conv2 = OneConv(spatial_dims, c[0], c[1])
        self.Conv3 = OneConv(spatial_dims, c[1], c[2])
        self.Conv4 = OneConv(spatial_dims, c[2] + c[1], c[3])
        self.Conv5 = OneConv(spatial_dims, c[3] + c[0], c[4])
        self.max_pool = _POOL[spatial_dims](2)
        self.up = _upsample(spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = list(x.shape[2:])
        x, starts = pad_to_multiple(x, 4)
        x1 = self.Conv1(x)
        x2 = self.Conv2(self.max_pool(x1))
        x3 = self.Conv3(self.max_pool(x2))
        x4 = self.Conv4(torch.cat([self.up(x3), x2], dim=1))
        x5 = self.Conv5(torch.cat([self.up(x4), x1], dim=1))
        return crop(x5, starts, sizes)


def head(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    """The authors' ``res_conv`` head: Conv(in -> 16, k3 p1), GroupNorm(4, 16),
    LeakyReLU(0.2), Conv(16 -> out, k1): (B, in, *S) -> (B, out, *S).
    (Their code writes the group count as ``16 // 4``.)"""
    conv = conv_type(spatial_dims)
    return nn.Sequential(
        conv(in_channels, 16, kernel_size=3, padding=1),
        nn.GroupNorm(4, 16),
        nn.LeakyReLU(0.2),
        conv(16, out_channels, kernel_size=1),
    )
