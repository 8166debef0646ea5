"""Sample data on real anatomy: synthetic brain MRI subjects derived from the
MNI152 2009a template shipped in ``gemini_dcl/data`` (structure labels
:data:`STRUCTURE_NAMES`, or the tissue classes :data:`TISSUE_NAMES` derived
from them), and the shipped chest X-rays.

Each subject is the template resampled onto a small isotropic grid (for 2D an
axial slice at a random height), deformed by a random affine map and a
diffeomorphism (a random smooth velocity plus label-driven morphology:
ventricle enlargement and a white-matter boundary shift, integrated by scaling
and squaring, ``gemini_ops.integrate_velocity``), with a random bias field,
gamma curve and Gaussian noise; its label is warped with the same
displacement by nearest neighbour. The parameters are :class:`GeneratorParams`
(fixed defaults; the datalist records them). Deterministic per seed: subject
i draws from ``numpy.random.default_rng([seed, i])``.

The subject's map to the template and its inverse are written to
``fields/subject_XXX.npz`` so the true deformation between two subjects is
known (:func:`true_pair_ddf`): the ceiling of registration.

CLI::

    python -m gemini_dcl.sample_data OUT_DIR [--benchmark brain2d|brain3d]
        [--subjects N] [--size D H W] [--seed S] [--dims 2|3] [--labels tissue|structures]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional, Union

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

import gemini_ops

from .registration import warp_label

__all__ = [
    "DATA_DIR",
    "STRUCTURE_NAMES",
    "TISSUE_NAMES",
    "LABEL_SETS",
    "DEFAULT_SIZE",
    "BENCHMARKS",
    "GeneratorParams",
    "save_nifti",
    "load_template",
    "template_on_grid",
    "random_subject",
    "true_pair_ddf",
    "make_sample_dataset",
    "make_benchmark",
    "main",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
TEMPLATE_IMAGE = "mni152/mni152_2009a_t1_2mm.nii.gz"
TEMPLATE_LABEL = "mni152/mni152_2009a_structures_2mm.nii.gz"
XRAY_DIR = "chestxray"
NOTICE = "NOTICE.md"
STRUCTURE_NAMES = {
    0: "background",
    1: "extracerebral_csf",
    2: "ventricles",
    3: "deep_gm",
    4: "left_cortical_gm",
    5: "right_cortical_gm",
    6: "left_wm",
    7: "right_wm",
}
TISSUE_NAMES = {0: "background", 1: "csf", 2: "grey_matter", 3: "white_matter"}
# structure value -> tissue value
_TISSUE_OF_STRUCTURE = np.array([0, 1, 1, 2, 2, 2, 3, 3], dtype=np.uint8)
LABEL_SETS = {"structures": STRUCTURE_NAMES, "tissue": TISSUE_NAMES}
_VENTRICLES, _WM = (2,), (6, 7)
DEFAULT_SIZE = {3: (40, 48, 40), 2: (64, 80)}
MIN_SIZE = 8

PathLike = Union[str, Path]


@dataclasses.dataclass(frozen=True)
class GeneratorParams:
    """How subjects differ. Fixed before any method was compared on the data
    (see docs/gemini_dcl_data.md); lengths in mm, converted to voxels with the
    grid spacing.

    Attributes:
        deformation_mm: std of the random velocity on its control points.
        control_mm: control-point spacing of the velocity (linear interpolation).
        ventricle_mm: ventricle enlargement, U(lo, hi): the velocity gets this
            many mm (at most) along the gradient of the smoothed ventricle mask.
        wm_mm: white-matter boundary shift, U(lo, hi), along the gradient of the
            smoothed WM mask (> 0 grows WM and thins the cortex).
        morphology_sigma_mm: Gaussian smoothing of those masks.
        rotation_deg: std of the rotation angle (2D: one; 3D: one per axis).
        log_scale_std: std of the log scale factor per axis.
        translation_mm: std of the translation per axis.
        slice_z_mm, slice_range_mm: 2D only, the axial slice is at MNI
            z = slice_z_mm + U(-slice_range_mm, slice_range_mm).
        bias_std, bias_control_mm: bias field ``exp(bias_std * field)`` on
            control points every ``bias_control_mm``.
        gamma_std: intensity curve ``x ** exp(N(0, gamma_std))``.
        noise_std: Gaussian noise std U(lo, hi).
        margin_mm: space around the head on the grid.
    """

    deformation_mm: float = 4.0
    control_mm: float = 40.0
    ventricle_mm: tuple[float, float] = (0.0, 6.0)
    wm_mm: tuple[float, float] = (-2.0, 2.0)
    morphology_sigma_mm: float = 4.0
    rotation_deg: float = 4.0
    log_scale_std: float = 0.05
    translation_mm: float = 3.0
    slice_z_mm: float = 10.0
    slice_range_mm: float = 8.0
    bias_std: float = 0.2
    bias_control_mm: float = 80.0
    gamma_std: float = 0.2
    noise_std: tuple[float, float] = (0.01, 0.04)
    margin_mm: float = 8.0


# The shipped benchmarks: the sets the experiment results were measured on.
BENCHMARKS: dict[str, dict[str, Any]] = {
    "brain2d": {"spatial_dims": 2, "size": (64, 80), "labeled": 3, "validation": 2, "test": 12, "subjects": 41},
    "brain3d": {"spatial_dims": 3, "size": (40, 48, 40), "labeled": 3, "validation": 2, "test": 12, "subjects": 41},
}


def save_nifti(array: np.ndarray, affine: np.ndarray, path: PathLike, description: str = "") -> None:
    """Write ``array`` as gzipped NIfTI-1 with ``affine`` as sform and qform
    (code 1); the gzip header carries no time stamp, so equal inputs give
    equal bytes."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_sform(affine, code=1)
    img.header.set_qform(affine, code=1)
    img.header["descrip"] = description[:79].encode()
    Path(path).write_bytes(gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))


