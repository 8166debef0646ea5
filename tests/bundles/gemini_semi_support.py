"""Helpers of the gemini_semi bundle tests: run ``python -m monai.bundle``
in a subprocess the way a user would, with CI-sized settings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "gemini_semi"
CONFIGS = BUNDLE / "configs"
# CI-sized network and crop: the volumes are 16^3, one sliding window.
TINY = [
    "--roi_size",
    "[16,16,16]",
    "--channels",
    "[8,8,8,8,8,8,8,8,8]",
    "--deformer_channels",
    "[8,8,8,8,8]",
    "--progress_bar",
    "False",
]
LABEL_VALUES = [0, 1, 2, 3]


def env(threads: int = 2) -> dict[str, str]:
    """The environment of the subprocesses: the repository importable without
    an install, and a thread count that fits two cores."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(REPO), out.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out["OMP_NUM_THREADS"] = str(threads)
    out["PYTHONWARNINGS"] = "ignore"
    return out


def config_arg(*names: str) -> str:
    """``--config_file`` value merging ``configs/<name>.json`` in order."""
    return repr([str(CONFIGS / f"{n}.json") for n in names])


def bundle_command(
    command: str, configs: Sequence[str], bundle_root: Path, *args: str, datalist: Path | None = None
) -> list[str]:
    """``python -m monai.bundle <command>`` with the tiny settings."""
    cmd = [sys.executable, "-m", "monai.bundle", command, "--config_file", config_arg(*configs)]
    cmd += ["--bundle_root", str(bundle_root), "--meta_file", str(CONFIGS / "metadata.json")]
    cmd += ["--logging_file", str(CONFIGS / "logging.conf")]
    if datalist is not None:
        cmd += ["--datalist", str(datalist)]
    return cmd + TINY + list(args)


def run(cmd: Sequence[str], timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``cmd`` from the repository root; on failure the assertion shows its output."""
    proc = subprocess.run(list(cmd), cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, (
            f"{' '.join(cmd)}\nexit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc
