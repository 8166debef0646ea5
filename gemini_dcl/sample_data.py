"""Sample data on real anatomy: synthetic brain MRI subjects derived from the
MNI152 2009a template shipped in ``gemini_dcl/data`` (tissue labels 0
background, 1 CSF, 2 grey matter, 3 white matter), and the shipped chest X-rays.

Each subject is the template resampled onto a small grid, deformed by a random
smooth diffeomorphism (a random smooth velocity integrated by scaling and
squaring, ``gemini_ops.integrate_velocity``), with a random bias field,
monotone intensity curve (gamma) and Gaussian noise; its label is warped with
the same displacement by nearest neighbour. Deterministic per seed: subject i
draws from ``numpy.random.default_rng([seed, i])``.

CLI::

    python -m gemini_dcl.sample_data OUT_DIR [--subjects N] [--size D H W] [--seed S] [--dims 2|3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

import gemini_ops

from .registration import warp_label

__all__ = [
    "DATA_DIR",
    "LABEL_NAMES",
    "DEFAULT_SIZE",
    "save_nifti",
    "load_template",
    "template_on_grid",
    "random_subject",
    "make_sample_dataset",
    "main",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
TEMPLATE_IMAGE = "mni152/mni152_2009a_t1_2mm.nii.gz"
TEMPLATE_LABEL = "mni152/mni152_2009a_tissue_2mm.nii.gz"
XRAY_DIR = "chestxray"
NOTICE = "NOTICE.md"
LABEL_NAMES = {0: "background", 1: "csf", 2: "grey_matter", 3: "white_matter"}
DEFAULT_SIZE = {3: (32, 40, 32), 2: (64, 80)}
MIN_SIZE = 8

PathLike = Union[str, Path]


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
        image (X, Y, Z) float32 in [0, 1]; label (X, Y, Z) uint8 in 0..3;
        affine (4, 4) voxel -> MNI mm (RAS).
    """
    img = nib.load(_data_file(data_dir, TEMPLATE_IMAGE))
    lab = nib.load(_data_file(data_dir, TEMPLATE_LABEL))
    if img.shape != lab.shape or not np.allclose(img.affine, lab.affine):
        raise ValueError(f"template image {img.shape} and label {lab.shape} do not share one grid")
    image = np.asarray(img.dataobj, dtype=np.float32) / 255.0
    return image, np.asarray(lab.dataobj, dtype=np.uint8), img.affine


