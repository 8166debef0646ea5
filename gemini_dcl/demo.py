"""The gemini_semi demo (``make demo``): GEMINI-Semi on the 2D sample
benchmark, against supervised-only training and the atlas baselines.

``python -m gemini_dcl.demo`` writes the ``brain2d`` benchmark (axial brain
MRI slices from the MNI152 template at 2.53 mm, 7 structure labels that need
anatomical context; 1 labelled subject used, 24 unlabelled, 12 test), trains
the ``gemini_semi`` bundle and the same bundle with the unlabelled phase off
(same labelled subject, schedule and seed) through MONAI's bundle runner
(``gemini_dcl.experiment``), and prints:

- test segmentation Dice of both, next to the atlas baselines (the labelled
  subject's label map copied, and warped by GEMINI's deformer);
- registration of test pairs: label Dice before (identity), after, and with
  the generator's true deformation, GVS value and folding;

and writes figures: the registration of one test pair, a segmentation
overlay, and the results summary. ``--bundles`` names the folder holding
``gemini_semi`` (default: the source checkout's ``bundles/``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["demo", "main"]

CHANNELS = (8, 16, 16, 32, 32, 32, 16, 16, 8)
DEFORMER_CHANNELS = (8, 16, 16, 16, 8)


def demo(out: Path, iterations: int = 600, seed: int = 0, bundles: Optional[Path] = None) -> dict[str, Any]:
    """The ``make demo`` job; returns its results dict (also ``out/results.json``)."""
    from gemini_dcl.experiment import ExperimentSettings, find_bundles, load_cases, load_network, run_semi
    from gemini_dcl.figures import overlay_figure, registration_panel
    from gemini_dcl.registration import register
    from gemini_dcl.sample_data import make_benchmark

    start = time.perf_counter()
    bundles = find_bundles(bundles)
    out.mkdir(parents=True, exist_ok=True)
    datalist = make_benchmark(out / "data", "brain2d")
    print(f"sample benchmark: {datalist}", flush=True)
    settings = ExperimentSettings(
        datalist, out, [seed], iterations, channels=CHANNELS, deformer_channels=DEFORMER_CHANNELS, max_pairs=11
    )
    results = run_semi(settings, bundles, num_labeled=1, arms=("gemini_semi", "supervised_only"))

    bundle, overrides = bundles / "gemini_semi", results["runs"][f"gemini_semi_seed{seed}"]
    net = load_network(bundle, ["train"], overrides)
    moving, fixed = load_cases(bundle, ["train"], overrides, settings.data["test"][:2])
    reg = register(net, moving["image"], fixed["image"], moving["label"], fixed["label"], settings.num_classes)
    figures = out / "figures"
    registration_panel(moving["image"], fixed["image"], reg.warped, reg.ddf, reg.jacobian, figures / "registration.png")
    with torch.no_grad():
        pred = net(fixed["image"]).argmax(1, keepdim=True)
    overlay_figure(
        fixed["image"], fixed["label"], pred, figures / "overlay.png", "test subject: image, reference, GEMINI-Semi"
    )
    r = results["arms"]["gemini_semi"]["registration"]
    arms = results["arms"]
    summary = {
        "iterations": iterations,
        "test_dice": {name: arm["mean_dice"][0] for name, arm in arms.items()},
        "registration": {
            "dice_identity": r["dice_identity"],
            "dice_after": r["mean"]["dice_after"],
            "dice_ceiling": r.get("dice_ceiling"),
            "folding_percent": r["mean"]["folding_percent"],
        },
        "one_pair": {
            "dice_before": float(reg.mean_dice_before[0]),
            "dice_after": float(reg.mean_dice_linear[0]),
            "folding_percent": 100 * float(reg.folding_fraction[0]),
        },
        "figures": sorted(str(p) for p in [*figures.glob("*.png"), out / "results.png"]),
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n==== GEMINI-Semi demo (numbers from this run) ====")
    print(f"{iterations} iterations per run, 1 labelled subject, {len(settings.data['test'])} test subjects")
    for name, dice in summary["test_dice"].items():
        print(f"  {name:32s} test Dice {dice:.3f}")
    reg_sum = summary["registration"]
    print(
        f"registration of test pairs (linear one-hot label Dice): identity {reg_sum['dice_identity']:.3f} -> "
        f"GEMINI {reg_sum['dice_after']:.3f} (true deformation {reg_sum['dice_ceiling']:.3f}); "
        f"folding {reg_sum['folding_percent']:.4f} %"
    )
    one = summary["one_pair"]
    print(
        f"figure pair: Dice {one['dice_before']:.3f} -> {one['dice_after']:.3f}, folding {one['folding_percent']:.4f} %"
    )
    print(f"figures: {', '.join(summary['figures'])}")
    print(f"total {summary['total_seconds']} s; summary {out / 'demo_summary.json'}")
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: ``python -m gemini_dcl.demo [options]``."""
    parser = argparse.ArgumentParser(prog="python -m gemini_dcl.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder (default demo_output)")
    parser.add_argument("--iterations", type=int, default=600, help="training iterations per run (default 600)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--bundles", type=Path, default=None, help="folder holding gemini_semi (default: the checkout's)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        from gemini_dcl.experiment import find_bundles

        bundles = find_bundles(args.bundles)
    except FileNotFoundError as err:
        parser.error(str(err))
    return demo(args.out, args.iterations, args.seed, bundles)


if __name__ == "__main__":
    main()
