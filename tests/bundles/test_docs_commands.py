"""Every shell command of both bundle READMEs and of the project README's
"Bundles" section, run as written, in document order, on a copy of the
bundles with a tiny sample set in their default data folders, so the docs
cannot drift from the code. The only changes to a command: CPU-test-size
overrides appended to ``monai.bundle`` commands (widths, crop, iteration
counts), and the example download host replaced by a local HTTP server.
Sections headed "Measured results" are records of measurements (their runs
take minutes) and are not run here."""

from __future__ import annotations

import functools
import math
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from gemini_semi_support import REPO, env

from gemini_dcl.engines import read_history
from gemini_dcl.sample_data import make_sample_dataset

pytestmark = pytest.mark.slow

EXAMPLE_HOST = "https://example.org/gemini_mip"
WIDTHS = ["--channels", "[8,8,8,8,8,8,8,8,8]", "--deformer_channels", "[8,8,8,8,8]"]
SHORT = ["--max_epochs", "1", "--epoch_length", "2", "--progress_bar", "False", "--max_pairs", "2"]
TINY = {
    "gemini_semi": WIDTHS + SHORT,
    "gemini_mip": WIDTHS + SHORT + ["--affine_channels", "8"],
}


def doc_commands(readme: Path, section: str | None = None) -> list[str]:
    """The commands of the ``bash`` blocks of ``readme`` (of its ``## section``
    only, if given), continuation lines joined, comments dropped."""
    text = readme.read_text()
    if section is not None:
        text = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    text = text.split("\n## Measured results", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def _tiny(bundle: str, command: str) -> str:
    """``command`` with the test-size overrides appended to a ``monai.bundle`` call."""
    if "monai.bundle " not in command:
        return command
    extra = list(TINY[bundle])
    extra += ["--roi_size", "[32,32]", "--batch_size", "2"] if "_2d.json" in command else ["--roi_size", "[16,16,16]"]
    return command + " " + " ".join(f"'{a}'" for a in extra)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``bundles/<name>`` copies (tracked content only) with tiny 3D and 2D
    sample sets in ``data_3d``/``data_2d``, and ``bundles/dist`` served over HTTP."""
    root = tmp_path_factory.mktemp("docs")
    data3d = make_sample_dataset(root / "data_3d", subjects=7, size=(16, 16, 16), seed=1, validation=1, test=2).parent
    data2d = make_sample_dataset(root / "data_2d", subjects=5, size=(32, 32), spatial_dims=2, validation=1, test=1)
    for name in TINY:
        src, dst = REPO / "bundles" / name, root / "bundles" / name
        for entry in ("configs", "docs", "models", "LICENSE", "large_files.yml"):
            if (src / entry).is_dir():
                shutil.copytree(src / entry, dst / entry)
            elif (src / entry).is_file():
                shutil.copy(src / entry, dst / entry)
        shutil.copytree(data3d, dst / "data_3d")
        shutil.copytree(data2d.parent, dst / "data_2d")
    dist = root / "bundles" / "dist"
    dist.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(dist)))
    server.RequestHandlerClass.log_message = lambda *args: None
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root.joinpath("url").write_text(f"http://127.0.0.1:{server.server_address[1]}")
    try:
        yield root
    finally:
        server.shutdown()


def _run_all(commands: list[str], cwd: Path, bundle: str, url: str) -> None:
    assert commands, "no commands found"
    for command in commands:
        line = _tiny(bundle, command).replace(EXAMPLE_HOST, url)
        proc = subprocess.run(
            ["bash", "-c", line], cwd=cwd, env=env(threads=1), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{command}\n(ran: {line})\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


@pytest.mark.parametrize("bundle", sorted(TINY))
def test_bundle_readme_commands(bundle: str, workspace: Path) -> None:
    cwd = workspace / "bundles" / bundle
    _run_all(
        doc_commands(REPO / "bundles" / bundle / "docs" / "README.md"), cwd, bundle, (workspace / "url").read_text()
    )
    # the weights were read from where the docs say, and written only to run folders
    assert (cwd / "runs").is_dir()
    assert sorted(p.name for p in (cwd / "models").glob("*")) == (["model.pt"] if bundle == "gemini_mip" else [])
    if bundle == "gemini_mip":
        # GVSL (MI similarity) and 2D MIP trained finite steps and wrote their networks' weights
        for run_dir, keys in (("gvsl", ("loss_sim", "loss_restore")), ("pretrain_2d", ("loss_gvs", "loss_restore"))):
            train = read_history(cwd / "runs" / run_dir / "logs" / "history.jsonl")["train"]
            assert [r["iteration"] for r in train] == [1, 2]
            assert all(math.isfinite(r[k]) and r["skipped_steps"] == 0 for r in train for k in keys)
        gvsl = torch.load(cwd / "runs" / "gvsl" / "model.pt", weights_only=True)
        assert "fc_rot.weight" in gvsl and "unet.inc.double_conv.0.weight" in gvsl
        flow_head = torch.load(cwd / "runs" / "pretrain_2d" / "model.pt", weights_only=True)["deformer.1.weight"]
        assert flow_head.shape[:2] == (2, 8)  # a 2D flow head


def test_project_readme_bundle_commands(workspace: Path) -> None:
    commands = doc_commands(REPO / "README.md", section="Bundles")
    for command in commands:
        bundle = next(name for name in TINY if f"bundles/{name}/" in command)
        _run_all([command], workspace, bundle, (workspace / "url").read_text())
