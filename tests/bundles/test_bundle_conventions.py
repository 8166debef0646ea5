"""The model-zoo checks of both bundles with MONAI's own APIs, offline (what
model-zoo's ``ci/verify_bundle.py`` and pre-commit hooks check): JSON
formatting, the metadata against MONAI's schema (``test_metadata_schema``),
the workflow properties of ``train.json``/``inference.json``,
``verify_net_in_out`` and ``ckpt_export`` with ``configs/inference.json``
alone, strict loading of the shipped weights through ``monai.bundle.load``,
run ids, run folders apart from the shipped weights, and the datalist format
read by ``load_decathlon_datalist``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import monai.bundle
import pytest
import torch
import yaml
from gemini_semi_support import REPO
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_net_in_out
from monai.data import load_decathlon_datalist

from gemini_dcl.datalist import SECTIONS, load_datalist
from gemini_dcl.package import sha256_file

BUNDLES = REPO / "bundles"
NAMES = ("gemini_semi", "gemini_mip")
# gemini_semi's defaults are the authors' widths; CI checks its structure at CPU size
SEMI_TINY = {"channels": [8] * 9, "deformer_channels": [8] * 5}
# the configs each bundle's README runs, with the workflow type MONAI checks them as
TRAIN_CONFIGS = {"gemini_semi": ["train.json"], "gemini_mip": ["train.json", "finetune.json"]}


def _overrides(bundle: str, datalist: Path) -> dict:
    return {"datalist": str(datalist), "roi_size": [16, 16, 16]} | (SEMI_TINY if bundle == "gemini_semi" else {})


@pytest.mark.parametrize("path", sorted(BUNDLES.glob("*/configs/*.json")), ids=lambda p: f"{p.parts[-3]}/{p.name}")
def test_json_formatting(path: Path) -> None:
    """pre-commit's ``pretty-format-json --no-sort-keys --indent=4`` and
    ``end-of-file-fixer``: the file is exactly its own reformatting."""
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n", f"reformat {path}"


@pytest.mark.parametrize("bundle", NAMES)
def test_workflow_properties(bundle: str, tiny_data: Path, tmp_path: Path) -> None:
    """``ConfigWorkflow.check_properties()`` finds nothing missing or
    misnamed in ``inference.json`` alone and in every training config."""
    configs = BUNDLES / bundle / "configs"
    kinds = [("inference", "inference.json")] + [("train", c) for c in TRAIN_CONFIGS[bundle]]
    for workflow_type, config in kinds:
        overrides = _overrides(bundle, tiny_data) | ({"pretrained": ""} if config == "finetune.json" else {})
        workflow = ConfigWorkflow(
            config_file=str(configs / config),
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            workflow_type=workflow_type,
            bundle_root=str(tmp_path),
            **overrides,
        )
        workflow.initialize()
        assert workflow.check_properties() == [], (bundle, config)


@pytest.mark.parametrize("bundle", NAMES)
def test_inference_config_alone_verifies_and_exports(bundle: str, tmp_path: Path) -> None:
    """model-zoo's ``verify_data_shape`` and ``verify_torchscript``:
    ``configs/inference.json`` alone, and the weights of ``models/`` (gemini_mip:
    the shipped ones; gemini_semi ships none, so fake ones made from the
    config, as model-zoo's CI does)."""
    root = tmp_path / bundle
    shutil.copytree(BUNDLES / bundle / "configs", root / "configs")
    if (BUNDLES / bundle / "models").is_dir():
        shutil.copytree(BUNDLES / bundle / "models", root / "models")
    config, meta = str(root / "configs" / "inference.json"), str(root / "configs" / "metadata.json")
    overrides = SEMI_TINY if bundle == "gemini_semi" else {}
    weights = root / "models" / "model.pt"
    if bundle == "gemini_semi":
        assert not weights.exists()
        parser = ConfigParser()
        parser.read_config(config)
        parser.update(overrides)
        weights.parent.mkdir(exist_ok=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=str(root), **overrides)
    ts = root / "models" / "verify_model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(weights),
        meta_file=meta,
        config_file=config,
        bundle_root=str(root),
        **overrides,
    )
    exported = torch.jit.load(str(ts))
    parser = ConfigParser()
    parser.read_config(config)
    parser.update(overrides)
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net(x), rtol=1e-5, atol=1e-5)
    # the metadata describes what inference outputs: the network's channels
    pred = json.loads((root / "configs" / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == net(x).shape[1]


@pytest.mark.parametrize("workflow_type", ["train", "inference"])
def test_shipped_weights_load_strictly(workflow_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``monai.bundle.load`` returns gemini_mip's network with every tensor of
    ``models/model.pt``, writing nothing (no sample set); the file matches
    ``large_files.yml`` and what ships stays small."""
    bundle = BUNDLES / "gemini_mip"
    shipped = torch.load(bundle / "models" / "model.pt", weights_only=True)
    monkeypatch.chdir(tmp_path)  # the configs' bundle_root "."
    net = monai.bundle.load("gemini_mip", bundle_dir=str(BUNDLES), workflow_type=workflow_type, device="cpu")
    assert not list(tmp_path.iterdir())
    state = net.state_dict()
    assert list(state) == list(shipped)
    assert all(torch.equal(state[k], shipped[k]) for k in shipped)
    entry = yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"][0]
    assert entry["path"] == "models/model.pt" and entry["hash_val"] == sha256_file(bundle / "models" / "model.pt")
    assert sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file() and "data_" not in str(p)) < 10 << 20


@pytest.mark.parametrize("bundle", NAMES)
def test_run_ids_and_run_folders(bundle: str) -> None:
    """model-zoo's run ids exist (``run`` kept); training writes under
    ``runs/`` and never to the shipped ``models/model.pt``, which inference reads."""
    configs = BUNDLES / bundle / "configs"
    ids = {
        "train.json": {"run", "training"},
        "evaluate.json": {"run", "evaluating"},
        "inference.json": {"run", "inferring"},
    }
    for name, expected in ids.items():
        assert expected <= set(json.loads((configs / name).read_text())), name
    root = Path("/bundle")
    for config in TRAIN_CONFIGS[bundle]:
        parser = ConfigParser()
        parser.read_config(str(configs / config))
        parser["bundle_root"] = str(root)
        ckpt_dir = Path(parser.get_parsed_content("ckpt_dir"))
        assert ckpt_dir.parent == root / "runs"
        assert Path(parser.get_parsed_content("model_path")) == ckpt_dir / "model.pt"
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["bundle_root"] = str(root)
    assert Path(parser.get_parsed_content("model_path")) == root / "models" / "model.pt"


def test_datalist_is_decathlon_format(tiny_data: Path) -> None:
    """Every section reads with MONAI's ``load_decathlon_datalist``, to the
    same absolute paths as the bundles' reader; unknown top-level keys pass."""
    raw = json.loads(tiny_data.read_text())
    raw["labels"] = {"0": "background"}
    extended = tiny_data.parent / "extended.json"
    extended.write_text(json.dumps(raw))
    ours = load_datalist(extended)
    for section in SECTIONS:
        assert load_decathlon_datalist(str(extended), data_list_key=section) == ours[section], section
