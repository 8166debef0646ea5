"""GEMINI (He et al., TPAMI 2025): backbone, deformer and head, layer for layer
the authors' network, with their ``state_dict`` keys."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import gemini_ops

from .blocks import UNetBase, UNetShallow, check_input, check_spatial_dims, conv_type, head, kaiming_init

__all__ = ["GEMINI", "FLOW_INITS"]

FLOW_INITS = ("kaiming", "small_normal")


class GEMINI(nn.Module):
    """GEMINI network: a U-Net backbone giving per-voxel features, a shallow
    U-Net deformer predicting the deformation between two feature maps, and a
    segmentation / restoration head.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: head outputs (segmentation classes, or 1 to restore an image).
        channels: the 9 backbone widths (4 down, bottleneck, 4 up); the last is
            the feature width. Each width needs GroupNorm(width // 8) to divide it.
        deformer_channels: the 5 deformer widths (``Conv1..Conv5``).
        integration_steps: scaling-and-squaring steps of :meth:`flow`; 0 uses the
            deformer output as a plain displacement (the authors' way, which can fold).
        flow_init: ``"kaiming"`` (the authors' init, Kaiming-normal on every
            convolution including the final flow convolution ``deformer.1``) or
            ``"small_normal"`` (VoxelMorph's: ``deformer.1`` weights N(0, 1e-5)
            and zero bias, so the untrained deformer predicts near-identity
            flows instead of random ones of about a voxel or more).

    Submodules (``state_dict`` prefixes): ``unet`` (backbone), ``deformer``
    (``deformer.0`` the shallow U-Net on concat(feat_a, feat_b), ``deformer.1``
    Conv(deformer_channels[-1] -> spatial_dims, k3 p1)), ``res_conv`` (head).
    Convolutions start Kaiming-normal, as in the authors' code (except the
    flow convolution with ``flow_init="small_normal"``).

    Shapes (``S`` any spatial size; the network pads internally and crops back):
        :meth:`features`: (B, in_channels, *S) -> (B, channels[-1], *S)
        :meth:`velocity`, :meth:`flow`: two (B, channels[-1], *S) -> (B, spatial_dims, *S)
        :meth:`head`: (B, channels[-1], *S) -> (B, out_channels, *S)
        :meth:`forward`: (B, in_channels, *S) -> (B, out_channels, *S)
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 512, 256, 128, 64, 32),
        deformer_channels: Sequence[int] = (32, 64, 64, 64, 32),
        integration_steps: int = 7,
        flow_init: str = "kaiming",
    ) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if flow_init not in FLOW_INITS:
            raise ValueError(f"flow_init must be one of {FLOW_INITS}, got {flow_init!r}")
        if isinstance(integration_steps, bool) or not isinstance(integration_steps, int) or integration_steps < 0:
            raise ValueError(f"integration_steps must be an int >= 0, got {integration_steps!r}")
        self.in_channels = in_channels
        self.feature_channels = tuple(channels)[-1]
        self.integration_steps = integration_steps
        self.unet = UNetBase(spatial_dims, in_channels, channels)
        shallow = UNetShallow(spatial_dims, 2 * self.feature_channels, deformer_channels)
        self.deformer = nn.Sequential(
            shallow, conv_type(spatial_dims)(tuple(deformer_channels)[-1], spatial_dims, kernel_size=3, padding=1)
        )
        self.res_conv = head(spatial_dims, self.feature_channels, out_channels)
        kaiming_init(self)
        if flow_init == "small_normal":
            nn.init.normal_(self.deformer[1].weight, 0.0, 1e-5)
            nn.init.zeros_(self.deformer[1].bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-voxel features: (B, in_channels, *S) -> (B, channels[-1], *S)."""
        check_input("x", x, self.spatial_dims, self.in_channels)
        return self.unet(x)[1]

    def velocity(self, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        """Raw deformer output for A -> B from concat(feat_a, feat_b), voxel
        units: two (B, channels[-1], *S) -> (B, spatial_dims, *S)."""
        check_input("feat_a", feat_a, self.spatial_dims, self.feature_channels)
        check_input("feat_b", feat_b, self.spatial_dims, self.feature_channels)
        if feat_a.shape != feat_b.shape:
            raise ValueError(f"feat_a {list(feat_a.shape)} and feat_b {list(feat_b.shape)} must have the same shape")
        return self.deformer(torch.cat([feat_a, feat_b], dim=1))

    def flow(self, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        """Displacement A -> B (warp A with it to align A to B), voxel units,
        channel i along spatial axis i: the :meth:`velocity` integrated in
        ``integration_steps`` scaling-and-squaring steps. (B, spatial_dims, *S)."""
        return gemini_ops.integrate_velocity(self.velocity(feat_a, feat_b), self.integration_steps)

    def head(self, feat: torch.Tensor) -> torch.Tensor:
        """Segmentation logits or restored image: (B, channels[-1], *S) -> (B, out_channels, *S)."""
        check_input("feat", feat, self.spatial_dims, self.feature_channels)
        return self.res_conv(feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Inference: ``head(features(x))``, (B, in_channels, *S) -> (B, out_channels, *S)."""
        return self.head(self.features(x))

    def pair_forward(self, image_a: torch.Tensor, image_b: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """The training forward of GEMINI's pair step: features ``feat_a``,
        ``feat_b`` and the displacements ``ddf_ab`` (A -> B) and ``ddf_ba``,
        all float32. The displacements are ``None`` when the features are not
        finite (the fused ops refuse non-finite fields; the step is skipped
        anyway). The flows run with autocast off: the fused ops take float32 on
        the CPU and the integration is where half precision loses accuracy."""
        # A and B go through the backbone (and the deformer) as one batch: every
        # layer is per sample (GroupNorm included), so the result is the same,
        # and on the CPU a batch of 2 takes oneDNN's convolution instead of
        # PyTorch's much slower fallback for batch-1 3D convolutions.
        feat_a, feat_b = self.features(torch.cat([image_a, image_b])).float().chunk(2)
        out: dict[str, torch.Tensor | None] = {"feat_a": feat_a, "feat_b": feat_b, "ddf_ab": None, "ddf_ba": None}
        if bool(gemini_ops.all_finite(feat_a) & gemini_ops.all_finite(feat_b)):
            with torch.autocast(feat_a.device.type, enabled=False):
                ddf = self.flow(torch.cat([feat_a, feat_b]), torch.cat([feat_b, feat_a]))
            out["ddf_ab"], out["ddf_ba"] = ddf.chunk(2)
        return out
