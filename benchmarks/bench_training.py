"""Seconds per gemini_semi training iteration through MONAI's bundle CLI, on
idle and on shared cores.

    python benchmarks/bench_training.py [--runs idle1 idle2 busy2 busy1] [--iterations 10 40]
                                        [--roi 32] [--channels 8 16 16 32 32 32 16 16 8]
                                        [--deformer-channels 8 16 16 16 8] [--rounds 1]

Each run is ``python -m monai.bundle run training`` of bundles/gemini_semi on
the shipped 3D benchmark (``gemini_dcl.sample_data.make_benchmark``,
``brain3d``), the demo's network widths, with ``OMP_NUM_THREADS`` threads and
``OMP_WAIT_POLICY=PASSIVE`` (what ``make demo`` sets). The time of one
iteration is the difference of the wall times of two runs of the same
command, with the two iteration counts, divided by the difference of the
counts: start-up, data loading and the final save cancel. A busy run keeps
one core busy with a spinning process (bench_ops.BusyCore) the whole time.
The last column divides each run by the idle one-thread run: the robustness
target is <= 1.5 for two threads with one core busy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_ops import BusyCore, cpu_name

from gemini_dcl.demo import CHANNELS, DEFORMER_CHANNELS
from gemini_dcl.sample_data import make_benchmark

REPO = Path(__file__).resolve().parent.parent
BUNDLE = REPO / "bundles" / "gemini_semi"
# name: (threads, one core busy, label)
RUNS = {
    "idle1": (1, False, "1 thread, idle"),
    "idle2": (2, False, "2 threads, idle"),
    "busy2": (2, True, "2 threads, one core busy"),
    "busy1": (1, True, "1 thread, one core busy"),
}


def _ints(values) -> str:
    return "[" + ",".join(str(v) for v in values) + "]"


def training_seconds(args, datalist: Path, root: Path, threads: int, iterations: int) -> float:
    """Wall seconds of one training command of ``iterations`` iterations."""
    configs = BUNDLE / "configs"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training"]
    cmd += ["--config_file", str(configs / "train.json"), "--meta_file", str(configs / "metadata.json")]
    cmd += ["--logging_file", str(configs / "logging.conf"), "--bundle_root", str(root), "--datalist", str(datalist)]
    cmd += ["--roi_size", _ints([args.roi] * 3), "--channels", _ints(args.channels)]
    cmd += ["--deformer_channels", _ints(args.deformer_channels), "--progress_bar", "False"]
    labels = json.loads(datalist.read_text())["labels"]
    values = sorted(int(k) for k in labels)
    cmd += ["--label_values", _ints(values), "--class_names", repr([str(labels[str(v)]) for v in values])]
    cmd += ["--max_epochs", "1", "--epoch_length", str(iterations), "--val_interval", "1000000"]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--iterations", type=int, nargs=2, default=[10, 40], metavar=("FEW", "MANY"))
    parser.add_argument("--roi", type=int, default=32, help="cubic crop size (default 32)")
    parser.add_argument("--channels", type=int, nargs=9, default=list(CHANNELS))
    parser.add_argument("--deformer-channels", type=int, nargs=5, default=list(DEFORMER_CHANNELS))
    parser.add_argument("--rounds", type=int, default=1, help="repeat every run this many times (default 1)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    few, many = args.iterations
    if not 0 < few < many:
        parser.error(f"--iterations needs 0 < FEW < MANY, got {few} {many}")
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} cpu ({cpu_name()}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, gemini_semi training, {args.roi}^3 crops, channels {args.channels}, "
        f"deformer {args.deformer_channels}, iterations {few} and {many}, OMP_WAIT_POLICY=PASSIVE",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        datalist = make_benchmark(Path(tmp) / "data", "brain3d")
        for round_ in range(args.rounds):
            for name in args.runs:
                threads, busy, label = RUNS[name]
                root = Path(tmp) / f"{name}{round_}"
                with BusyCore(busy):
                    t_few = training_seconds(args, datalist, root / "few", threads, few)
                    t_many = training_seconds(args, datalist, root / "many", threads, many)
                rows.append(dict(run=name, label=label, round=round_, s_per_iteration=(t_many - t_few) / (many - few)))
    idle = {r["round"]: r["s_per_iteration"] for r in rows if r["run"] == "idle1"}
    print("\n| run | round | s / iteration | ÷ one idle thread |\n|---|---|---|---|")
    for r in rows:
        base = idle.get(r["round"])
        ratio = f"{r['s_per_iteration'] / base:.2f}" if base else ""
        print(f"| {r['label']} | {r['round'] + 1} | {r['s_per_iteration']:.3f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()