def _data_file(data_dir: Optional[PathLike], name: str) -> Path:
    path = Path(data_dir or DATA_DIR) / name
    if not path.exists():
        raise FileNotFoundError(
            f"sample data file {path} is missing (data_dir={data_dir or DATA_DIR}); "
            "reinstall gemini_dcl or regenerate it with scripts/derive_sample_data.py"
        )
    return path


def load_template(data_dir: Optional[PathLike] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The shipped template (2 mm, cropped to the head).

    Returns:
        image (X, Y, Z) float32 in [0, 1]; label (X, Y, Z) uint8, values of
        :data:`STRUCTURE_NAMES`; affine (4, 4) voxel -> MNI mm (RAS).
    """
    img = nib.load(_data_file(data_dir, TEMPLATE_IMAGE))
    lab = nib.load(_data_file(data_dir, TEMPLATE_LABEL))
    if img.shape != lab.shape or not np.allclose(img.affine, lab.affine):
        raise ValueError(f"template image {img.shape} and label {lab.shape} do not share one grid")
    image = np.asarray(img.dataobj, dtype=np.float32) / 255.0
    return image, np.asarray(lab.dataobj, dtype=np.uint8), img.affine


class _TemplateSampler:
    """The template, anti-aliased once for a grid spacing, sampled on grids
    that differ only by an offset along the last (axial) axis."""

    def __init__(self, size: Sequence[int], spatial_dims: int, margin_mm: float, data_dir: Optional[PathLike]) -> None:
        image, label, t_affine = load_template(data_dir)
        self.t_affine = t_affine
        t_spacing = np.linalg.norm(t_affine[:3, :3], axis=0)
        inside = np.argwhere(label > 0)
        lo, hi = inside.min(0), inside.max(0)
        extent_mm = (hi - lo + 1) * t_spacing + 2 * margin_mm
        self.spacing = float(np.max(extent_mm[:spatial_dims] / np.asarray(size)))
        self.size = tuple(size)
        self.full = (*size, 1) if spatial_dims == 2 else tuple(size)
        affine = np.eye(4)
        affine[:3, :3] = t_affine[:3, :3] / t_spacing * self.spacing
        centre_mm = t_affine[:3, :3] @ ((lo + hi) / 2) + t_affine[:3, 3]
        affine[:3, 3] = centre_mm - affine[:3, :3] @ ((np.asarray(self.full) - 1) / 2)
        self.affine = affine
        # anti-aliasing before subsampling by spacing / template spacing
        sigma = 0.4 * np.maximum(self.spacing / t_spacing - 1.0, 0.0)
        self.image = ndimage.gaussian_filter(image, sigma, mode="constant")
        # labels by the argmax of smoothed one-hot maps: no aliasing, no class drift
        self.votes = [
            ndimage.gaussian_filter((label == c).astype(np.float32), sigma, mode="constant") for c in STRUCTURE_NAMES
        ]

    def sample(self, z_mm: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
        """Image (1, *size) and structure label (1, *size) on the grid, moved to
        MNI z = ``z_mm`` (2D; None keeps the centre)."""
        affine = self.affine.copy()
        if z_mm is not None:
            affine[2, 3] = z_mm
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in self.full], indexing="ij")).reshape(3, -1)
        to_template = np.linalg.inv(self.t_affine) @ affine
        coords = to_template[:3, :3] @ grid + to_template[:3, 3:]

        def at(vol: np.ndarray) -> np.ndarray:
            return ndimage.map_coordinates(vol, coords, order=1, mode="constant").reshape(self.size)

        image = np.clip(at(self.image), 0.0, 1.0).astype(np.float32)
        label = np.stack([at(v) for v in self.votes]).argmax(0).astype(np.uint8)
        return image[None], label[None]


def template_on_grid(
    size: Sequence[int],
    spatial_dims: int = 3,
    margin_mm: float = 8.0,
    data_dir: Optional[PathLike] = None,
    z_mm: Optional[float] = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template resampled onto an isotropic grid of ``size`` voxels that
    holds the labelled head plus ``margin_mm`` (centred; spacing = the
    largest extent / size ratio). 2D: an axial plane spanning the first two
    axes, through the centre or at MNI z = ``z_mm``.

    Returns:
        image (1, *size) float32 in [0, 1]; structure label (1, *size) uint8;
        affine (4, 4) voxel -> MNI mm of the centred grid (for 2D, index (i, j, 0)).
    """
    size = _check_size(size, spatial_dims)
    sampler = _TemplateSampler(size, spatial_dims, margin_mm, data_dir)
    return (*sampler.sample(z_mm), sampler.affine)


def _smooth_field(rng: np.random.Generator, channels: int, shape: Sequence[int], control_vox: float) -> torch.Tensor:
    """Standard-normal values on a control grid every ``control_vox`` voxels,
    linearly interpolated to ``shape``: (1, channels, *shape) float32."""
    coarse_shape = [max(2, int(np.ceil((n - 1) / control_vox)) + 1) for n in shape]
    coarse = torch.from_numpy(rng.standard_normal((1, channels, *coarse_shape)).astype(np.float32))
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)