def template_on_grid(
    size: Sequence[int], spatial_dims: int = 3, margin_mm: float = 8.0, data_dir: Optional[PathLike] = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The template resampled onto an isotropic grid of ``size`` voxels that
    holds the labelled brain plus ``margin_mm`` (centred; spacing = the
    largest extent / size ratio). 2D: the axial plane through the centre,
    spanning the first two axes.

    Returns:
        image (1, *size) float32 in [0, 1]; label (1, *size) uint8;
        affine (4, 4) voxel -> MNI mm of the grid (for 2D, index (i, j, 0)).
    """
    size = _check_size(size, spatial_dims)
    image, label, t_affine = load_template(data_dir)
    t_spacing = np.linalg.norm(t_affine[:3, :3], axis=0)
    inside = np.argwhere(label > 0)
    lo, hi = inside.min(0), inside.max(0)
    centre_vox = (lo + hi) / 2
    extent_mm = (hi - lo + 1) * t_spacing + 2 * margin_mm
    spacing = float(np.max(extent_mm[:spatial_dims] / np.asarray(size)))
    full = (*size, 1) if spatial_dims == 2 else size
    directions = t_affine[:3, :3] / t_spacing
    affine = np.eye(4)
    affine[:3, :3] = directions * spacing
    centre_mm = t_affine[:3, :3] @ centre_vox + t_affine[:3, 3]
    affine[:3, 3] = centre_mm - affine[:3, :3] @ ((np.asarray(full) - 1) / 2)

    # sample points of the new grid in template voxels
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in full], indexing="ij")).reshape(3, -1)
    to_template = np.linalg.inv(t_affine) @ affine
    coords = to_template[:3, :3] @ grid + to_template[:3, 3:]
    # anti-aliasing before subsampling by spacing / template spacing
    sigma = 0.4 * np.maximum(spacing / t_spacing - 1.0, 0.0)

    def resample(vol: np.ndarray) -> np.ndarray:
        smooth = ndimage.gaussian_filter(vol, sigma, mode="constant")
        return ndimage.map_coordinates(smooth, coords, order=1, mode="constant").reshape(size)

    new_image = np.clip(resample(image), 0.0, 1.0).astype(np.float32)
    # labels by the argmax of resampled one-hot maps: no aliasing, no class drift
    votes = np.stack([resample((label == c).astype(np.float32)) for c in LABEL_NAMES])
    new_label = votes.argmax(0).astype(np.uint8)
    return new_image[None], new_label[None], affine


def _smooth_field(rng: np.random.Generator, channels: int, shape: Sequence[int], control_vox: float) -> torch.Tensor:
    """Standard-normal values on a control grid every ``control_vox`` voxels,
    linearly interpolated to ``shape``: (1, channels, *shape) float32."""
    coarse_shape = [max(2, int(np.ceil((n - 1) / control_vox)) + 1) for n in shape]
    coarse = torch.from_numpy(rng.standard_normal((1, channels, *coarse_shape)).astype(np.float32))
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(coarse, size=tuple(shape), mode=mode, align_corners=True)


def random_subject(
    image: np.ndarray,
    label: np.ndarray,
    spacing_mm: float,
    rng: np.random.Generator,
    deformation_mm: float = 4.0,
    control_mm: float = 32.0,
    bias_std: float = 0.2,
    gamma_std: float = 0.2,
    noise_std: tuple[float, float] = (0.01, 0.04),
) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """One synthetic subject from ``image``/``label`` (1, *S), 2D or 3D.

    Velocity: normal values of std ``deformation_mm`` on control points every
    ``control_mm``, interpolated, integrated in 7 scaling-and-squaring steps.
    Bias field: ``exp(bias_std * field)`` on control points every
    ``2 * control_mm``. Intensity curve ``x ** exp(N(0, gamma_std))`` after
    rescaling to max 1, then noise of std U(``noise_std``), clipped to [0, 1].

    Returns:
        image (1, *S) float32 in [0, 1]; label (1, *S) uint8; ddf (1, ndim, *S).
    """
    shape = image.shape[1:]
    ndim = len(shape)
    velocity = _smooth_field(rng, ndim, shape, control_mm / spacing_mm) * (deformation_mm / spacing_mm)
    ddf = gemini_ops.integrate_velocity(velocity, steps=7)
    warped = gemini_ops.warp(torch.from_numpy(image)[None], ddf)[0].numpy()
    new_label = warp_label(torch.from_numpy(label)[None], ddf)[0].numpy()
    bias = torch.exp(bias_std * _smooth_field(rng, 1, shape, 2 * control_mm / spacing_mm))[0].numpy()
    out = warped * bias
    out = (out / max(float(out.max()), 1e-6)) ** np.exp(rng.normal(0.0, gamma_std))
    out = out + rng.normal(0.0, rng.uniform(*noise_std), size=out.shape)
    return np.clip(out, 0.0, 1.0).astype(np.float32), new_label, ddf


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
) -> Path:
    """Write the synthetic set and ``out_dir/datalist.json``; returns its path.

    Files: ``images/subject_XXX.nii.gz`` (float32 in [0, 1]) and, for
    labelled, validation and test subjects, ``labels/subject_XXX.nii.gz``
    (uint8, :data:`LABEL_NAMES`), on a grid of ``size`` voxels (default
    :data:`DEFAULT_SIZE`) with the affine to MNI mm; ``NOTICE.md`` (template
    copyright). Datalist keys ``labeled``, ``validation``, ``test`` (entries
    ``{"image", "label"}``) and ``unlabeled`` (``{"image"}``), paths relative
    to ``out_dir``, in that subject order. ``spatial_dims=2``: axial slices
    (size (H, W)) and the chest X-rays under ``xray/`` listed in ``xray``
    (``{"image", "group"}``, group = view_sex folder; unlabelled).
    """
    size = _check_size(DEFAULT_SIZE.get(spatial_dims, ()) if size is None else size, spatial_dims)
    n_unlabeled = _check_split(subjects, labeled, validation, test)
    image, label, affine = template_on_grid(size, spatial_dims, data_dir=data_dir)
    spacing = float(np.linalg.norm(affine[:3, 0]))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    split = ["labeled"] * labeled + ["validation"] * validation + ["test"] * test + ["unlabeled"] * n_unlabeled
    datalist: dict = {"labeled": [], "unlabeled": [], "validation": [], "test": []}
    for i, part in enumerate(split):
        with _single_thread():
            img, lab, _ = random_subject(image, label, spacing, np.random.default_rng([seed, i]))
        entry = {"image": f"images/subject_{i:03d}.nii.gz"}
        save_nifti(img[0], affine, out / entry["image"], "synthetic subject from MNI152 2009a")
        if part != "unlabeled":
            entry["label"] = f"labels/subject_{i:03d}.nii.gz"
            save_nifti(lab[0], affine, out / entry["label"], "tissue labels 0 bg 1 CSF 2 GM 3 WM")
        datalist[part].append(entry)
    if spatial_dims == 2:
        datalist["xray"] = _copy_xrays(out, data_dir)
    datalist["labels"] = {str(k): v for k, v in LABEL_NAMES.items()}
    datalist["spatial_dims"] = spatial_dims
    shutil.copyfile(_data_file(data_dir, NOTICE), out / NOTICE)
    path = out / "datalist.json"
    path.write_text(json.dumps(datalist, indent=2) + "\n")
    return path


def main(argv: Optional[Sequence[str]] = None) -> Path:
    """Command-line entry point; returns the datalist path."""
    parser = argparse.ArgumentParser(prog="python -m gemini_dcl.sample_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", help="output folder (created)")
    parser.add_argument("--subjects", type=int, default=16, help="number of subjects (default 16)")
    parser.add_argument("--size", type=int, nargs="+", help="grid size, D H W (3D) or H W (2D)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dims", type=int, default=3, choices=(2, 3), help="3D volumes or 2D slices + X-rays")
    parser.add_argument("--labeled", type=int, default=1)
    parser.add_argument("--validation", type=int, default=2)
    parser.add_argument("--test", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        path = make_sample_dataset(
            args.out_dir, args.subjects, args.size, args.seed, args.dims, args.labeled, args.validation, args.test
        )
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    print(path)
    return path


if __name__ == "__main__":
    main()
