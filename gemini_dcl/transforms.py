"""MONAI dictionary transforms of GEMINI: the joint random rotation/scaling of
an image pair (and label), and the appearance corruptions of the restoration
(MIP) task.

All transforms take channel-first items (C, *S), 2D or 3D (numpy, torch or
``MetaTensor``), return the same type, and draw every random number from
``self.R`` (seed them with ``set_random_state`` or through ``Compose``). The
corruptions assume intensities in [0, 1] and keep them there.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, CopyItemsd, MapTransform, OneOf, RandomizableTransform
from monai.utils import convert_data_type, convert_to_dst_type, ensure_tuple_rep

import gemini_ops

from .registration import warp_label

__all__ = [
    "rotation_scaling_matrix",
    "rotation_scaling_ddf",
    "RandJointAffined",
    "RandLocalPixelShuffled",
    "RandBezierIntensityd",
    "RandInPaintd",
    "RandOutPaintd",
    "restoration_corruption",
]


def _spatial_shape(d: Mapping, keys: Sequence[Hashable]) -> tuple[int, ...]:
    """The common spatial shape of ``d[k]`` (C, *S); a clear error otherwise."""
    shapes = {k: tuple(d[k].shape[1:]) for k in keys}
    for k, s in shapes.items():
        if len(s) not in (2, 3):
            raise ValueError(
                f"item {k!r} must be channel-first (C, H, W) or (C, D, H, W), got shape {tuple(d[k].shape)}"
            )
    if len(set(shapes.values())) > 1:
        raise ValueError(f"items {list(shapes)} must share one spatial shape, got {shapes}")
    return next(iter(shapes.values()))


def _rotation(ndim: int, axes: tuple[int, int], angle: float) -> np.ndarray:
    r = np.eye(ndim)
    c, s = np.cos(angle), np.sin(angle)
    i, j = axes
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def rotation_scaling_matrix(angles_deg: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """``M = R diag(s)``: 2D one angle in the plane (0, 1); 3D ``R = R_2 R_1 R_0``
    with ``R_i`` the rotation about spatial axis i by ``angles_deg[i]``.

    Args:
        angles_deg: 1 angle (2D) or 3 (3D), degrees.
        scales: 1 (isotropic) or ndim factors.

    Returns:
        (ndim, ndim) float64.
    """
    ndim = {1: 2, 3: 3}.get(len(angles_deg))
    if ndim is None:
        raise ValueError(f"angles_deg must hold 1 angle (2D) or 3 (3D), got {len(angles_deg)}")
    if len(scales) not in (1, ndim):
        raise ValueError(f"scales must hold 1 or {ndim} factors, got {len(scales)}")
    planes = [(0, 1)] if ndim == 2 else [(1, 2), (0, 2), (0, 1)]  # plane of the rotation about axis 0, 1, 2
    rot = np.eye(ndim)
    for plane, angle in zip(planes, np.deg2rad(np.asarray(angles_deg, dtype=np.float64))):
        rot = _rotation(ndim, plane, angle) @ rot
    return rot @ np.diag(np.broadcast_to(np.asarray(scales, dtype=np.float64), (ndim,)))


def rotation_scaling_ddf(spatial_shape: Sequence[int], matrix: np.ndarray) -> torch.Tensor:
    """Displacement that samples ``c + M (x - c)`` at every voxel ``x``, with the
    exact voxel-centre centre ``c = (N - 1) / 2`` per axis (the authors used
    ``N // 2``, a half-voxel shift on even axes).

    Args:
        spatial_shape: S, 2 or 3 sizes.
        matrix: M, (ndim, ndim).

    Returns:
        (1, ndim, *S) float32, voxel units (``gemini_ops.warp`` convention).
    """
    ndim = len(spatial_shape)
    axes = [torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in spatial_shape]
    centred = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    delta = torch.as_tensor(matrix, dtype=torch.float64) - torch.eye(ndim, dtype=torch.float64)
    return torch.einsum("ij,j...->i...", delta, centred).unsqueeze(0).float()


class RandJointAffined(RandomizableTransform, MapTransform):
    """One random rotation and scaling applied identically to all ``keys`` of a
    sample (e.g. the unlabelled pair and a label), as GEMINI's spatial
    augmentation: each output voxel x samples ``c + R diag(s) (x - c)``,
    ``c = (N - 1) / 2``, via ``gemini_ops.warp`` (zero padding). Rotations act
    in voxel space (isotropic voxels assumed). ``s > 1`` zooms out.

    Args:
        keys: items to transform, (C, *S) with a common S.
        rotate_range_deg: angles U(-r, r): 3D one per axis, 2D a single angle.
        scale_range: factors U(lo, hi), one per axis or one for all.
        isotropic_scale: one factor for all axes (the authors' 3D Semi setting).
        mode: per key ``"bilinear"`` (images) or ``"nearest"`` (labels: stay
            integer, in the label set plus background 0 from the padding).
        prob: probability of transforming the sample.
    """

    def __init__(
        self,
        keys: KeysCollection,
        rotate_range_deg: float = 20.0,
        scale_range: tuple[float, float] = (0.75, 1.25),
        isotropic_scale: bool = False,
        mode: str | Sequence[str] = "bilinear",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        for m in self.mode:
            if m not in ("bilinear", "nearest"):
                raise ValueError(f"mode must be 'bilinear' or 'nearest' (per key), got {m!r}")
        if rotate_range_deg < 0:
            raise ValueError(f"rotate_range_deg must be >= 0, got {rotate_range_deg}")
        if len(scale_range) != 2 or not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {scale_range}")
        self.rotate_range_deg = float(rotate_range_deg)
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.isotropic_scale = isotropic_scale
        self.matrix: Optional[np.ndarray] = None

    def randomize(self, spatial_dims: int) -> None:  # type: ignore[override]
        """Draw whether to transform, the angle(s) and the scale factor(s)."""
        super().randomize(None)
        r = self.rotate_range_deg
        angles = self.R.uniform(-r, r, 3 if spatial_dims == 3 else 1)
        scales = self.R.uniform(*self.scale_range, 1 if self.isotropic_scale else spatial_dims)
        self.matrix = rotation_scaling_matrix(angles, scales)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        shape = _spatial_shape(d, keys)
        self.randomize(len(shape))
        if not self._do_transform:
            return d
        ddf = rotation_scaling_ddf(shape, self.matrix)
        for key, mode in self.key_iterator(d, self.mode):
            img = d[key]
            x = convert_data_type(img, torch.Tensor, device=torch.device("cpu"))[0].unsqueeze(0)
            if mode == "nearest":
                out = warp_label(x, ddf)
            else:
                out = gemini_ops.warp(x.to(ddf.dtype), ddf)
            d[key] = convert_to_dst_type(out[0], img, dtype=out.dtype)[0]
        return d


class _NumpyCorruption(RandomizableTransform, MapTransform):
    """Base of the corruptions: draws once per sample from the common shape of
    ``keys``, applies ``_apply`` to each item as float32 numpy, clips to [0, 1]."""

    def __init__(self, keys: KeysCollection, prob: float, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)

    def randomize(self, shape: tuple[int, ...]) -> None:  # type: ignore[override]
        """Draw whether to transform, then the parameters for (C, *S) ``shape``."""
        super().randomize(None)
        if self._do_transform:
            self._draw(shape)

    def _draw(self, shape: tuple[int, ...]) -> None:
        raise NotImplementedError

    def _apply(self, img: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        spatial = _spatial_shape(d, keys)
        self.randomize((d[keys[0]].shape[0], *spatial))
        if not self._do_transform:
            return d
        for key in keys:
            img = d[key]
            x = convert_data_type(img, np.ndarray, dtype=np.float32)[0]
            out = np.clip(self._apply(x), 0.0, 1.0).astype(np.float32)
            d[key] = convert_to_dst_type(out, img, dtype=out.dtype)[0]
        return d


class RandLocalPixelShuffled(_NumpyCorruption):
    """Local pixel shuffling (Models Genesis / GEMINI MIP): ``num_blocks`` boxes
    of side ``N // block_divisor`` per axis, read from the input at random
    positions, each with its voxels randomly permuted (the same permutation for
    all channels), written back in order.

    Args:
        keys: images (C, *S) in [0, 1].
        prob: 0.8 (authors).
        num_blocks: default 5000 (3D) / 1000 (2D), the authors'.
        block_divisor: default 20 (3D) / 30 (2D), the authors'.
        min_block_size: lower bound of the side; the authors' ``N // 20`` gives
            1-voxel blocks (no effect) below 40 voxels, so we use at least 2.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.8,
        num_blocks: Optional[int] = None,
        block_divisor: Optional[int] = None,
        min_block_size: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if num_blocks is not None and num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        if block_divisor is not None and block_divisor < 1:
            raise ValueError(f"block_divisor must be >= 1, got {block_divisor}")
        if min_block_size < 1:
            raise ValueError(f"min_block_size must be >= 1, got {min_block_size}")
        self.num_blocks = num_blocks
        self.block_divisor = block_divisor
        self.min_block_size = min_block_size

    def _draw(self, shape: tuple[int, ...]) -> None:
        spatial = shape[1:]
        three_d = len(spatial) == 3
        n = self.num_blocks or (5000 if three_d else 1000)
        div = self.block_divisor or (20 if three_d else 30)
        side = [min(max(s // div, self.min_block_size), s) for s in spatial]
        starts = np.stack([self.R.randint(0, s - b + 1, size=n) for s, b in zip(spatial, side)], axis=1)
        offsets = np.stack(np.meshgrid(*[np.arange(b) for b in side], indexing="ij"), -1).reshape(-1, len(side))
        self._index = tuple(np.moveaxis(starts[:, None, :] + offsets[None], -1, 0))  # ndim x (n, P)
        self._perm = np.argsort(self.R.rand(n, offsets.shape[0]), axis=1)

    def _apply(self, img: np.ndarray) -> np.ndarray:
        windows = img[(slice(None), *self._index)]  # (C, n, P), read from the input
        shuffled = np.take_along_axis(windows, self._perm[None], axis=2)
        out = img.copy()
        out[(slice(None), *self._index)] = shuffled
        return out


class RandBezierIntensityd(_NumpyCorruption):
    """Monotone non-decreasing intensity curve: the cubic Bezier through (0, 0),
    two random control points in [0, 1]^2 and (1, 1), applied by interpolation
    (both coordinates are non-decreasing along the curve).

    Args:
        keys: images (C, *S) in [0, 1].
        prob: 0.9 (authors).
        num_points: samples of the curve.
    """

    def __init__(
        self, keys: KeysCollection, prob: float = 0.9, num_points: int = 1000, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if num_points < 2:
            raise ValueError(f"num_points must be >= 2, got {num_points}")
        self.num_points = num_points

    def _draw(self, shape: tuple[int, ...]) -> None:
        ctrl = np.array([[0.0, 0.0], self.R.rand(2), self.R.rand(2), [1.0, 1.0]])
        t = np.linspace(0.0, 1.0, self.num_points)[:, None]
        bernstein = np.concatenate([(1 - t) ** 3, 3 * t * (1 - t) ** 2, 3 * t**2 * (1 - t), t**3], axis=1)
        curve = bernstein @ ctrl
        # sorting only removes rounding noise: x(t) and y(t) are non-decreasing for control points in [0, 1]
        self.curve_x, self.curve_y = np.sort(curve[:, 0]), np.sort(curve[:, 1])

    def _apply(self, img: np.ndarray) -> np.ndarray:
        return np.interp(img, self.curve_x, self.curve_y)


def _side_range(lo: int, hi: int) -> tuple[int, int]:
    """``randint`` bounds [lo, hi) made valid on small images: lo >= 1, hi > lo."""
    lo = max(lo, 1)
    return lo, max(hi, lo + 1)


class RandInPaintd(_NumpyCorruption):
    """In-painting: boxes filled with U(0, 1) noise; another box while
    ``rand < continue_prob``, at most ``max_boxes`` (the authors' loop, so with
    probability 1 - continue_prob there is none). Box sides U[N // d0, N // d1),
    kept ``margin`` voxels from the border when the image allows.

    Args:
        keys: images (C, *S) in [0, 1].
        prob: 1.0 (authors: always).
        max_boxes: default 30 (3D) / 10 (2D).
        size_divisors: (d0, d1), default (10, 5) (3D) / (20, 10) (2D).
        continue_prob: 0.95.
        margin: 3 voxels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        max_boxes: Optional[int] = None,
        size_divisors: Optional[tuple[int, int]] = None,
        continue_prob: float = 0.95,
        margin: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if max_boxes is not None and max_boxes < 0:
            raise ValueError(f"max_boxes must be >= 0, got {max_boxes}")
        if size_divisors is not None and (len(size_divisors) != 2 or min(size_divisors) < 1):
            raise ValueError(f"size_divisors must be two ints >= 1, got {size_divisors}")
        self.max_boxes = max_boxes
        self.size_divisors = size_divisors
        self.continue_prob = continue_prob
        self.margin = margin

    def _draw(self, shape: tuple[int, ...]) -> None:
        three_d = len(shape) == 4
        max_boxes = (30 if three_d else 10) if self.max_boxes is None else self.max_boxes
        divs = self.size_divisors or ((10, 5) if three_d else (20, 10))
        self.boxes: list[tuple[tuple[slice, ...], np.ndarray]] = []
        while len(self.boxes) < max_boxes and self.R.rand() < self.continue_prob:
            sides = [self.R.randint(*_side_range(n // divs[0], n // divs[1])) for n in shape[1:]]
            region = _random_box(self.R, shape[1:], sides, self.margin)
            self.boxes.append((region, self.R.rand(shape[0], *sides)))

    def _apply(self, img: np.ndarray) -> np.ndarray:
        out = img.copy()
        for region, noise in self.boxes:
            out[(slice(None), *region)] = noise
        return out


def _random_box(rng: np.random.RandomState, spatial: Sequence[int], sides: Sequence[int], margin: int) -> tuple:
    """Slices of a box of ``sides`` placed uniformly, ``margin`` from the border when it fits."""
    starts = []
    for n, b in zip(spatial, sides):
        m = max(min(margin, (n - b) // 2), 0)
        starts.append(rng.randint(m, n - b - m + 1))
    return tuple(slice(s, s + b) for s, b in zip(starts, sides))


class RandOutPaintd(_NumpyCorruption):
    """Out-painting (Models Genesis; in the authors' code, never called): the
    image is replaced by U(0, 1) noise except inside one box of side
    ``N - U[3N//7, 4N//7)``, plus another while ``rand < continue_prob``, at
    most ``max_extra_boxes`` more, where the original is kept.

    Args:
        keys: images (C, *S) in [0, 1].
        prob: 1.0 (use it through :func:`restoration_corruption`'s ``outpaint_prob``).
        max_extra_boxes: 4.
        continue_prob: 0.95.
        margin: 3 voxels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 1.0,
        max_extra_boxes: int = 4,
        continue_prob: float = 0.95,
        margin: int = 3,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, prob, allow_missing_keys)
        if max_extra_boxes < 0:
            raise ValueError(f"max_extra_boxes must be >= 0, got {max_extra_boxes}")
        self.max_extra_boxes = max_extra_boxes
        self.continue_prob = continue_prob
        self.margin = margin

    def _draw(self, shape: tuple[int, ...]) -> None:
        self.noise = self.R.rand(*shape)
        self.regions: list[tuple[slice, ...]] = []
        while len(self.regions) == 0 or (
            len(self.regions) <= self.max_extra_boxes and self.R.rand() < self.continue_prob
        ):
            sides = [n - self.R.randint(*_side_range(3 * n // 7, 4 * n // 7)) for n in shape[1:]]
            self.regions.append(_random_box(self.R, shape[1:], sides, self.margin))

    def _apply(self, img: np.ndarray) -> np.ndarray:
        out = self.noise.astype(img.dtype)
        for region in self.regions:
            out[(slice(None), *region)] = img[(slice(None), *region)]
        return out


def restoration_corruption(
    keys: KeysCollection,
    suffix: str = "_corrupt",
    outpaint_prob: float = 0.0,
    shuffle_prob: float = 0.8,
    bezier_prob: float = 0.9,
    inpaint_prob: float = 1.0,
) -> Compose:
    """The MIP corruption in the authors' order, on a copy: ``d[k + suffix]``
    becomes the corrupted ``d[k]`` (clean target kept). Local pixel shuffling,
    Bezier intensity curve, then in-painting, or with probability
    ``outpaint_prob`` out-painting instead (0: the authors' setting).

    Returns:
        a seedable ``Compose`` (``set_random_state`` reaches every step).
    """
    if not 0.0 <= outpaint_prob <= 1.0:
        raise ValueError(f"outpaint_prob must be in [0, 1], got {outpaint_prob}")
    src = ensure_tuple_rep(keys, 1) if isinstance(keys, str) else tuple(keys)
    names = [f"{k}{suffix}" for k in src]
    painting = OneOf(
        [RandInPaintd(names, prob=inpaint_prob), RandOutPaintd(names)], weights=[1.0 - outpaint_prob, outpaint_prob]
    )
    return Compose(
        [
            CopyItemsd(src, times=1, names=names),
            RandLocalPixelShuffled(names, prob=shuffle_prob),
            RandBezierIntensityd(names, prob=bezier_prob),
            painting,
        ]
    )