def _outward(mask: np.ndarray, sigma_vox: float) -> torch.Tensor:
    """Unit-maximum field pointing into ``mask`` (the gradient of the smoothed
    mask): a displacement along it grows the structure. (1, ndim, *S)."""
    smooth = ndimage.gaussian_filter(mask.astype(np.float64), sigma_vox)
    grad = np.stack(np.gradient(smooth))
    peak = float(np.sqrt((grad**2).sum(0)).max())
    return torch.from_numpy((grad / max(peak, 1e-12)).astype(np.float32))[None]


def _affine_parts(rng: np.random.Generator, ndim: int, spacing_mm: float, params: GeneratorParams):
    """Random matrix M (ndim, ndim) and translation t (voxels)."""
    from .transforms import rotation_scaling_matrix

    angles = rng.normal(0.0, params.rotation_deg, size=1 if ndim == 2 else 3)
    scales = np.exp(rng.normal(0.0, params.log_scale_std, size=ndim))
    matrix = np.asarray(rotation_scaling_matrix(angles, scales), dtype=np.float64)
    return matrix, rng.normal(0.0, params.translation_mm / spacing_mm, size=ndim)


def _affine_ddf(shape: Sequence[int], matrix: np.ndarray, shift: np.ndarray, points: Optional[torch.Tensor] = None):
    """Displacement ``c + M (p - c) + t - p`` at ``points`` (1, ndim, *S) in
    voxels (default the grid itself), with ``c`` the grid centre."""
    ndim = len(shape)
    if points is None:
        axes = [torch.arange(n, dtype=torch.float64) for n in shape]
        points = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    centre = torch.tensor([(n - 1) / 2 for n in shape], dtype=torch.float64).view(1, ndim, *[1] * ndim)
    m = torch.from_numpy(matrix)
    moved = torch.einsum("ij,bj...->bi...", m, points.double() - centre) + centre
    moved = moved + torch.from_numpy(np.asarray(shift, dtype=np.float64)).view(1, ndim, *[1] * ndim)
    return (moved - points.double()).float()


