"""The gemini_semi demo (``make demo``) and the GEMINI-Semi experiment.

``python -m gemini_dcl.demo`` makes the sample data (synthetic brain MRI
subjects from the MNI152 template: 1 labelled, 8 unlabelled, 2 validation,
5 test), trains the ``gemini_semi`` bundle briefly through MONAI's bundle
runner (the same code path as ``python -m monai.bundle run``) at a small
width and crop, evaluates it on the held-out subjects, registers one test
pair, prints the numbers of that run and writes PNG figures (segmentation
overlay, registration panel, training curves).

``python -m gemini_dcl.demo experiment`` trains GEMINI-Semi and the same
bundle with the unlabelled phase off (supervised only: same labels, schedule
and seed) and GEMINI-Semi without velocity integration
(``integration_steps=0``), and reports test Dice, registration Dice and
folding for each.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["BUNDLE", "DemoSettings", "run_bundle", "train_and_evaluate", "demo", "experiment", "main"]

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "gemini_semi"


class DemoSettings:
    """Sizes of a demo or experiment run: small enough for 2 CPU cores.

    Args:
        size: sample-volume grid (voxels, 2 mm at the default 32 x 40 x 32
            is the template's native sample size; smaller grids are coarser).
        roi_size: training crop and sliding-window size.
        channels, deformer_channels: network widths.
        iterations: training iterations.
        epochs: the iterations split into this many epochs, each ending with a
            validation (the Dice curve of the figure).
        seed: data and training seed.
    """

    def __init__(
        self,
        size: Sequence[int] = (32, 40, 32),
        roi_size: Sequence[int] = (32, 32, 32),
        channels: Sequence[int] = (8, 16, 16, 32, 32, 32, 16, 16, 8),
        deformer_channels: Sequence[int] = (8, 16, 16, 16, 8),
        iterations: int = 400,
        epochs: int = 8,
        seed: int = 0,
    ) -> None:
        self.size, self.roi_size = list(size), list(roi_size)
        self.channels, self.deformer_channels = list(channels), list(deformer_channels)
        self.epochs = max(1, min(int(epochs), int(iterations)))
        self.epoch_length = max(1, int(iterations) // self.epochs)
        self.iterations, self.seed = self.epochs * self.epoch_length, int(seed)

    def overrides(self) -> dict[str, Any]:
        """Bundle config overrides (the names a user passes on the command line)."""
        return {
            "roi_size": self.roi_size,
            "channels": self.channels,
            "deformer_channels": self.deformer_channels,
            "max_epochs": self.epochs,
            "epoch_length": self.epoch_length,
            "save_interval": self.epoch_length,
            "seed": self.seed,
            "progress_bar": False,
            "device": "cpu",
        }


def _cli(configs: Sequence[str], overrides: Mapping[str, Any]) -> str:
    """The ``python -m monai.bundle run`` command equivalent to a call of :func:`run_bundle`."""
    files = repr([f"configs/{c}.json" for c in configs])
    args = " ".join(f"--{k} {json.dumps(v).replace(' ', '')}" for k, v in overrides.items())
    return f'python -m monai.bundle run --config_file "{files}" {args}'


def run_bundle(configs: Sequence[str], bundle: Path = BUNDLE, **overrides: Any) -> None:
    """Run the bundle's merged ``configs`` in this process through
    ``monai.bundle.run`` (what the MONAI CLI calls), printing the equivalent command."""
    from monai.bundle import run

    print(f"\n$ (in {bundle})\n  {_cli(configs, overrides)}", flush=True)
    run(
        config_file=[str(bundle / "configs" / f"{c}.json") for c in configs],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        **overrides,
    )


def train_and_evaluate(
    out: Path, datalist: Path, settings: DemoSettings, bundle: Path = BUNDLE, **overrides: Any
) -> dict[str, Any]:
    """Train the bundle into ``out`` and evaluate it on the test list; returns
    the evaluation summary (``out/eval/summary.json``) with the training time."""
    common = {"bundle_root": str(out), "datalist": str(datalist), **settings.overrides(), **overrides}
    start = time.perf_counter()
    run_bundle(["train"], bundle, **common)
    trained = time.perf_counter()
    run_bundle(["train", "evaluate"], bundle, **common)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    summary["train_seconds"] = trained - start
    return summary


def _load(path: str | Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _curves(history_path: Path, png: Path) -> Path:
    """Training losses and the last validation Dice against the iteration."""
    from gemini_dcl.engines import read_history
    from gemini_dcl.figures import training_curves

    history = read_history(history_path)
    vals = {r["iteration"]: r["val_mean_dice"] for r in history["val"]}
    rows, last = [], float("nan")
    for r in history["train"]:
        last = vals.get(r["iteration"], last)
        rows.append({k: v for k, v in r.items() if k.startswith("loss")} | {"iteration": r["iteration"]})
        if vals:
            rows[-1]["val_mean_dice"] = last
    return training_curves(rows, png, x_key="iteration")


def demo(out: Path, settings: DemoSettings, bundle: Path = BUNDLE) -> dict[str, Any]:
    """The ``make demo`` job; returns what it printed as a dict."""
    from gemini_dcl.datalist import load_datalist
    from gemini_dcl.figures import overlay_figure, registration_panel
    from gemini_dcl.sample_data import make_sample_dataset

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    datalist = make_sample_dataset(out / "data", subjects=16, size=settings.size, seed=settings.seed)
    print(f"sample data: {datalist} (1 labelled, 8 unlabelled, 2 validation, 5 test subjects)", flush=True)
    summary = train_and_evaluate(out, datalist, settings, bundle)

    test = load_datalist(datalist)["test"]
    common = {"bundle_root": str(out), "datalist": str(datalist), **settings.overrides()}
    run_bundle(["train", "register"], bundle, **common)
    reg = json.loads((out / "registration" / "registration.json").read_text())
    run_bundle(["train", "inference"], bundle, input_files=[test[0]["image"]], **common)

    figures = out / "figures"
    pred = out / "inference" / (Path(test[0]["image"]).name.replace(".nii.gz", "_seg.nii.gz"))
    overlay_figure(
        _load(test[0]["image"]),
        _load(test[0]["label"]),
        _load(pred),
        figures / "overlay.png",
        f"{Path(test[0]['image']).name}: image, reference labels, GEMINI-Semi prediction",
    )
    files = reg["files"]
    registration_panel(
        _load(reg["moving"]),
        _load(reg["fixed"]),
        _load(files["warped"]),
        np.moveaxis(_load(files["ddf"]), -1, 0),
        _load(files["jacobian"]),
        figures / "registration.png",
    )
    _curves(out / "logs" / "history.jsonl", figures / "training_curves.png")

    seg, regs = summary["segmentation"], summary["registration"]
    result = {
        "test_subjects": summary["test_cases"],
        "iterations": settings.iterations,
        "train_seconds": round(summary["train_seconds"], 1),
        "mean_dice": seg["mean_dice"],
        "dice_per_class": {k: v["dice"] for k, v in seg["per_class"].items()},
        "mean_hd95_mm": seg["mean_hd95_mm"],
        "registration_pairs": regs["pairs"],
        "registration_dice_before": regs["mean_dice_before"],
        "registration_dice_after": regs["mean_dice_after"],
        "folding_percent_mean": regs["folding_percent_mean"],
        "one_pair": {k: reg.get(k) for k in ("dice_before", "dice_after", "folding_percent")},
        "figures": sorted(str(p) for p in figures.glob("*.png")),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n==== GEMINI-Semi demo (numbers from this run) ====")
    print(f"trained {settings.iterations} iterations in {result['train_seconds']} s on CPU")
    print(f"test segmentation, {result['test_subjects']} held-out subjects: mean Dice {seg['mean_dice']:.3f}")
    for name, d in result["dice_per_class"].items():
        print(f"  {name:14s} Dice {d:.3f}")
    print(
        f"registration, {regs['pairs']} test pairs: label Dice {regs['mean_dice_before']:.3f} before -> "
        f"{regs['mean_dice_after']:.3f} after; voxels with det(J) <= 0: {regs['folding_percent_mean']:.4f} %"
    )
    print(
        f"registered pair {Path(reg['moving']).name} -> {Path(reg['fixed']).name}: Dice "
        f"{reg['dice_before']:.3f} -> {reg['dice_after']:.3f}, folding {reg['folding_percent']:.4f} %"
    )
    print(f"figures: {', '.join(result['figures'])}")
    print(f"total {result['total_seconds']} s; summary {out / 'demo_summary.json'}")
    return result


def experiment(out: Path, settings: DemoSettings, bundle: Path = BUNDLE) -> dict[str, Any]:
    """GEMINI-Semi vs supervised-only vs no integration, same data/schedule/seed."""
    from gemini_dcl.sample_data import make_sample_dataset

    out.mkdir(parents=True, exist_ok=True)
    datalist = make_sample_dataset(out / "data", subjects=16, size=settings.size, seed=settings.seed)
    runs = {
        "gemini_semi": {},
        "supervised_only": {"unlabeled_phase": False},
        "gemini_semi_no_integration": {"integration_steps": 0},
    }
    results = {}
    for name, overrides in runs.items():
        summary = train_and_evaluate(out / name, datalist, settings, bundle, **overrides)
        reg = summary.get("registration", {})
        results[name] = {
            "overrides": overrides,
            "mean_dice": summary["segmentation"]["mean_dice"],
            "dice_per_class": {k: v["dice"] for k, v in summary["segmentation"]["per_class"].items()},
            "registration_dice_before": reg.get("mean_dice_before"),
            "registration_dice_after": reg.get("mean_dice_after"),
            "folding_percent_mean": reg.get("folding_percent_mean"),
            "folding_percent_max": reg.get("folding_percent_max"),
            "train_seconds": round(summary["train_seconds"], 1),
        }
    (out / "experiment.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n==== GEMINI-Semi experiment (numbers from this run) ====")
    print(f"{'run':28s} {'test Dice':>9s} {'reg Dice':>9s} {'folding %':>10s} {'train s':>8s}")
    for name, r in results.items():
        reg_dice = "-" if r["registration_dice_after"] is None else f"{r['registration_dice_after']:.3f}"
        fold = "-" if r["folding_percent_mean"] is None else f"{r['folding_percent_mean']:.4f}"
        print(f"{name:28s} {r['mean_dice']:9.3f} {reg_dice:>9s} {fold:>10s} {r['train_seconds']:8.1f}")
    return results


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: ``python -m gemini_dcl.demo [experiment] [options]``."""
    parser = argparse.ArgumentParser(prog="python -m gemini_dcl.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", nargs="?", default="demo", choices=("demo", "experiment"))
    parser.add_argument("--out", type=Path, default=None, help="output folder (default demo_output/<job>)")
    parser.add_argument("--iterations", type=int, default=None, help="training iterations (default 400 / 600)")
    parser.add_argument("--size", type=int, nargs=3, default=[32, 40, 32], help="sample grid D H W")
    parser.add_argument("--roi-size", type=int, nargs=3, default=[32, 32, 32], help="training crop")
    parser.add_argument("--channels", type=int, nargs=9, default=[8, 16, 16, 32, 32, 32, 16, 16, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="the gemini_semi bundle folder")
    args = parser.parse_args(argv)
    iterations = args.iterations or (400 if args.job == "demo" else 600)
    # The experiment validates only at the end: its runs compare final test numbers.
    epochs = 8 if args.job == "demo" else 1
    settings = DemoSettings(
        args.size, args.roi_size, args.channels, iterations=iterations, epochs=epochs, seed=args.seed
    )
    out = args.out or Path("demo_output") / args.job
    job = demo if args.job == "demo" else experiment
    return job(out, settings, args.bundle)


if __name__ == "__main__":
    main()
