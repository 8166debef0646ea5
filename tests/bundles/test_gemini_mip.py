"""gemini_mip bundle through the MONAI CLI: GEMINI-MIP pre-training (GVSL
and 2D: their README commands in test_docs_commands), fine-tune and linear probe from the checkpoint just produced,
torchrun DDP with gloo, resume after SIGKILL, the authors' checkpoint layout,
and reproducible corruptions."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gemini_semi_support import REPO, TINY, env, run
from monai.bundle import ConfigParser

from gemini_dcl.checkpoint import list_checkpoints
from gemini_dcl.engines import read_history
from gemini_dcl.engines.mip import SIMILARITIES, similarity_loss
from gemini_dcl.networks import GEMINI, GVSL
from gemini_dcl.pretrained import read_checkpoint

pytestmark = pytest.mark.slow

CONFIGS = REPO / "bundles" / "gemini_mip" / "configs"
TWO_ITERATIONS = ["--max_epochs", "1", "--epoch_length", "2"]


def mip_command(configs: list[str], bundle_root: Path, datalist: Path, *args: str) -> list[str]:
    """``python -m monai.bundle run`` on the gemini_mip configs with the tiny settings."""
    files = repr([str(CONFIGS / f"{n}.json") for n in configs])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, "--bundle_root", str(bundle_root)]
    cmd += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    return cmd + ["--datalist", str(datalist)] + TINY + list(args)


def finite_history(path: Path, keys: tuple[str, ...]) -> list[dict]:
    train = read_history(path)["train"]
    for record in train:
        for key in keys:
            assert record[key] is not None and math.isfinite(record[key]), (key, record)
        assert record["skipped_steps"] == 0
    return train


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A bundle root after 2 GEMINI-MIP iterations (3D) from the MONAI CLI."""
    root = tmp_path_factory.mktemp("mip")
    run(mip_command(["train"], root, tiny_data, *TWO_ITERATIONS))
    return root


def test_mip_pretraining_3d(pretrained: Path) -> None:
    train = finite_history(
        pretrained / "runs" / "pretrain" / "logs" / "history.jsonl", ("loss_gss", "loss_gvs", "loss_restore")
    )
    assert [r["iteration"] for r in train] == [1, 2]
    assert all(r["loss_restore"] > 0 for r in train)
    state = read_checkpoint(pretrained / "runs" / "pretrain" / "checkpoint_iter00000002.pt")
    # two optimiser steps per iteration for the backbone (parameter 0): the pair step and the restoration step
    assert int(state["optimizer"]["state"][0]["step"]) == 4
    weights = torch.load(pretrained / "runs" / "pretrain" / "model.pt", weights_only=True)
    assert weights["res_conv.3.weight"].shape[0] == 1


@pytest.mark.parametrize("name", SIMILARITIES)
def test_gvsl_similarities(name: str) -> None:
    torch.manual_seed(0)
    fixed = torch.rand(1, 1, 16, 16, 16)
    loss = similarity_loss(name)
    same, other = loss(fixed, fixed), loss(torch.rand_like(fixed), fixed)
    assert torch.isfinite(same) and same < other


def test_finetune_from_pretrained(pretrained: Path, tiny_data: Path) -> None:
    weights = str(pretrained / "runs" / "pretrain" / "model.pt")
    proc = run(mip_command(["finetune"], pretrained, tiny_data, *TWO_ITERATIONS, "--pretrained", weights))
    assert "loaded 72 backbone tensors, 0 missing" in proc.stdout + proc.stderr
    history = read_history(pretrained / "runs" / "finetune" / "logs" / "history.jsonl")
    assert len(history["train"]) == 2 and 0 <= history["val"][0]["val_mean_dice"] <= 1
    weights = torch.load(pretrained / "runs" / "finetune" / "model.pt", weights_only=True)
    assert weights["res_conv.3.weight"].shape[0] == 4
    run(mip_command(["finetune", "evaluate"], pretrained, tiny_data))
    assert (pretrained / "runs" / "finetune" / "eval" / "summary.json").is_file()


def test_linear_probe_keeps_backbone(pretrained: Path, tiny_data: Path) -> None:
    weights = str(pretrained / "runs" / "pretrain" / "model.pt")
    run(mip_command(["finetune", "linear_probe"], pretrained, tiny_data, *TWO_ITERATIONS, "--pretrained", weights))
    before = torch.load(pretrained / "runs" / "pretrain" / "model.pt", weights_only=True)
    after = torch.load(pretrained / "runs" / "probe" / "model.pt", weights_only=True)
    backbone = [k for k in before if k.startswith("unet.")]
    assert len(backbone) == 72
    assert all(torch.equal(before[k], after[k]) for k in backbone), "the probe changed backbone weights"
    ckpt = read_checkpoint(list_checkpoints(pretrained / "runs" / "probe")[-1][1])
    assert len(ckpt["optimizer"]["param_groups"][0]["params"]) == len([k for k in after if k.startswith("res_conv.")])


