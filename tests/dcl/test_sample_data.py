"""gemini_dcl.sample_data: shipped data, determinism, affines, label alignment,
true deformations, datalist, 2D set, the 2D benchmark, argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import gemini_ops
from gemini_dcl import sample_data
from gemini_dcl.registration import dice_per_class
from gemini_dcl.sample_data import (
    DATA_DIR,
    DEFAULT_SIZE,
    STRUCTURE_NAMES,
    load_template,
    main,
    make_sample_dataset,
    random_subject,
    template_on_grid,
    true_pair_ddf,
)

TISSUE = np.array([0, 1, 1, 2, 2, 2, 3, 3])  # structure value -> tissue (0 bg, 1 CSF, 2 GM, 3 WM)

SIZE = (24, 28, 24)
SPLIT = {"subjects": 6, "labeled": 1, "validation": 1, "test": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("sd3")
    return make_sample_dataset(out, size=SIZE, seed=3, **SPLIT)


def read(path):
    img = nib.load(path)
    return np.asarray(img.dataobj), img


def labelled_entries(datalist):
    return datalist["labeled"] + datalist["validation"] + datalist["test"]


def correlation_ratio(image, label):
    """Share of the intensity variance explained by the label classes (eta^2)."""
    classes = np.unique(label)
    means = np.array([image[label == c].mean() for c in classes])
    counts = np.array([(label == c).sum() for c in classes])
    return float((counts * (means - image.mean()) ** 2).sum() / (image.size * image.var()))


def test_shipped_data_small_and_with_notice():
    total = sum(f.stat().st_size for f in DATA_DIR.rglob("*") if f.is_file())
    assert total < 10 * 2**20
    notice = (DATA_DIR / "NOTICE.md").read_text()
    assert "Copyright (C) 1993-2009 Louis Collins" in notice and "ChestX-ray14" in notice
    assert len(list((DATA_DIR / "chestxray").glob("*_*/*.png"))) == 16


def test_shipped_template_geometry():
    image, label, affine = load_template()
    assert image.shape == label.shape and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert set(np.unique(label)) == set(STRUCTURE_NAMES)
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    # left structures (4 cortical GM, 6 WM) lie at MNI x < 0, right ones (5, 7) at x > 0
    x_mm = affine[0, 0] * np.indices(label.shape)[0] + affine[0, 3]
    for left, right in ((4, 5), (6, 7)):
        assert x_mm[label == left].max() < 1.0 and x_mm[label == right].min() > -1.0
    # ventricles are CSF-dark, deep grey matter is grey: intensity order as their tissue
    means = {v: image[label == v].mean() for v in STRUCTURE_NAMES}
    assert means[2] < means[3] < means[6] and means[1] < means[4] < means[6]
    # the ventricles are deep: no ventricle voxel touches the background
    assert not (ndimage.binary_dilation(label == 2, iterations=2) & (label == 0)).any()
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), 2.0)
    # MNI (0, 0, 0) is the anterior commissure: inside the brain
    origin = np.round(np.linalg.inv(affine) @ [0, 0, 0, 1])[:3].astype(int)
    assert label[tuple(origin)] > 0

    # the symmetric template mirrored about x = 0 mm through the affine maps onto itself;
    # half a voxel of error in the affine would blur that match
    def mirror(offset_vox):
        grid = np.indices(image.shape).astype(float)
        x_mm = affine[0, 0] * grid[0] + affine[0, 3]
        grid[0] = (-x_mm - affine[0, 3]) / affine[0, 0] + offset_vox
        return ndimage.map_coordinates(image, grid, order=1)

    err = np.abs(mirror(0.0) - image).mean()
    assert err < 0.6 * np.abs(mirror(0.5) - image).mean()


def test_template_on_grid_matches_independent_resampling():
    image, label, t_affine = load_template()
    img, lab, affine = template_on_grid(SIZE)
    assert img.shape == lab.shape == (1, *SIZE)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    np.testing.assert_allclose(spacing, spacing[0])
    assert nib.aff2axcodes(affine) == ("R", "A", "S")
    coords = np.linalg.inv(t_affine) @ affine @ np.vstack([np.indices(SIZE).reshape(3, -1), np.ones(np.prod(SIZE))])
    ref = ndimage.map_coordinates(image, coords[:3], order=1).reshape(SIZE)
    assert np.corrcoef(ref.ravel(), img[0].ravel())[0, 1] > 0.97
    ref_lab = ndimage.map_coordinates(label, coords[:3], order=0).reshape(SIZE)
    assert (ref_lab == lab[0]).mean() > 0.8
    # tissue intensities of the template on the grid: WM > GM > CSF > background
    tissue = TISSUE[lab[0]]
    means = [img[0][tissue == c].mean() for c in range(4)]
    assert means[3] > means[2] > means[1] > means[0]
    assert correlation_ratio(img[0], tissue) > 0.7


def test_random_subject_is_diffeomorphic_and_labels_follow():
    img, lab, affine = template_on_grid(SIZE)
    spacing = float(np.linalg.norm(affine[:3, 0]))
    inside = torch.from_numpy(ndimage.binary_erosion(lab[0] > 0, iterations=2))
    for seed in range(3):
        new_img, new_lab, ddf, inverse = random_subject(img, lab, spacing, np.random.default_rng(seed))
        assert float(gemini_ops.folding_fraction(ddf)) == 0.0
        assert ddf.abs().max() > 0.5  # it does deform
        expected = gemini_ops.warp(torch.from_numpy(lab).float()[None], ddf, mode="nearest")[0].numpy()
        np.testing.assert_array_equal(new_lab, expected.astype(np.uint8))
        # inverse(phi(x)) + ddf(x) = 0: phi^-1 undoes phi (to interpolation error) inside the head
        residual = (ddf + gemini_ops.warp(inverse, ddf, padding_mode="border")).norm(dim=1)[0]
        assert residual[inside].mean() < 0.05 * ddf.norm(dim=1)[0][inside].mean()


def test_true_pair_ddf_aligns_subjects(dataset):
    root = dataset.parent
    datalist = json.loads(dataset.read_text())
    a, b = datalist["test"]
    fields = datalist["deformations"]
    lab_a, lab_b = (torch.from_numpy(read(root / e["label"])[0].astype(np.int64))[None, None] for e in (a, b))
    ddf = true_pair_ddf(root / fields[a["image"]], root / fields[b["image"]])
    assert ddf.shape == (1, 3, *SIZE)
    warped = gemini_ops.warp(lab_a.float(), ddf, mode="nearest").long()
    before, after = (dice_per_class(x, lab_b, 4).nanmean().item() for x in (lab_a, warped))
    assert after > before + 0.1 and after > 0.7
    # a subject to itself: the identity
    self_ddf = true_pair_ddf(root / fields[a["image"]], root / fields[a["image"]])
    inside = read(root / a["label"])[0] > 0
    assert self_ddf.norm(dim=1)[0][torch.from_numpy(inside)].mean() < 0.1


def test_dataset_files_affines_and_alignment(dataset):
    root = dataset.parent
    datalist = json.loads(dataset.read_text())
    assert {"labeled", "unlabeled", "validation", "test"} <= set(datalist)
    counts = {k: len(datalist[k]) for k in ("labeled", "validation", "test", "unlabeled")}
    assert counts == {"labeled": 1, "validation": 1, "test": 2, "unlabeled": 2}
    assert all(set(e) == {"image"} for e in datalist["unlabeled"])
    assert datalist["labels"] == {"0": "background", "1": "csf", "2": "grey_matter", "3": "white_matter"}
    assert datalist["generator"]["seed"] == 3 and datalist["generator"]["deformation_mm"] > 0
    assert sorted(datalist["deformations"]) == sorted(
        e["image"] for e in datalist["unlabeled"] + labelled_entries(datalist)
    )
    assert all((root / f).is_file() for f in datalist["deformations"].values())
    assert len(list((root / "labels").glob("*.nii.gz"))) == 4  # no labels written for unlabelled subjects
    _, _, grid_affine = template_on_grid(SIZE)
    for entry in datalist["unlabeled"] + labelled_entries(datalist):
        assert not Path(entry["image"]).is_absolute() and (root / entry["image"]).is_file()
        image, nii = read(root / entry["image"])
        assert image.shape == SIZE and image.dtype == np.float32 and image.min() >= 0 and image.max() <= 1
        np.testing.assert_allclose(nii.affine, grid_affine, atol=1e-5)
        np.testing.assert_allclose(nii.header.get_zooms(), np.linalg.norm(grid_affine[:3, :3], axis=0), rtol=1e-6)
        np.testing.assert_allclose(nii.header.get_zooms(), datalist["spacing_mm"], rtol=1e-4)
    for entry in labelled_entries(datalist):
        image, _ = read(root / entry["image"])
        label, nii = read(root / entry["label"])
        assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1, 2, 3}
        np.testing.assert_allclose(nii.affine, grid_affine, atol=1e-5)
        means = [image[label == c].mean() for c in range(4)]
        assert means[3] > means[2] > means[1] > means[0]
        # labels sit on the image: any one-voxel shift explains less of the intensity
        aligned = correlation_ratio(image, label)
        for axis in range(3):
            for step in (-1, 1):
                assert aligned > correlation_ratio(image, np.roll(label, step, axis=axis)) + 0.02
    assert (root / "NOTICE.md").read_text() == (DATA_DIR / "NOTICE.md").read_text()


def test_deterministic_per_seed(dataset, tmp_path):
    again = make_sample_dataset(tmp_path / "again", size=SIZE, seed=3, **SPLIT)
    other = make_sample_dataset(tmp_path / "other", size=SIZE, seed=4, **SPLIT)
    files = sorted(p.relative_to(dataset.parent) for p in dataset.parent.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again.parent) for p in again.parent.rglob("*") if p.is_file())
    for rel in files:
        assert (dataset.parent / rel).read_bytes() == (again.parent / rel).read_bytes(), rel
    first = read(dataset.parent / "images/subject_000.nii.gz")[0]
    assert not np.allclose(first, read(other.parent / "images/subject_000.nii.gz")[0])


def test_cli_default_split(tmp_path, capsys):
    path = main([str(tmp_path), "--size", "16", "20", "16"])
    assert capsys.readouterr().out.strip() == str(path)
    datalist = json.loads(path.read_text())
    assert [len(datalist[k]) for k in ("labeled", "unlabeled", "validation", "test")] == [1, 8, 2, 5]
    assert read(tmp_path / datalist["test"][0]["image"])[0].shape == (16, 20, 16)
    assert template_on_grid(DEFAULT_SIZE[3])[0].shape == (1, *DEFAULT_SIZE[3])


@pytest.mark.parametrize(("name", "shape", "spacing"), [("brain2d", (64, 80), 2.531), ("brain3d", (40, 48, 40), 4.3)])
def test_benchmark_has_headroom(tmp_path, name, shape, spacing):
    """The shipped benchmarks (the commands the docs show): splits, structure
    labels, true voxel size, and registration headroom (identity Dice far
    below the true deformation's)."""
    path = main([str(tmp_path), "--benchmark", name])
    root, datalist = path.parent, json.loads(path.read_text())
    assert [len(datalist[k]) for k in ("labeled", "unlabeled", "validation", "test")] == [3, 24, 2, 12]
    assert datalist["labels"] == {str(k): v for k, v in STRUCTURE_NAMES.items()}
    nii = nib.load(root / datalist["test"][0]["image"])
    assert nii.shape == shape
    np.testing.assert_allclose(nii.header.get_zooms(), datalist["spacing_mm"], rtol=1e-4)
    np.testing.assert_allclose(datalist["spacing_mm"], spacing, atol=1e-3)
    identity, truth = [], []
    k = len(STRUCTURE_NAMES)
    for a, b in zip(datalist["test"][:-1], datalist["test"][1:]):
        la, lb = (torch.from_numpy(read(root / e["label"])[0].astype(np.int64))[None, None] for e in (a, b))
        ddf = true_pair_ddf(root / datalist["deformations"][a["image"]], root / datalist["deformations"][b["image"]])
        identity.append(dice_per_class(la, lb, k).nanmean().item())
        truth.append(dice_per_class(gemini_ops.warp(la.float(), ddf, mode="nearest").long(), lb, k).nanmean().item())
    assert np.mean(truth) > np.mean(identity) + 0.15


def test_2d_set(tmp_path):
    path = make_sample_dataset(tmp_path, subjects=3, labeled=1, validation=1, test=0, spatial_dims=2, size=(40, 48))
    root = path.parent
    datalist = json.loads(path.read_text())
    assert datalist["spatial_dims"] == 2
    entry = datalist["labeled"][0]
    image, nii = read(root / entry["image"])
    label, _ = read(root / entry["label"])
    assert image.shape == label.shape == (40, 48)
    assert nib.aff2axcodes(nii.affine) == ("R", "A", "S")
    means = [image[label == c].mean() for c in range(4)]
    assert means[3] > means[2] > means[1] > means[0]
    xrays = datalist["xray"]
    assert len(xrays) == 16 and {e["group"] for e in xrays} == {"AP_F", "AP_M", "PA_F", "PA_M"}
    for e in xrays:
        assert e["image"].startswith(f"xray/{e['group']}/")
        with Image.open(root / e["image"]) as im:
            assert im.mode == "L" and im.size == (128, 128)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"size": (32, 32)}, "size"),
        ({"size": (32, 4, 32)}, "size"),
        ({"subjects": 3}, "subjects"),
        ({"labeled": -1}, "labeled"),
        ({"labels": "lobes"}, "labels"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sample_dataset(tmp_path, **kwargs)


def test_missing_data_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="mni152"):
        make_sample_dataset(tmp_path / "out", data_dir=tmp_path / "nowhere")


def test_cli_bad_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tmp_path), "--size", "32", "32"])
    assert exc.value.code == 2
    assert "size" in capsys.readouterr().err


def test_package_data_lives_in_the_package():
    assert DATA_DIR == Path(sample_data.__file__).resolve().parent / "data"
