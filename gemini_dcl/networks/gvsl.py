"""GVSL (He et al., CVPR 2023): the backbone with the Z-matching head (affine
then deformable registration) and a restoration head, with the authors'
``state_dict`` keys; 3D only.

Unlike the authors' code, the affine matrix is built from tensors (batched,
gradients reach the affine head) in voxel index space about the volume
centre, so rotations stay rigid on non-cubic volumes (isotropic voxels).
"""

from __future__ import annotations

from collections.abc import Sequence
from math import pi

import torch
from torch import nn

import gemini_ops

from .blocks import DoubleConv, UNetBase, check_input, check_widths, head, kaiming_init

__all__ = ["GVSL", "affine_matrix", "affine_to_ddf"]

# Off-diagonal (row, column) of each shear parameter, in (x, y, z) order:
# xy, xz, yx, yz, zx, zy as in the authors' code.
_SHEAR_INDEX = ((0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1))


def _rotation(angle: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Batched rotation by ``angle`` (B,) in the (i, j) plane: (B, 3, 3)."""
    m = torch.eye(3, dtype=angle.dtype, device=angle.device).repeat(angle.shape[0], 1, 1)
    c, s = torch.cos(angle), torch.sin(angle)
    m[:, i, i], m[:, j, j], m[:, i, j], m[:, j, i] = c, c, -s, s
    return m


def affine_matrix(
    rotation: torch.Tensor,
    scale: torch.Tensor,
    translation: torch.Tensor,
    shear: torch.Tensor,
    spatial_shape: Sequence[int],
) -> torch.Tensor:
    """Batched, differentiable affine of GVSL's head.

    Parameters follow the authors' (x, y, z) = (W, H, D) axis order:
    ``rotation`` (B, 3) angles in radians about x, y, z; ``scale`` (B, 3);
    ``translation`` (B, 3) as a fraction of the half extent ``(N - 1) / 2`` of
    each axis (the ``[-1, 1]`` normalised units); ``shear`` (B, 6) angles
    xy, xz, yx, yz, zx, zy. The linear part is
    ``Shear @ Scale @ Rz @ Ry @ Rx`` with ``Shear = I + tan(shear)`` off the
    diagonal.

    Returns ``theta`` (B, 3, 4) in voxel index space with rows and columns in
    tensor axis order (D, H, W): the voxel ``p`` samples the moving image at
    ``c + theta[:, :, :3] @ (p - c) + theta[:, :, 3]``, ``c = (N - 1) / 2``.
    """
    for name, t, n in (
        ("rotation", rotation, 3),
        ("scale", scale, 3),
        ("translation", translation, 3),
        ("shear", shear, 6),
    ):
        if t.dim() != 2 or t.shape[1] != n:
            raise ValueError(f"{name} must have shape (B, {n}), got {list(t.shape)}")
    if len(spatial_shape) != 3:
        raise ValueError(f"spatial_shape must hold 3 sizes (D, H, W), got {list(spatial_shape)}")
    rx = _rotation(rotation[:, 0], 1, 2)
    ry = _rotation(rotation[:, 1], 2, 0)
    rz = _rotation(rotation[:, 2], 0, 1)
    shear_mat = torch.eye(3, dtype=shear.dtype, device=shear.device).repeat(shear.shape[0], 1, 1)
    tangents = torch.tan(shear)
    for k, (i, j) in enumerate(_SHEAR_INDEX):
        shear_mat[:, i, j] = tangents[:, k]
    linear_xyz = shear_mat @ torch.diag_embed(scale) @ rz @ ry @ rx
    # (x, y, z) -> (D, H, W): reverse rows and columns.
    linear = linear_xyz.flip(-1).flip(-2)
    half = torch.tensor([(n - 1) / 2 for n in spatial_shape], dtype=translation.dtype, device=translation.device)
    return torch.cat([linear, (translation.flip(-1) * half).unsqueeze(-1)], dim=-1)


def affine_to_ddf(theta: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """Displacement field of ``theta`` (B, 3, 4) from :func:`affine_matrix`:
    ``ddf(p) = (A - I)(p - c) + t``, (B, 3, D, H, W) in voxels, channel i along
    spatial axis i, so ``gemini_ops.warp(moving, ddf)`` applies the affine."""
    if theta.dim() != 3 or tuple(theta.shape[1:]) != (3, 4):
        raise ValueError(f"theta must have shape (B, 3, 4), got {list(theta.shape)}")
    axes = [torch.arange(n, dtype=theta.dtype, device=theta.device) - (n - 1) / 2 for n in spatial_shape]
    centred = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    linear = theta[:, :, :3] - torch.eye(3, dtype=theta.dtype, device=theta.device)
    return torch.einsum("bij,j...->bi...", linear, centred) + theta[:, :, 3].reshape(-1, 3, 1, 1, 1)


class GVSL(nn.Module):
    """GVSL network: U-Net backbone, Z-matching head (affine, then deformable
    on the affinely aligned features) registering ``moving`` to ``fixed``, and
    the restoration head on the fixed image's features.

    Args:
        in_channels: image channels.
        out_channels: restoration-head outputs.
        channels: the 9 backbone widths, as in :class:`GEMINI`.
        affine_channels: width of the affine trunk ``f_conv`` (256 in the paper).
        integration_steps: scaling-and-squaring steps for the deformable flow;
            0: plain displacement (the authors' way).

    Submodules (``state_dict`` prefixes): ``unet``, ``f_conv``
    (DoubleConv(2 channels[4] -> affine_channels)), ``sp_conv``
    (DoubleConv(2 channels[-1] -> 16)), ``res_conv``, ``out_flow``
    (Conv(16 -> 3, k3 p1)), ``fc_rot``, ``fc_scl``, ``fc_trans``, ``fc_shear``
    (Linear(affine_channels -> 3, 3, 3, 6)). Only the backbone starts
    Kaiming-normal, as in the authors' code.

    The affine head bounds rotations to +-pi/9 (``clamp(-1, 1) * pi / 9``),
    scales to 1 +- 0.25 and shears to +-pi/18; translation is unbounded.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 512, 256, 128, 64, 32),
        affine_channels: int = 256,
        integration_steps: int = 7,
    ) -> None:
        super().__init__()
        channels = check_widths("channels", channels, 9)
        check_widths("affine_channels", (affine_channels,), 1)
        if isinstance(integration_steps, bool) or not isinstance(integration_steps, int) or integration_steps < 0:
            raise ValueError(f"integration_steps must be an int >= 0, got {integration_steps!r}")
        self.in_channels = in_channels
        self.bottleneck_channels = channels[4]
        self.feature_channels = channels[-1]
        self.integration_steps = integration_steps
        self.unet = UNetBase(3, in_channels, channels)
        self.f_conv = DoubleConv(3, 2 * channels[4], affine_channels)
        self.sp_conv = DoubleConv(3, 2 * channels[-1], 16)
        self.res_conv = head(3, channels[-1], out_channels)
        self.out_flow = nn.Conv3d(16, 3, kernel_size=3, padding=1)
        self.fc_rot = nn.Linear(affine_channels, 3)
        self.fc_scl = nn.Linear(affine_channels, 3)
        self.fc_trans = nn.Linear(affine_channels, 3)
        self.fc_shear = nn.Linear(affine_channels, 6)
        kaiming_init(self.unet)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, in_channels, D, H, W) -> (bottleneck (B, channels[4], *P/16),
        features (B, channels[-1], D, H, W)); P: the size padded to a multiple of 16."""
        check_input("x", x, 3, self.in_channels)
        return self.unet(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel features: (B, in_channels, *S) -> (B, channels[-1], *S)."""
        return self.encode(x)[1]

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        """Restored image: (B, channels[-1], *S) -> (B, out_channels, *S)."""
        check_input("feat", feat, 3, self.feature_channels)
        return self.res_conv(feat)

    def affine_parameters(
        self, bottleneck_moving: torch.Tensor, bottleneck_fixed: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bounded (rotation (B, 3), scale (B, 3), translation (B, 3), shear
        (B, 6)) from the two bottlenecks (B, channels[4], *P/16), concatenated
        [moving, fixed]; see :func:`affine_matrix` for their meaning."""
        check_input("bottleneck_moving", bottleneck_moving, 3, self.bottleneck_channels)
        check_input("bottleneck_fixed", bottleneck_fixed, 3, self.bottleneck_channels)
        pooled = self.f_conv(torch.cat([bottleneck_moving, bottleneck_fixed], dim=1)).mean(dim=(2, 3, 4))
        rotation = self.fc_rot(pooled).clamp(-1, 1) * (pi / 9)
        scale = self.fc_scl(pooled).clamp(-1, 1) * 0.25 + 1
        translation = self.fc_trans(pooled)
        shear = self.fc_shear(pooled).clamp(-1, 1) * (pi / 18)
        return rotation, scale, translation, shear

    def affine(
        self, bottleneck_moving: torch.Tensor, bottleneck_fixed: torch.Tensor, spatial_shape: Sequence[int]
    ) -> torch.Tensor:
        """``theta`` (B, 3, 4) of :func:`affine_matrix` for images of ``spatial_shape`` (D, H, W)."""
        return affine_matrix(*self.affine_parameters(bottleneck_moving, bottleneck_fixed), spatial_shape)

    def deformable(self, feat_moving: torch.Tensor, feat_fixed: torch.Tensor) -> torch.Tensor:
        """Deformable displacement moving -> fixed from the affinely aligned
        moving features and the fixed features (both (B, channels[-1], *S)),
        concatenated [moving, fixed]: (B, 3, *S), voxels."""
        check_input("feat_moving", feat_moving, 3, self.feature_channels)
        check_input("feat_fixed", feat_fixed, 3, self.feature_channels)
        flow = self.out_flow(self.sp_conv(torch.cat([feat_moving, feat_fixed], dim=1)))
        return gemini_ops.integrate_velocity(flow, self.integration_steps)

    def forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor]:
        """Register ``moving`` to ``fixed`` (both (B, in_channels, D, H, W)) and
        restore ``fixed`` (pass the corrupted image here to train restoration).

        Returns a dict:
            ``restored`` (B, out_channels, *S): ``head(features(fixed))``;
            ``theta`` (B, 3, 4): the affine (:func:`affine_matrix`);
            ``affine_ddf`` (B, 3, *S): its displacement;
            ``flow`` (B, 3, *S): the deformable displacement, applied first;
            ``ddf`` (B, 3, *S): the total, ``ddf(x) = affine_ddf(x + flow(x)) + flow(x)``;
            ``warped`` (B, in_channels, *S): ``warp(moving, ddf)``, one interpolation.
        """
        return self._register(moving, fixed, guard=False)

    def training_forward(self, moving: torch.Tensor, fixed: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """:meth:`forward` for GVSL's training step: the same outputs, but
        ``None`` for the geometric ones when the encodings are not finite (the
        fused ops refuse non-finite fields; the step is skipped anyway)."""
        return self._register(moving, fixed, guard=True)

    def _register(self, moving: torch.Tensor, fixed: torch.Tensor, guard: bool) -> dict[str, torch.Tensor | None]:
        if moving.shape != fixed.shape:
            raise ValueError(f"moving {list(moving.shape)} and fixed {list(fixed.shape)} must have the same shape")
        shape = list(moving.shape[2:])
        # the encoders run under the caller's autocast; the geometric tail in
        # float32 (the affine and the integration lose accuracy in half precision)
        bottleneck_moving, feat_moving = self.encode(moving)
        bottleneck_fixed, feat_fixed = self.encode(fixed)
        out: dict[str, torch.Tensor | None] = dict.fromkeys(("theta", "affine_ddf", "flow", "ddf", "warped"))
        out = {"restored": self.res_conv(feat_fixed).float()} | out
        encodings = (bottleneck_moving, feat_moving, bottleneck_fixed, feat_fixed)
        if guard and not all(bool(gemini_ops.all_finite(t)) for t in encodings):
            return out
        with torch.autocast(moving.device.type, enabled=False):
            theta = self.affine(bottleneck_moving.float(), bottleneck_fixed.float(), shape)
            affine_ddf = affine_to_ddf(theta, shape)
            flow = self.deformable(gemini_ops.warp(feat_moving.float(), affine_ddf), feat_fixed.float())
            # The affine part is linear, so affine_ddf(x + flow) = affine_ddf(x) + (A - I) flow exactly.
            ddf = affine_ddf + torch.einsum("bij,bj...->bi...", theta[:, :, :3], flow)
            warped = gemini_ops.warp(moving.float(), ddf)
        return out | {"theta": theta, "affine_ddf": affine_ddf, "flow": flow, "ddf": ddf, "warped": warped}
