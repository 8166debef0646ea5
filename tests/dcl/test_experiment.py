"""gemini_dcl.experiment at a tiny size: the results.json layout, numbers
recomputed independently (numpy Dice from the files, the saved weights loaded
into a network built here), the outputs, argument errors; and the GEMINI
flow-layer init option the experiment uses."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from gemini_dcl.experiment import find_bundles, main, paired_difference
from gemini_dcl.networks import GEMINI
from gemini_dcl.sample_data import make_sample_dataset

CHANNELS = [8, 8, 8, 8, 8, 8, 8, 8, 8]
DEFORMER = [8, 8, 8, 8, 8]
TINY = ["--channels", *map(str, CHANNELS), "--deformer-channels", *map(str, DEFORMER), "--max-pairs", "2"]


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp_data")
    return make_sample_dataset(
        out, subjects=7, size=(24, 32), spatial_dims=2, labels="structures", labeled=2, validation=1, test=3, seed=5
    )


def numpy_dice(pred: np.ndarray, target: np.ndarray, classes) -> float:
    """Mean over the foreground classes present in either map of 2|P&T|/(|P|+|T|)."""
    scores = []
    for c in classes:
        p, t = pred == c, target == c
        if p.sum() + t.sum():
            scores.append(2 * (p & t).sum() / (p.sum() + t.sum()))
    return float(np.mean(scores))


def read(path):
    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def semi(datalist, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp_semi")
    main(["semi", "--datalist", str(datalist), "--seeds", "0", "--iterations", "3", "--out", str(out), *TINY])
    return out, json.loads((out / "results.json").read_text())


def test_semi_results_layout(semi):
    out, results = semi
    arms = results["arms"]
    expected = {
        "gemini_semi",
        "gemini_semi_no_integration",
        "supervised_only",
        "atlas_copy",
        "gemini_semi/atlas_registration",
        "gemini_semi_no_integration/atlas_registration",
    }
    assert set(arms) == expected
    for arm in arms.values():
        assert arm["seeds"] == [0] and len(arm["per_subject_dice"]) == 1 and len(arm["per_subject_dice"][0]) == 3
        np.testing.assert_allclose(arm["mean_dice"][0], np.mean(arm["per_subject_dice"][0]), rtol=1e-6)
    for name in ("gemini_semi", "gemini_semi_no_integration"):
        reg = arms[name]["registration"]
        assert {"dice_identity", "dice_after", "dice_ceiling", "folding_percent", "gvs_after"} <= set(reg) | set(
            reg["mean"]
        )
        assert reg["dice_ceiling"] > reg["dice_identity"]  # the generator's truth registers
    assert "registration" not in arms["supervised_only"]
    assert results["settings"]["class_names"][2] == "ventricles"
    assert (out / "results.md").read_text().count("| `") >= len(expected)
    assert (out / "results.png").stat().st_size > 1000
    assert len(results["commands"]) == 3 and all("monai.bundle run run" in c for c in results["commands"])


def test_semi_numbers_recomputed_independently(semi, datalist):
    out, results = semi
    data = json.loads(datalist.read_text())
    root = datalist.parent
    classes = range(1, 8)
    labels = [read(root / e["label"]) for e in data["test"]]
    atlas = read(root / data["labeled"][0]["label"])
    expected = [numpy_dice(atlas, lab, classes) for lab in labels]
    np.testing.assert_allclose(results["arms"]["atlas_copy"]["per_subject_dice"][0], expected, rtol=1e-5)
    # identity registration Dice of the consecutive test pairs (0 -> 1, 1 -> 2)
    identity = np.mean([numpy_dice(labels[i], labels[i + 1], classes) for i in range(2)])
    np.testing.assert_allclose(results["arms"]["gemini_semi"]["registration"]["dice_identity"], identity, rtol=1e-5)
    # the trained GEMINI-Semi weights, loaded into a network built here, segment as reported
    net = GEMINI(2, 1, 8, CHANNELS, DEFORMER, integration_steps=7)
    net.load_state_dict(torch.load(out / "runs" / "gemini_semi_seed0" / "models" / "model.pt", weights_only=True))
    net.eval()
    dice = []
    for e, lab in zip(data["test"], labels):
        image = read(root / e["image"]).astype(np.float32)
        image = (image - image.min()) / (image.max() - image.min())  # the bundle's ScaleIntensityd
        with torch.no_grad():
            pred = net(torch.from_numpy(image)[None, None]).argmax(1)[0].numpy()
        dice.append(numpy_dice(pred, lab, classes))
    np.testing.assert_allclose(results["arms"]["gemini_semi"]["per_subject_dice"][0], dice, rtol=1e-4, atol=1e-5)


def test_paired_difference_interval():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 10)), rng.random((2, 10))
    out = paired_difference(a, b)
    diff = a.mean(0) - b.mean(0)
    from scipy import stats

    lo, hi = stats.t.interval(0.95, 9, loc=diff.mean(), scale=stats.sem(diff))
    np.testing.assert_allclose(out["ci95"], [lo, hi])
    assert out["fraction_positive"] == np.mean(diff > 0)


def test_mip_2d_arms(datalist, tmp_path):
    results = main(
        [
            "mip",
            "--datalist",
            str(datalist),
            "--seeds",
            "0",
            "--iterations",
            "2",
            "--label-counts",
            "1",
            "2",
            "--out",
            str(tmp_path),
            *TINY,
        ]
    )
    expected = {
        f"{arm}/{mode}_{k}" for arm in ("scratch", "gemini_mip") for mode in ("finetune", "probe") for k in (1, 2)
    }
    assert set(results["arms"]) == expected
    assert set(results["skipped_arms"]) == {"gvsl_ncc", "gvsl_mi"}  # the GVSL network is 3D only
    assert "dice_after" in results["arms"]["gemini_mip/finetune_1"]["registration"]["mean"]
    assert json.loads((tmp_path / "results.json").read_text())["arms"].keys() == results["arms"].keys()


def test_bad_arguments(datalist, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["semi", "--datalist", str(datalist), "--out", str(tmp_path), "--bundles", str(tmp_path)])
    assert "--bundles" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["semi", "--datalist", str(tmp_path / "none.json"), "--out", str(tmp_path)])
    assert "none.json" in capsys.readouterr().err
    for extra, match in ((["--arms", "gemini_semi"], "--arms"), (["--roi-size", "8", "8", "8"], "--roi-size")):
        with pytest.raises(SystemExit):
            main(["semi", "--datalist", str(datalist), "--out", str(tmp_path), *extra])
        assert match in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="--bundles"):
        find_bundles(tmp_path)


def test_flow_init_options():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 16, 16)
    flows = {}
    for init in ("kaiming", "small_normal"):
        net = GEMINI(2, 1, 2, CHANNELS, DEFORMER, flow_init=init)
        with torch.no_grad():
            flows[init] = net.flow(net.features(x), net.features(torch.rand(1, 1, 16, 16))).abs().max().item()
        if init == "small_normal":
            w = net.deformer[1].weight
            assert w.abs().max() < 1e-4 and float(net.deformer[1].bias.abs().max()) == 0.0
    # VoxelMorph's init starts at the identity; the authors' at random flows
    assert flows["small_normal"] < 1e-3 < flows["kaiming"]
    with pytest.raises(ValueError, match="flow_init"):
        GEMINI(2, flow_init="zeros")


def test_demo_runs_and_reports(tmp_path):
    from gemini_dcl.demo import main as demo_main

    summary = demo_main(["--out", str(tmp_path), "--iterations", "2"])
    assert set(summary["test_dice"]) == {
        "gemini_semi",
        "gemini_semi/atlas_registration",
        "supervised_only",
        "atlas_copy",
    }
    reg = summary["registration"]
    assert reg["dice_ceiling"] > reg["dice_identity"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert summary["test_dice"]["atlas_copy"] == results["arms"]["atlas_copy"]["mean_dice"][0]
    for name in ("registration.png", "overlay.png"):
        assert (tmp_path / "figures" / name).stat().st_size > 1000
    assert (tmp_path / "results.png").is_file() and (tmp_path / "demo_summary.json").is_file()


def test_merge_seeds(semi, tmp_path):
    out, results = semi
    merged = main(["merge", "--out", str(tmp_path / "m"), str(out), str(out)])
    assert merged["settings"]["seeds"] == [0, 0]
    for name, arm in results["arms"].items():
        assert merged["arms"][name]["per_subject_dice"] == arm["per_subject_dice"] * 2
    for a, b in zip(merged["comparisons"], results["comparisons"]):
        np.testing.assert_allclose(a["mean"], b["mean"], rtol=1e-9, atol=1e-12)
    reg = merged["arms"]["gemini_semi"]["registration"]
    np.testing.assert_allclose(
        reg["mean"]["dice_after"], results["arms"]["gemini_semi"]["registration"]["mean"]["dice_after"]
    )
    other = tmp_path / "other"
    other.mkdir()
    changed = dict(results, settings={**results["settings"], "iterations": 99})
    (other / "results.json").write_text(json.dumps(changed))
    with pytest.raises(SystemExit):
        main(["merge", "--out", str(tmp_path / "m2"), str(out), str(other)])