def random_subject(
    image: np.ndarray,
    label: np.ndarray,
    spacing_mm: float,
    rng: np.random.Generator,
    params: GeneratorParams = GeneratorParams(),
) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
    """One synthetic subject from ``image`` / structure ``label`` (1, *S), 2D or 3D.

    The subject voxel x shows the template at ``phi(x) = V(A(x))``: A the
    random affine map (about the grid centre), V the map of the velocity
    (random smooth field + ventricle and WM morphology, see
    :class:`GeneratorParams`) integrated in 7 scaling-and-squaring steps.
    Then bias field, gamma, noise; clipped to [0, 1].

    Returns:
        image (1, *S) float32 in [0, 1]; label (1, *S) uint8 (structure
        values); ddf (1, ndim, *S) with ``phi(x) = x + ddf(x)``; inverse
        (1, ndim, *S) with ``phi^-1(z) = z + inverse(z)`` (voxels).
    """
    shape = image.shape[1:]
    ndim = len(shape)
    sigma = params.morphology_sigma_mm / spacing_mm
    velocity = _smooth_field(rng, ndim, shape, params.control_mm / spacing_mm) * (params.deformation_mm / spacing_mm)
    ventricle = rng.uniform(*params.ventricle_mm) / spacing_mm
    wm = rng.uniform(*params.wm_mm) / spacing_mm
    velocity = velocity + ventricle * _outward(np.isin(label[0], _VENTRICLES), sigma)
    velocity = velocity + wm * _outward(np.isin(label[0], _WM), sigma)
    matrix, shift = _affine_parts(rng, ndim, spacing_mm, params)
    forward = gemini_ops.integrate_velocity(velocity, num_steps=7)
    backward = gemini_ops.integrate_velocity(-velocity, num_steps=7)
    affine = _affine_ddf(shape, matrix, shift)
    ddf = affine + gemini_ops.warp(forward, affine, padding_mode="border")
    # phi^-1(z) = A^-1(z + backward(z)); A^-1(y) = c + M^-1 (y - t - c)
    axes = [torch.arange(n, dtype=torch.float64) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))[None]
    inverse = _affine_ddf(shape, np.linalg.inv(matrix), -np.linalg.inv(matrix) @ shift, grid + backward.double())
    inverse = inverse + backward
    warped = gemini_ops.warp(torch.from_numpy(image)[None], ddf)[0].numpy()
    new_label = warp_label(torch.from_numpy(label)[None], ddf)[0].numpy()
    bias = torch.exp(params.bias_std * _smooth_field(rng, 1, shape, params.bias_control_mm / spacing_mm))[0].numpy()
    out = warped * bias
    out = (out / max(float(out.max()), 1e-6)) ** np.exp(rng.normal(0.0, params.gamma_std))
    out = out + rng.normal(0.0, rng.uniform(*params.noise_std), size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32), new_label, ddf, inverse


