"""gemini_dcl.figures: PNG files written, valid and non-empty; clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import gemini_ops
from gemini_dcl.figures import checkerboard, experiment_figure, overlay_figure, registration_panel, training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert min(im.size) > 100
        # not a blank canvas
        assert np.asarray(im.convert("L")).std() > 1.0


@pytest.mark.parametrize("shape", [(16, 20, 12), (24, 28)])
def test_overlay_figure(tmp_path, shape):
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(np.float32)
    label = rng.integers(0, 4, shape)
    pred = torch.from_numpy(rng.integers(0, 4, shape))[None, None]  # leading singleton axes are fine
    path = overlay_figure(image[None], label, pred, tmp_path / "sub" / "overlay.png", title="t")
    assert path == tmp_path / "sub" / "overlay.png"
    assert_png(path)
    assert_png(overlay_figure(image, path=tmp_path / "image_only.png"))


@pytest.mark.parametrize("shape", [(12, 16, 10), (20, 24)])
def test_registration_panel(tmp_path, shape):
    ndim = len(shape)
    moving = torch.rand(1, 1, *shape)
    ddf = torch.randn(1, ndim, *shape) * 1.5  # rough enough to fold somewhere
    warped = gemini_ops.warp(moving, ddf)
    jac = gemini_ops.jacobian_determinant(ddf)
    path = registration_panel(moving, torch.rand(1, 1, *shape), warped, ddf, jac, tmp_path / "reg.png")
    assert_png(path)


def test_training_curves_from_dict_records_and_files(tmp_path):
    history = {"epoch": [1, 2, 3, 4], "loss": [1.0, 0.7, 0.5, 0.4], "dice": [0.1, 0.4, 0.6, 0.7]}
    assert_png(training_curves(history, tmp_path / "dict.png"))
    records = [dict(zip(history, v)) for v in zip(*history.values())]
    assert_png(training_curves(records, tmp_path / "records.png"))
    (tmp_path / "h.json").write_text(json.dumps(records))
    assert_png(training_curves(tmp_path / "h.json", tmp_path / "json.png"))
    lines = ["epoch,loss,dice,time"] + [f"{r['epoch']},{r['loss']},{r['dice']},t{i}" for i, r in enumerate(records)]
    (tmp_path / "h.csv").write_text("\n".join(lines) + "\n")
    assert_png(training_curves(tmp_path / "h.csv", tmp_path / "csv.png"))


def test_checkerboard_alternates():
    a, b = np.zeros((8, 8)), np.ones((8, 8))
    board = checkerboard(a, b, tiles=2)
    assert board[0, 0] == 0 and board[0, 7] == 1 and board[7, 0] == 1 and board[7, 7] == 0


def test_figures_bad_input(tmp_path):
    with pytest.raises(ValueError, match="label"):
        overlay_figure(np.zeros((8, 8)), np.zeros((8, 9)), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="image"):
        overlay_figure(np.zeros((2, 8, 8, 8, 8)), path=tmp_path / "x.png")
    with pytest.raises(ValueError, match="ddf"):
        img = np.zeros((8, 8))
        registration_panel(img, img, img, np.zeros((3, 8, 8)), img, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        training_curves(tmp_path / "missing.csv", tmp_path / "x.png")
    with pytest.raises(ValueError, match="x_key"):
        training_curves({"loss": [1, 2]}, tmp_path / "x.png", x_key="epoch")


def test_experiment_figure(tmp_path):
    from gemini_dcl.experiment import paired_difference

    rng = np.random.default_rng(1)
    per_subject = {name: rng.random((3, 6)).tolist() for name in ("a", "b", "c")}
    arms = {
        name: {"seeds": [0, 1, 2], "mean_dice": np.mean(v, 1).tolist(), "per_subject_dice": v}
        for name, v in per_subject.items()
    }
    comparisons = [{"a": "a", "b": "b", **paired_difference(per_subject["a"], per_subject["b"])}]
    results = {"experiment": "semi", "settings": {"seeds": [0, 1, 2]}, "arms": arms, "comparisons": comparisons}
    small = experiment_figure(results, tmp_path / "one" / "r.png")
    assert_png(small)
    arms.update({f"x{i}": arms["a"] for i in range(12)})
    with Image.open(small) as a, Image.open(experiment_figure(results, tmp_path / "r2.png")) as b:
        assert b.size[1] > a.size[1]  # one row per arm
