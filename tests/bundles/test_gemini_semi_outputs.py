"""What the trained gemini_semi bundle produces through the MONAI CLI:
evaluation metrics, inference NIfTI (affine and shape kept) and registration
NIfTI (``verify_net_in_out`` and the TorchScript export: test_bundle_conventions)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from gemini_semi_support import LABEL_VALUES, bundle_command, run
from monai.inferers import SlidingWindowInferer

import gemini_ops
from gemini_dcl.datalist import load_datalist
from gemini_dcl.networks import GEMINI

pytestmark = pytest.mark.slow


def _tiny_network() -> GEMINI:
    return GEMINI(3, 1, len(LABEL_VALUES), channels=[8] * 9, deformer_channels=[8] * 5)


def test_evaluate(trained_bundle: Path, tiny_data: Path) -> None:
    run(bundle_command("run", ["train", "evaluate"], trained_bundle, datalist=tiny_data))
    out = trained_bundle / "runs" / "train" / "eval"
    summary = json.loads((out / "summary.json").read_text())
    seg_rows = list(csv.DictReader(open(out / "segmentation.csv")))
    reg_rows = list(csv.DictReader(open(out / "registration.csv")))
    n_test = len(load_datalist(tiny_data)["test"])
    assert summary["test_cases"] == n_test
    assert len(seg_rows) == n_test * (len(LABEL_VALUES) - 1)
    assert {r["class"] for r in seg_rows} == {"csf", "grey_matter", "white_matter"}
    dice = [float(r["dice"]) for r in seg_rows]
    assert all(0 <= d <= 1 for d in dice)
    assert summary["segmentation"]["mean_dice"] == pytest.approx(np.nanmean(dice))
    hd = [float(r["hd95_mm"]) for r in seg_rows]
    assert all(h >= 0 for h in hd if np.isfinite(h))
    # every ordered pair of the test cases, with Dice in [0, 1] and folding a percentage
    assert summary["registration"]["pairs"] == len(reg_rows) == n_test * (n_test - 1)
    for r in reg_rows:
        assert 0 <= float(r["dice_before"]) <= 1 and 0 <= float(r["dice_after"]) <= 1
        assert 0 <= float(r["dice_after_linear"]) <= 1
        assert 0 <= float(r["folding_percent"]) <= 100
    for key in ("dice_after", "dice_after_linear"):
        assert summary["registration"][f"mean_{key}"] == pytest.approx(np.mean([float(r[key]) for r in reg_rows]))


def test_inference_keeps_affine_and_shape(trained_bundle: Path, tiny_data: Path, tmp_path: Path) -> None:
    """A non-RAS input of another shape: the segmentation comes back on the
    input's own grid, with the dataset's label values."""
    src = nib.load(load_datalist(tiny_data)["test"][0]["image"])
    data = np.asarray(src.dataobj)[::-1, :, 1:15].copy()  # flip x (LAS) and change the shape
    affine = src.affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 1, 1], [0, 0, 0, 1.0]])
    path = tmp_path / "las.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    out_dir = tmp_path / "seg"
    run(
        bundle_command(
            "run",
            ["inference"],
            trained_bundle,
            "--model_path",
            str(trained_bundle / "runs" / "train" / "model.pt"),
            "--input_files",
            repr([str(path)]),
            "--output_dir",
            str(out_dir),
            datalist=tiny_data,
        )
    )
    seg = nib.load(out_dir / "las_seg.nii.gz")
    assert seg.shape == data.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    values = set(np.unique(np.asarray(seg.dataobj)).tolist())
    assert values <= set(LABEL_VALUES) and len(values) >= 2

    # the same as segmenting the RAS-reoriented volume and flipping back
    net = _tiny_network().eval()
    net.load_state_dict(torch.load(trained_bundle / "runs" / "train" / "model.pt", weights_only=True))
    x = torch.as_tensor(data[::-1].copy(), dtype=torch.float32)
    x = (x - x.min()) / (x.max() - x.min())
    with torch.no_grad():
        logits = SlidingWindowInferer([16, 16, 16], overlap=0.25)(x[None, None], net)
    expected = logits.argmax(1)[0].numpy()[::-1]
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected)


def test_register_outputs(trained_bundle: Path, tiny_data: Path) -> None:
    weights = str(trained_bundle / "runs" / "train" / "model.pt")
    run(bundle_command("run", ["register"], trained_bundle, "--model_path", weights, datalist=tiny_data))
    out = trained_bundle / "registration"
    report = json.loads((out / "registration.json").read_text())
    test = load_datalist(tiny_data)["test"]
    assert report["moving"] == test[0]["image"] and report["fixed"] == test[1]["image"]
    fixed = nib.load(test[1]["image"])
    moving = np.asarray(nib.load(test[0]["image"]).dataobj, dtype=np.float32)
    imgs = {name: nib.load(out / f"{name}.nii.gz") for name in ("warped", "warped_label", "ddf", "jacobian")}
    for img in imgs.values():
        np.testing.assert_allclose(img.affine, fixed.affine, atol=1e-5)
    assert imgs["warped"].shape == fixed.shape and imgs["ddf"].shape == (*fixed.shape, 3)

    ddf = torch.as_tensor(np.asarray(imgs["ddf"].dataobj)).movedim(-1, 0)[None].float()
    # the files agree with each other: warped = moving(x + ddf), jacobian = det(I + grad ddf)
    m = torch.as_tensor(moving)
    warped = gemini_ops.warp(((m - m.min()) / (m.max() - m.min()))[None, None], ddf)[0, 0].numpy()
    np.testing.assert_allclose(np.asarray(imgs["warped"].dataobj), warped, atol=1e-4)
    jac = gemini_ops.jacobian_determinant(ddf)[0, 0].numpy()
    np.testing.assert_allclose(np.asarray(imgs["jacobian"].dataobj), jac, atol=1e-4)
    assert report["folding_percent"] == pytest.approx(100 * float((jac <= 0).mean()), abs=1e-6)

    moving_label = torch.as_tensor(np.asarray(nib.load(test[0]["label"]).dataobj).astype(np.float32))
    expected_label = gemini_ops.warp(moving_label[None, None], ddf, "nearest")[0, 0].numpy()
    np.testing.assert_array_equal(np.asarray(imgs["warped_label"].dataobj), expected_label.astype(np.int32))
    assert 0 <= report["dice_before"] <= 1 and 0 <= report["dice_after"] <= 1