def true_pair_ddf(moving_field: PathLike, fixed_field: PathLike) -> torch.Tensor:
    """The generator's deformation from the moving to the fixed subject, on
    the fixed grid: ``ddf(x) = phi_m^-1(phi_f(x)) - x`` (1, ndim, *S), so
    ``warp(moving, ddf)`` is aligned to ``fixed``. Arguments are the
    subjects' ``fields/*.npz`` files. For 2D sets the two slices may lie at
    different heights; this is then the in-plane part of the truth."""
    with np.load(moving_field) as m, np.load(fixed_field) as f:
        inverse, ddf = torch.from_numpy(m["inverse"])[None], torch.from_numpy(f["ddf"])[None]
    return ddf + gemini_ops.warp(inverse, ddf, padding_mode="border")


def _check_size(size: Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    size = tuple(size)
    if len(size) != spatial_dims or not all(isinstance(n, (int, np.integer)) and n >= MIN_SIZE for n in size):
        raise ValueError(
            f"size must hold {spatial_dims} ints >= {MIN_SIZE} for spatial_dims={spatial_dims}, got {size}"
        )
    return tuple(int(n) for n in size)


def _check_split(subjects: int, labeled: int, validation: int, test: int) -> int:
    """Number of unlabelled subjects; a clear error for impossible splits."""
    for name, n in (("subjects", subjects), ("labeled", labeled), ("validation", validation), ("test", test)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    unlabeled = subjects - labeled - validation - test
    if unlabeled < 0:
        raise ValueError(
            f"subjects={subjects} is smaller than labeled + validation + test = {labeled + validation + test}"
        )
    return unlabeled


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch on one thread: the fields are tiny, and on a busy machine a
    thread pool made generation tens of times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _copy_xrays(out: Path, data_dir: Optional[PathLike]) -> list[dict]:
    """Copy the shipped chest X-rays to ``out/xray/<VIEW_SEX>/``; datalist entries."""
    src = _data_file(data_dir, XRAY_DIR)
    entries = []
    for png in sorted(src.glob("*/*.png")):
        rel = Path("xray") / png.parent.name / png.name
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, out / rel)
        entries.append({"image": rel.as_posix(), "group": png.parent.name})
    if not entries:
        raise FileNotFoundError(f"no chest X-ray PNGs under {src}")
    return entries


def make_sample_dataset(
    out_dir: PathLike,
    subjects: int = 16,
    size: Optional[Sequence[int]] = None,
    seed: int = 0,
    spatial_dims: int = 3,
    labeled: int = 1,
    validation: int = 2,
    test: int = 5,
    data_dir: Optional[PathLike] = None,
    labels: str = "tissue",
    params: GeneratorParams = GeneratorParams(),
) -> Path:
    """Write the synthetic set and ``out_dir/datalist.json``; returns its path.

    Files: ``images/subject_XXX.nii.gz`` (float32 in [0, 1]) and, for
    labelled, validation and test subjects, ``labels/subject_XXX.nii.gz``
    (uint8, values of ``LABEL_SETS[labels]``), on a grid of ``size`` voxels
    (default :data:`DEFAULT_SIZE`) with the affine to MNI mm;
    ``fields/subject_XXX.npz`` (``ddf`` and ``inverse`` of
    :func:`random_subject`, for :func:`true_pair_ddf`); ``NOTICE.md``
    (template copyright). Datalist keys ``labeled``, ``validation``, ``test``
    (entries ``{"image", "label"}``) and ``unlabeled`` (``{"image"}``), paths
    relative to ``out_dir``, in that subject order; metadata ``labels``
    (``{"0": "background", ...}``), ``spatial_dims``, ``spacing_mm``,
    ``generator`` (the parameters, seed and label set) and ``deformations``
    (image path -> field path). ``spatial_dims=2``: axial slices (size
    (H, W)) at random heights, and the chest X-rays under ``xray/`` listed in
    ``xray`` (``{"image", "group"}``, group = view_sex folder; unlabelled).
    """
    size = _check_size(DEFAULT_SIZE.get(spatial_dims, ()) if size is None else size, spatial_dims)
    n_unlabeled = _check_split(subjects, labeled, validation, test)
    if labels not in LABEL_SETS:
        raise ValueError(f"labels must be one of {sorted(LABEL_SETS)}, got {labels!r}")
    if not isinstance(params, GeneratorParams):
        raise TypeError(f"params must be a GeneratorParams, got {type(params).__name__}")
    sampler = _TemplateSampler(size, spatial_dims, params.margin_mm, data_dir)
    out = Path(out_dir)
    for folder in ("images", "labels", "fields"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    split = ["labeled"] * labeled + ["validation"] * validation + ["test"] * test + ["unlabeled"] * n_unlabeled
    datalist: dict = {"labeled": [], "unlabeled": [], "validation": [], "test": []}
    deformations = {}
    centre = None if spatial_dims == 3 else sampler.affine[2, 3]
    for i, part in enumerate(split):
        rng = np.random.default_rng([seed, i])
        z_mm = None if centre is None else params.slice_z_mm + rng.uniform(-1.0, 1.0) * params.slice_range_mm
        with _single_thread():
            image, label = sampler.sample(z_mm)
            img, lab, ddf, inverse = random_subject(image, label, sampler.spacing, rng, params)
        if labels == "tissue":
            lab = _TISSUE_OF_STRUCTURE[lab]
        name = f"subject_{i:03d}"
        entry = {"image": f"images/{name}.nii.gz"}
        save_nifti(img[0], sampler.affine, out / entry["image"], "synthetic subject from MNI152 2009a")
        if part != "unlabeled":
            entry["label"] = f"labels/{name}.nii.gz"
            save_nifti(lab[0], sampler.affine, out / entry["label"], f"{labels} labels, see datalist.json")
        deformations[entry["image"]] = f"fields/{name}.npz"
        np.savez_compressed(out / deformations[entry["image"]], ddf=ddf[0].numpy(), inverse=inverse[0].numpy())
        datalist[part].append(entry)
    if spatial_dims == 2:
        datalist["xray"] = _copy_xrays(out, data_dir)
    datalist["labels"] = {str(k): v for k, v in LABEL_SETS[labels].items()}
    datalist["spatial_dims"] = spatial_dims
    datalist["spacing_mm"] = round(sampler.spacing, 4)
    datalist["generator"] = {"seed": seed, "labels": labels, "size": list(size), **dataclasses.asdict(params)}
    datalist["deformations"] = deformations
    shutil.copyfile(_data_file(data_dir, NOTICE), out / NOTICE)
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path


def make_benchmark(
    out_dir: PathLike, name: str = "brain2d", seed: int = 0, data_dir: Optional[PathLike] = None
) -> Path:
    """Write the shipped benchmark ``name`` (:data:`BENCHMARKS`: structure
    labels, 3 labelled, 2 validation, 12 test, 24 unlabelled subjects)."""
    if name not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {sorted(BENCHMARKS)}, got {name!r}")
    return make_sample_dataset(out_dir, seed=seed, data_dir=data_dir, labels="structures", **BENCHMARKS[name])


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Command-line entry point; returns the datalist path."""
    parser = argparse.ArgumentParser(prog="python -m gemini_dcl.sample_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="output folder (created)")
    parser.add_argument(
        "--benchmark",
        choices=sorted(BENCHMARKS),
        help="write a shipped benchmark (other options except --seed ignored)",
    )
    parser.add_argument("--subjects", type=int, default=16, help="number of subjects (default 16)")
    parser.add_argument("--size", type=int, nargs="+", help="grid size, D H W (3D) or H W (2D)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3), help="3D volumes or 2D slices + X-rays")
    parser.add_argument("--labels", default="tissue", choices=sorted(LABEL_SETS), help="label set (default tissue)")
    parser.add_argument("--labeled", type=int, default=1)
    parser.add_argument("--validation", type=int, default=2)
    parser.add_argument("--test", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        if args.benchmark:
            path = make_benchmark(args.out_dir, args.benchmark, args.seed)
        else:
            path = make_sample_dataset(
                args.out_dir,
                args.subjects,
                args.size,
                args.seed,
                args.dims,
                args.labeled,
                args.validation,
                args.test,
                labels=args.labels,
            )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(path)
    return path


if __name__ == "__main__":
    main()