def test_corruption_reproducible(tiny_data: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"roi_size": [16, 16, 16], "datalist": str(tiny_data)})
    pair = {"image_a": torch.rand(1, 16, 16, 16), "image_b": torch.rand(1, 16, 16, 16)}
    outputs = []
    for _ in range(2):
        augmentation = parser.get_parsed_content("train#pair_augmentation", instantiate=True, lazy=False)
        augmentation.set_random_state(seed=7)
        outputs.append([augmentation(dict(pair)) for _ in range(3)])
    for first, second in zip(*outputs):
        assert set(first) == {"image_a", "image_b", "image_a_corrupt"}
        assert all(torch.equal(torch.as_tensor(first[k]), torch.as_tensor(second[k])) for k in first)
    assert not torch.equal(torch.as_tensor(outputs[0][0]["image_a"]), torch.as_tensor(outputs[0][0]["image_a_corrupt"]))


def test_torchrun_ddp_gloo(tmp_path: Path, tiny_data: Path) -> None:
    cmd = mip_command(["train", "multi_gpu_train"], tmp_path, tiny_data, *TWO_ITERATIONS)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    proc = subprocess.run(torchrun + cmd[1:], cwd=REPO, env=env(threads=1), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert [i for i, _ in list_checkpoints(tmp_path / "runs" / "pretrain")] == [2]
    assert (tmp_path / "runs" / "pretrain" / "model.pt").is_file()


def test_resume_after_sigkill(tmp_path: Path, tiny_data: Path) -> None:
    """SIGKILL after a checkpoint; the same command resumes from it: every
    optimiser step before the checkpoint is kept (Adam's step count is exactly
    two per iteration at the end) and the history has every iteration."""
    total = 8
    cmd = mip_command(["train"], tmp_path, tiny_data, "--max_epochs", "1", "--epoch_length", str(total))
    cmd += ["--save_interval", "2"]
    ckpt_dir = tmp_path / "runs" / "pretrain"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(ckpt_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    saved = [i for i, _ in list_checkpoints(ckpt_dir)]
    assert saved and saved[-1] < total, f"the run was not interrupted mid-way: {saved}"
    resumed = run(cmd)
    assert f"resuming from {ckpt_dir / f'checkpoint_iter{saved[-1]:08d}.pt'}" in resumed.stdout + resumed.stderr
    final = read_checkpoint(list_checkpoints(ckpt_dir)[-1][1])
    assert final["trainer"]["iteration"] == total
    assert int(final["optimizer"]["state"][0]["step"]) == 2 * total
    train = read_history(tmp_path / "runs" / "pretrain" / "logs" / "history.jsonl")["train"]
    assert [r["iteration"] for r in train] == list(range(1, total + 1))


def test_authors_checkpoints_convert_and_finetune(tmp_path: Path, tiny_data: Path) -> None:
    """State dicts in the authors' key layout (GEMINI_SS_MIP 3D/2D with the
    published ``backbone.`` prefix, GVSL) convert; fine-tuning starts from the
    converted 3D one through the CLI."""
    from gemini_dcl.convert import convert_checkpoint
    from gemini_dcl.pretrained import load_pretrained_backbone

    tiny = {"channels": [8] * 9}
    mip3d = GEMINI(3, 1, 1, deformer_channels=[8] * 5, **tiny).state_dict()
    authors = {k.replace("unet.", "backbone.", 1): v for k, v in mip3d.items()}
    torch.save(authors, tmp_path / "GEMINI_SS_MIP_3d_epoch_1000.pth")
    converted = tmp_path / "mip3d.pt"
    run(
        [
            sys.executable,
            "-m",
            "gemini_dcl.convert",
            str(tmp_path / "GEMINI_SS_MIP_3d_epoch_1000.pth"),
            str(converted),
            "--variant",
            "gemini3d",
        ]
    )

    mip2d = GEMINI(2, 1, 1, deformer_channels=[8] * 5, **tiny).state_dict()
    net2d = GEMINI(2, 1, 3, deformer_channels=[8] * 5, **tiny)
    load_pretrained_backbone(convert_checkpoint(mip2d, variant="gemini2d"), net2d, strict=True)
    assert torch.equal(net2d.unet.inc.double_conv[0].weight, mip2d["unet.inc.double_conv.0.weight"])
    gvsl = GVSL(channels=[8] * 9, affine_channels=8).state_dict()
    net3d = GEMINI(3, 1, 4, deformer_channels=[8] * 5, **tiny)
    load_pretrained_backbone(convert_checkpoint(gvsl, variant="gvsl3d"), net3d, strict=True)
    assert torch.equal(net3d.unet.up4.conv.double_conv[0].weight, gvsl["unet.up4.conv.double_conv.0.weight"])

    proc = run(mip_command(["finetune"], tmp_path, tiny_data, *TWO_ITERATIONS, "--pretrained", str(converted)))
    assert "loaded 72 backbone tensors, 0 missing" in proc.stdout + proc.stderr
    assert (tmp_path / "runs" / "finetune" / "model.pt").is_file()
