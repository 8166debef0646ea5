"""gemini_semi training through the MONAI CLI: single process, torchrun DDP
with gloo, and resume after SIGKILL."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from gemini_semi_support import REPO, bundle_command, env, run

from gemini_dcl.checkpoint import list_checkpoints
from gemini_dcl.engines import read_history
from gemini_dcl.pretrained import read_checkpoint

pytestmark = pytest.mark.slow


def test_train_two_iterations(trained_bundle: Path) -> None:
    history = read_history(trained_bundle / "runs" / "train" / "logs" / "history.jsonl")
    train = history["train"]
    assert [r["iteration"] for r in train] == [1, 2]
    for record in train:
        for key in ("loss", "loss_smooth", "loss_gvs", "loss_gss", "loss_seg"):
            assert record[key] is not None and math.isfinite(record[key]) and record[key] >= 0, (key, record)
        # the weighted terms add up to the reported total
        total = sum(record[k] for k in ("loss_smooth", "loss_gvs", "loss_gss", "loss_seg"))
        assert record["loss"] == pytest.approx(total, rel=1e-5)
        assert record["skipped_steps"] == 0
    assert len(history["val"]) == 1 and 0 <= history["val"][0]["val_mean_dice"] <= 1
    assert [i for i, _ in list_checkpoints(trained_bundle / "runs" / "train")] == [1, 2]
    state = read_checkpoint(trained_bundle / "runs" / "train" / "checkpoint_iter00000002.pt")
    assert state["trainer"]["iteration"] == 2 and state["optimizer"]["state"]
    weights = torch.load(trained_bundle / "runs" / "train" / "model.pt", weights_only=True)
    assert torch.equal(weights["res_conv.3.weight"], state["model"]["res_conv.3.weight"])
    assert list(weights) == list(state["model"]) and not any(k.startswith(("module.", "network.")) for k in weights)


def test_torchrun_ddp_gloo(tmp_path: Path, tiny_data: Path) -> None:
    cmd = bundle_command(
        "run", ["train", "multi_gpu_train"], tmp_path, "--max_epochs", "1", "--epoch_length", "2", datalist=tiny_data
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    proc = subprocess.run(torchrun + cmd[1:], cwd=REPO, env=env(threads=1), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    # rank 0 alone writes: one checkpoint (the interval save and the final one coincide) and the weights
    assert [i for i, _ in list_checkpoints(tmp_path / "runs" / "train")] == [2]
    assert (tmp_path / "runs" / "train" / "model.pt").is_file()
    train = read_history(tmp_path / "runs" / "train" / "logs" / "history.jsonl")["train"]
    assert [r["iteration"] for r in train] == [1, 2]


def test_resume_after_sigkill(tmp_path: Path, tiny_data: Path) -> None:
    """Kill a run with SIGKILL after its first checkpoint; the same command
    resumes from the newest checkpoint and continues the iteration count."""
    total = 8
    cmd = bundle_command(
        "run",
        ["train"],
        tmp_path,
        "--max_epochs",
        "2",
        "--epoch_length",
        str(total // 2),
        "--save_interval",
        "2",
        "--val_interval",
        "100",
        datalist=tiny_data,
    )
    ckpt_dir = tmp_path / "runs" / "train"
    proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list_checkpoints(ckpt_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-3000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    killed_at = list_checkpoints(ckpt_dir)[-1][0]
    assert killed_at < total and not (ckpt_dir / "model.pt").exists()
    before = read_history(tmp_path / "runs" / "train" / "logs" / "history.jsonl")["train"]
    saved = read_checkpoint(list_checkpoints(ckpt_dir)[-1][1])

    proc2 = run(cmd)
    assert f"resuming from {ckpt_dir}" in proc2.stdout + proc2.stderr
    records = [json.loads(line) for line in (ckpt_dir / "logs" / "history.jsonl").read_text().splitlines()]
    iterations = [r["iteration"] for r in records if r["kind"] == "train"]
    resumed = iterations[len(before) :]
    assert resumed == list(range(killed_at + 1, total + 1)), (killed_at, iterations)
    final = read_checkpoint(list_checkpoints(ckpt_dir)[-1][1])
    assert final["trainer"]["iteration"] == total
    # the optimiser continued from the saved state: Adam's step count is the iteration's two steps each
    step = next(iter(final["optimizer"]["state"].values()))["step"]
    saved_step = next(iter(saved["optimizer"]["state"].values()))["step"]
    assert float(step) - float(saved_step) == 2 * (total - killed_at)
    assert (ckpt_dir / "model.pt").is_file()
