"""Multi-seed experiments on any datalist, 2D or 3D: GEMINI-Semi against
supervised-only training, and GEMINI-MIP / GVSL pre-training against training
from scratch, with the baselines next to every number.

    python -m gemini_dcl.experiment semi --datalist D --seeds 0 1 2 --iterations N --out DIR
    python -m gemini_dcl.experiment mip  --datalist D --seeds 0 1 2 --iterations N --out DIR
    python -m gemini_dcl.experiment merge --out DIR RUN_DIR_SEED0 RUN_DIR_SEED1 ...

Training goes through the bundles' config files only (``--bundles``, default
the checkout's ``bundles/``), run with ``monai.bundle.run`` (run id ``run``)
and overrides of their public top-level keys. After each run the weights at
the config's ``model_path`` are loaded strictly into the config's
``network_def`` and evaluated here, on the datalist's ``test`` section:
per-subject Dice (MONAI's ``compute_dice``, mean over the foreground classes
present), and for networks with a deformer the registration of consecutive
test pairs (linearly warped one-hot labels and nearest neighbour, GVS value,
folding) against identity and, where the datalist lists the generator's
deformations (``gemini_dcl.sample_data``), the true deformation.

Arms (``DIR/results.json`` ``arms``):

- ``semi``: ``gemini_semi`` (integration 7), ``gemini_semi_no_integration``
  (integration 0, the authors' plain displacement), ``supervised_only``
  (the unlabelled phase off); baselines ``atlas_copy`` (the first labelled
  subject's label map) and ``<arm>/atlas_registration`` (that label warped
  onto each test image by the arm's trained deformer).
- ``mip``: ``scratch``, ``gemini_mip``, ``gvsl_ncc``, ``gvsl_mi``, each as
  ``<arm>/finetune_<k>`` and ``<arm>/probe_<k>`` for ``k`` labelled subjects
  (``scratch/probe_k`` is a random backbone's linear probe).

Every arm uses the same labelled subjects (the first ``k`` of ``labeled``),
augmentation (the bundle's), number of segmentation steps and seeds. Label
values and class names come from the datalist's ``labels`` dict.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

__all__ = [
    "SEMI_ARMS",
    "MIP_PRETRAIN",
    "find_bundles",
    "flow_init_override",
    "run_bundle",
    "bundle_cli",
    "ExperimentSettings",
    "load_network",
    "train_run",
    "load_cases",
    "evaluate_segmentation",
    "evaluate_registration",
    "paired_difference",
    "merge_results",
    "run_semi",
    "run_mip",
    "main",
]

# arm -> overrides of gemini_semi's train.json
SEMI_ARMS: dict[str, dict[str, Any]] = {
    "gemini_semi": {"integration_steps": 7},
    "gemini_semi_no_integration": {"integration_steps": 0},
    "supervised_only": {"unlabeled_phase": False},
}
# pre-training arm -> (extra gemini_mip config files, overrides)
MIP_PRETRAIN: dict[str, tuple[list[str], dict[str, Any]]] = {
    "gemini_mip": ([], {}),
    "gvsl_ncc": (["train_gvsl"], {"similarity": "ncc"}),
    "gvsl_mi": (["train_gvsl"], {"similarity": "mi"}),
}


def find_bundles(bundles: Optional[str | Path] = None) -> Path:
    """The folder holding ``gemini_semi`` and ``gemini_mip``: ``bundles`` if
    given, else the ``bundles/`` folder of the source checkout this package
    runs from; a clear error naming ``--bundles`` otherwise (an installed
    wheel has no bundles)."""
    if bundles is None:
        here = Path(__file__).resolve().parent.parent / "bundles"
        if not (here / "gemini_semi" / "configs").is_dir():
            raise FileNotFoundError(
                "no bundles folder found next to the gemini_dcl package (an installed wheel has none): "
                "pass --bundles /path/to/gemini/bundles (the folder holding gemini_semi and gemini_mip)"
            )
        return here
    path = Path(bundles)
    missing = [b for b in ("gemini_semi", "gemini_mip") if not (path / b / "configs").is_dir()]
    if missing:
        raise FileNotFoundError(f"--bundles {path}: no {', '.join(b + '/configs' for b in missing)} there")
    return path


def bundle_cli(bundle: Path, configs: Sequence[str], overrides: Mapping[str, Any]) -> str:
    """The ``python -m monai.bundle run`` command equivalent to :func:`run_bundle`."""
    files = repr([str(bundle / "configs" / f"{c}.json") for c in configs])
    args = " ".join(f"--{k} {json.dumps(v).replace(' ', '')}" for k, v in overrides.items())
    return f'python -m monai.bundle run run --config_file "{files}" {args}'


def _config_files(bundle: Path, configs: Sequence[str]) -> list[str]:
    return [str(bundle / "configs" / f"{c}.json") for c in configs]


def run_bundle(bundle: Path, configs: Sequence[str], log: Optional[list] = None, **overrides: Any) -> None:
    """Run the bundle's merged ``configs`` in this process through
    ``monai.bundle.run`` (what the MONAI CLI calls, run id ``run``), printing
    the equivalent command (and appending it to ``log``)."""
    from monai.bundle import run

    cli = bundle_cli(bundle, configs, overrides)
    print(f"\n$ {cli}", flush=True)
    if log is not None:
        log.append(cli)
    run(
        run_id="run",
        config_file=_config_files(bundle, configs),
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        **overrides,
    )


def _parser(bundle: Path, configs: Sequence[str], overrides: Mapping[str, Any]):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config_files(bundle, configs))
    parser.update(dict(overrides))
    return parser


def flow_init_override(bundle: Path, configs: Sequence[str], value: str) -> dict[str, str]:
    """``{"flow_init": value}`` when the configs have that top-level key,
    else ``{"network_def#flow_init": value}`` (configs from before the key
    existed); nothing for a network without the option (GVSL)."""
    parser = _parser(bundle, configs, {})
    if "flow_init" in parser.config:
        return {"flow_init": value}
    if parser.config["network_def"].get("_target_", "").endswith("GEMINI"):
        return {"network_def#flow_init": value}
    return {}


def load_network(bundle: Path, configs: Sequence[str], overrides: Mapping[str, Any]) -> torch.nn.Module:
    """The configs' ``network_def`` with the weights at their ``model_path``
    loaded strictly (a plain ``state_dict``), in eval mode on the CPU."""
    parser = _parser(bundle, configs, overrides)
    net = parser.get_parsed_content("network_def")
    state = torch.load(parser.get_parsed_content("model_path"), map_location="cpu", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net.eval()


class ExperimentSettings:
    """What every arm of an experiment shares.

    Args:
        datalist: datalist JSON (sections ``labeled``, ``unlabeled``,
            ``validation``, ``test``; optional ``labels`` dict ``{"0": name}``
            and ``deformations`` from ``gemini_dcl.sample_data``).
        out: output folder.
        seeds: training seeds.
        iterations: training iterations of GEMINI-Semi / pre-training.
        finetune_iterations: segmentation steps of fine-tuning and probing.
        channels, deformer_channels: network widths.
        learning_rate: Adam learning rate.
        flow_init: deformer flow-layer init (``"small_normal"`` or ``"kaiming"``).
        batch_size: pairs / labelled images per step.
        max_pairs: registration pairs evaluated (consecutive test subjects).
        roi_size: training crop (default: the whole test image); evaluation
            always uses the whole image.
    """

    def __init__(
        self,
        datalist: str | Path,
        out: str | Path,
        seeds: Sequence[int] = (0, 1, 2),
        iterations: int = 400,
        finetune_iterations: Optional[int] = None,
        channels: Sequence[int] = (8, 16, 16, 32, 32, 32, 16, 16, 8),
        deformer_channels: Sequence[int] = (8, 16, 16, 16, 8),
        learning_rate: float = 1e-3,
        flow_init: str = "small_normal",
        batch_size: int = 1,
        max_pairs: int = 11,
        roi_size: Optional[Sequence[int]] = None,
    ) -> None:
        from gemini_dcl.datalist import load_datalist

        self.datalist = Path(datalist).resolve()
        self.data = load_datalist(self.datalist)
        for section in ("labeled", "test"):
            if not self.data[section]:
                raise ValueError(f"--datalist {self.datalist}: section {section!r} is empty")
        self.out = Path(out)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")
        if int(iterations) < 1:
            raise ValueError(f"--iterations must be >= 1, got {iterations}")
        self.iterations = int(iterations)
        self.finetune_iterations = int(finetune_iterations or iterations)
        self.channels, self.deformer_channels = list(channels), list(deformer_channels)
        self.learning_rate, self.flow_init = float(learning_rate), flow_init
        self.batch_size, self.max_pairs = int(batch_size), int(max_pairs)
        labels = self.data.get("labels")
        if labels:
            values = sorted(int(k) for k in labels)
            self.label_values, self.class_names = values, [str(labels[str(v)]) for v in values]
        else:
            values = sorted(
                {int(v) for e in self.data["labeled"] + self.data["test"] for v in np.unique(_read(e["label"]))}
            )
            self.label_values, self.class_names = values, [f"class_{v}" for v in values]
        shape = _read(self.data["test"][0]["image"]).shape
        self.spatial_dims = int(self.data.get("spatial_dims") or len(shape))
        self.roi_size = [int(n) for n in (roi_size or shape[: self.spatial_dims])]
        if len(self.roi_size) != self.spatial_dims:
            raise ValueError(f"--roi-size needs {self.spatial_dims} values for this datalist, got {self.roi_size}")

    @property
    def num_classes(self) -> int:
        return len(self.label_values)

    def common(self) -> dict[str, Any]:
        """Overrides shared by every training run."""
        return {
            "spatial_dims": self.spatial_dims,
            "roi_size": self.roi_size,
            "channels": self.channels,
            "deformer_channels": self.deformer_channels,
            "learning_rate": self.learning_rate,
            "batch_size": self.batch_size,
            "label_values": self.label_values,
            "class_names": self.class_names,
            "max_epochs": 1,
            "val_interval": 1,
            "num_workers": 0,
            "device": "cpu",
            "amp": False,
        }

    def labeled_datalist(self, k: int) -> Path:
        """A copy of the datalist with only the first ``k`` labelled subjects
        (absolute paths), written under ``out/datalists``."""
        if k > len(self.data["labeled"]):
            raise ValueError(f"--datalist has {len(self.data['labeled'])} labelled subjects, {k} were asked for")
        data = {key: value for key, value in self.data.items() if not key.startswith("_")}
        data["labeled"] = self.data["labeled"][:k]
        path = self.out / "datalists" / f"labeled_{k}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    def describe(self) -> dict[str, Any]:
        return {
            "datalist": str(self.datalist),
            "seeds": self.seeds,
            "iterations": self.iterations,
            "finetune_iterations": self.finetune_iterations,
            "channels": self.channels,
            "deformer_channels": self.deformer_channels,
            "learning_rate": self.learning_rate,
            "flow_init": self.flow_init,
            "batch_size": self.batch_size,
            "spatial_dims": self.spatial_dims,
            "roi_size": self.roi_size,
            "label_values": self.label_values,
            "class_names": self.class_names,
            "test_subjects": [Path(e["image"]).name for e in self.data["test"]],
        }


def _read(path: str | Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


def load_cases(
    bundle: Path, configs: Sequence[str], overrides: Mapping[str, Any], entries: Sequence[Mapping[str, str]]
) -> list[dict[str, torch.Tensor]]:
    """Images (1, 1, *S) float and labels (1, 1, *S) int64 (class indices)
    of datalist ``entries`` through the configs' own ``preprocessing``."""
    preprocessing = _parser(bundle, configs, overrides).get_parsed_content("preprocessing")
    cases = []
    for e in entries:
        d = preprocessing({"image": e["image"], "label": e["label"]})
        cases.append(
            {"image": torch.as_tensor(d["image"])[None].float(), "label": torch.as_tensor(d["label"])[None].long()}
        )
    return cases


@torch.no_grad()
def evaluate_segmentation(
    net: torch.nn.Module, cases: Sequence[Mapping[str, torch.Tensor]], num_classes: int
) -> list[float]:
    """Per-subject mean foreground Dice of ``argmax(net(image))`` (whole image)."""
    from gemini_dcl.registration import dice_per_class

    return [
        float(dice_per_class(net(c["image"]).argmax(1, keepdim=True), c["label"], num_classes).nanmean()) for c in cases
    ]


def _pairs(n: int, max_pairs: int) -> list[tuple[int, int]]:
    """Consecutive (moving, fixed) pairs of test subjects."""
    return [(i, i + 1) for i in range(n - 1)][:max_pairs]


def _mean(values: Sequence[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def ceiling_registration(
    settings: ExperimentSettings, cases: Sequence[Mapping[str, torch.Tensor]]
) -> Optional[dict[str, float]]:
    """Identity and true-deformation numbers of the test pairs; the ceiling
    only when the datalist lists the generator's deformation fields."""
    from gemini_dcl.registration import dice_per_class, gvs_value, warp_label, warp_label_linear

    fields = settings.data.get("deformations")
    base = settings.datalist.parent
    tests = settings.data["test"]
    out: dict[str, list[float]] = {"dice_identity": [], "gvs_identity": []}
    if fields:
        out.update({"dice_ceiling": [], "dice_ceiling_nearest": [], "gvs_ceiling": []})
    k = settings.num_classes
    for a, b in _pairs(len(cases), settings.max_pairs):
        ma, fb = cases[a], cases[b]
        out["dice_identity"].append(float(dice_per_class(ma["label"], fb["label"], k).nanmean()))
        out["gvs_identity"].append(float(gvs_value(ma["image"], fb["image"])[0]))
        if fields:
            from gemini_dcl.sample_data import true_pair_ddf

            rel = {Path(p).name: f for p, f in fields.items()}
            ddf = true_pair_ddf(base / rel[Path(tests[a]["image"]).name], base / rel[Path(tests[b]["image"]).name])
            out["dice_ceiling"].append(
                float(dice_per_class(warp_label_linear(ma["label"], ddf, k), fb["label"], k).nanmean())
            )
            out["dice_ceiling_nearest"].append(
                float(dice_per_class(warp_label(ma["label"], ddf), fb["label"], k).nanmean())
            )
            import gemini_ops

            out["gvs_ceiling"].append(float(gvs_value(gemini_ops.warp(ma["image"], ddf), fb["image"])[0]))
    return {key: _mean(v) for key, v in out.items()}


def evaluate_registration(
    net: torch.nn.Module, cases: Sequence[Mapping[str, torch.Tensor]], num_classes: int, max_pairs: int
) -> dict[str, float]:
    """Mean over consecutive test pairs of Dice after registration (linear
    one-hot and nearest), GVS value and folding percentage."""
    from gemini_dcl.registration import register

    rows = []
    for a, b in _pairs(len(cases), max_pairs):
        r = register(net, cases[a]["image"], cases[b]["image"], cases[a]["label"], cases[b]["label"], num_classes)
        rows.append(
            (float(r.mean_dice_linear[0]), float(r.mean_dice[0]), float(r.gvs[0]), 100 * float(r.folding_fraction[0]))
        )
    cols = list(zip(*rows))
    return {
        "dice_after": _mean(cols[0]),
        "dice_after_nearest": _mean(cols[1]),
        "gvs_after": _mean(cols[2]),
        "folding_percent": _mean(cols[3]),
        "folding_percent_max": float(max(cols[3])),
    }


@torch.no_grad()
def atlas_registration(net: torch.nn.Module, atlas: Mapping[str, torch.Tensor], cases, num_classes: int) -> list[float]:
    """Per-subject Dice of the atlas label warped onto each test image by the
    network's deformer (linear one-hot warp)."""
    from gemini_dcl.registration import dice_per_class, warp_label_linear

    out = []
    for c in cases:
        ddf = net.flow(net.features(atlas["image"]), net.features(c["image"]))
        warped = warp_label_linear(atlas["label"], ddf, num_classes)
        out.append(float(dice_per_class(warped, c["label"], num_classes).nanmean()))
    return out


def paired_difference(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Paired per-subject difference of two arms: each subject's Dice averaged
    over seeds, then ``a - b``; mean, 95 % t-interval, share of subjects
    with a positive difference."""
    from scipy import stats

    diff = np.nanmean(np.asarray(a, dtype=float), 0) - np.nanmean(np.asarray(b, dtype=float), 0)
    n, mean = len(diff), float(np.mean(diff))
    half = float(stats.t.ppf(0.975, n - 1) * np.std(diff, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {
        "per_subject": [float(d) for d in diff],
        "mean": mean,
        "ci95": [mean - half, mean + half],
        "fraction_positive": float(np.mean(diff > 0)),
    }


def _arm(seeds: Sequence[int], per_subject: Sequence[Sequence[float]]) -> dict[str, Any]:
    return {
        "seeds": list(seeds),
        "mean_dice": [_mean(p) for p in per_subject],
        "per_subject_dice": [list(map(float, p)) for p in per_subject],
    }


def _fresh(path: Path) -> Path:
    """An empty run folder: a leftover checkpoint would otherwise be resumed."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def train_run(
    bundle: Path, configs: Sequence[str], run_dir: Path, overrides: Mapping[str, Any], log: list
) -> tuple[dict, float]:
    """Train the bundle's ``configs`` into an emptied ``run_dir`` (checkpoints
    in ``run_dir/models``, logs in ``run_dir/logs``); returns the overrides
    used (what :func:`load_network` needs) and the seconds taken."""
    _fresh(run_dir)
    full = {
        "bundle_root": str(run_dir),
        "ckpt_dir": str(run_dir / "models"),
        "output_dir": str(run_dir / "logs"),
        **overrides,
    }
    start = time.perf_counter()
    run_bundle(bundle, configs, log, **full)
    return full, time.perf_counter() - start


def _finish(kind: str, settings: ExperimentSettings, results: dict, comparisons: list, start: float, commands) -> dict:
    results.update(
        experiment=kind,
        settings=settings.describe(),
        comparisons=comparisons,
        commands=commands,
        wall_seconds=round(time.perf_counter() - start, 1),
    )
    return _write(results, settings.out)


def _write(results: dict, out: Path) -> dict:
    """``results.json``, ``results.md`` and ``results.png`` in ``out``."""
    from gemini_dcl.figures import experiment_figure

    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    experiment_figure(results, out / "results.png")
    print("\n" + results_markdown(results))
    return results


def merge_results(folders: Sequence[str | Path], out: str | Path) -> dict[str, Any]:
    """Merge the ``results.json`` of runs of one experiment made with
    different seeds (same datalist, arms and settings otherwise) into one,
    as if run with all the seeds: per-seed lists concatenated, registration
    means and the paired comparisons recomputed; ``wall_seconds`` summed.
    Written to ``out`` like a run's results."""
    parts = [json.loads((Path(f) / "results.json").read_text()) for f in folders]
    first = parts[0]
    for name, part in zip(folders, parts):
        same = {k: v for k, v in part["settings"].items() if k != "seeds"}
        if (
            same != {k: v for k, v in first["settings"].items() if k != "seeds"}
            or part["arms"].keys() != first["arms"].keys()
        ):
            raise ValueError(f"{name}: settings or arms differ from {folders[0]}; only seeds may differ")
    merged = {k: v for k, v in first.items() if k not in ("arms", "comparisons", "commands", "wall_seconds", "runs")}
    merged["settings"] = {**first["settings"], "seeds": [s for p in parts for s in p["settings"]["seeds"]]}
    merged["merged_from"] = [str(f) for f in folders]
    merged["commands"] = [c for p in parts for c in p["commands"]]
    merged["wall_seconds"] = round(sum(p["wall_seconds"] for p in parts), 1)
    arms: dict[str, Any] = {}
    for name, arm in first["arms"].items():
        arms[name] = {
            key: [x for p in parts for x in p["arms"][name][key]] for key in arm if isinstance(arm[key], list)
        }
        if "registration" in arm:
            per_seed = [key for key, v in arm["registration"].items() if isinstance(v, list)]
            reg = {key: [x for p in parts for x in p["arms"][name]["registration"][key]] for key in per_seed}
            fixed = {
                k: v for k, v in arm["registration"].items() if k not in per_seed and k not in ("mean", "gap_closed")
            }
            rows = [dict(zip(per_seed, values)) for values in zip(*reg.values())]
            arms[name]["registration"] = _registration_entry(rows, fixed)
    merged["arms"] = arms
    merged["comparisons"] = [_comparison(arms, c["a"], c["b"]) for c in first["comparisons"]]
    return _write(merged, Path(out))


def _comparison(arms: Mapping[str, Any], a: str, b: str) -> dict[str, Any]:
    return {"a": a, "b": b, **paired_difference(arms[a]["per_subject_dice"], arms[b]["per_subject_dice"])}


def run_semi(
    settings: ExperimentSettings, bundles: Path, num_labeled: int = 1, arms: Sequence[str] = tuple(SEMI_ARMS)
) -> dict[str, Any]:
    """The GEMINI-Semi experiment (``arms``: a subset of :data:`SEMI_ARMS`);
    writes and returns ``results.json``'s content. ``runs`` maps each run
    folder name to its overrides of ``gemini_semi/configs/train.json``."""
    unknown = set(arms) - set(SEMI_ARMS)
    if unknown or "supervised_only" not in arms:
        raise ValueError(f"arms must be a subset of {list(SEMI_ARMS)} holding supervised_only, got {list(arms)}")
    chosen = {name: SEMI_ARMS[name] for name in arms}
    start = time.perf_counter()
    bundle = bundles / "gemini_semi"
    configs = ["train"]
    datalist = settings.labeled_datalist(num_labeled)
    flow = flow_init_override(bundle, configs, settings.flow_init)
    common = {**settings.common(), "datalist": str(datalist)}
    cases = load_cases(bundle, configs, common, settings.data["test"])
    atlas = load_cases(bundle, configs, common, settings.data["labeled"][:1])[0]
    k = settings.num_classes
    from gemini_dcl.registration import dice_per_class

    atlas_copy = [float(dice_per_class(atlas["label"], c["label"], k).nanmean()) for c in cases]
    ceiling = ceiling_registration(settings, cases)
    per_arm: dict[str, list] = {name: [] for name in chosen}
    atlas_reg: dict[str, list] = {name: [] for name in chosen if name != "supervised_only"}
    registration: dict[str, list] = {name: [] for name in atlas_reg}
    seconds: dict[str, list] = {name: [] for name in chosen}
    commands: list[str] = []
    runs: dict[str, dict] = {}
    for seed in settings.seeds:
        for name, arm in chosen.items():
            overrides = {
                **settings.common(),
                **flow,
                "datalist": str(datalist),
                "seed": seed,
                "epoch_length": settings.iterations,
                "progress_bar": False,
                **arm,
            }
            used, secs = train_run(bundle, configs, settings.out / "runs" / f"{name}_seed{seed}", overrides, commands)
            runs[f"{name}_seed{seed}"] = used
            seconds[name].append(round(secs, 1))
            net = load_network(bundle, configs, used)
            per_arm[name].append(evaluate_segmentation(net, cases, k))
            if name in registration:
                registration[name].append(evaluate_registration(net, cases, k, settings.max_pairs))
                atlas_reg[name].append(atlas_registration(net, atlas, cases, k))
    out: dict[str, Any] = {}
    for name in chosen:
        out[name] = _arm(settings.seeds, per_arm[name]) | {"train_seconds": seconds[name]}
        if name in registration:
            out[name]["registration"] = _registration_entry(registration[name], ceiling)
            out[f"{name}/atlas_registration"] = _arm(settings.seeds, atlas_reg[name])
    out["atlas_copy"] = _arm(settings.seeds, [atlas_copy] * len(settings.seeds))
    pairs = [(a, "supervised_only") for a in chosen if a != "supervised_only"]
    pairs += [(a, "atlas_copy") for a in chosen]
    pairs += [(a, f"{a}/atlas_registration") for a in chosen if a != "supervised_only"]
    comparisons = [_comparison(out, a, b) for a, b in pairs]
    results = {"num_labeled": num_labeled, "arms": out, "runs": runs}
    return _finish("semi", settings, results, comparisons, start, commands)


def _registration_entry(per_seed: Sequence[Mapping[str, float]], ceiling: Mapping[str, float]) -> dict[str, Any]:
    """Per-seed registration numbers, their means, and identity / ceiling;
    ``gap_closed`` = (after - identity) / (ceiling - identity), linear Dice."""
    entry: dict[str, Any] = {key: [r[key] for r in per_seed] for key in per_seed[0]}
    entry["mean"] = {key: _mean(v) for key, v in entry.items()}
    entry.update(ceiling)
    if "dice_ceiling" in ceiling:
        gap = ceiling["dice_ceiling"] - ceiling["dice_identity"]
        entry["gap_closed"] = (entry["mean"]["dice_after"] - ceiling["dice_identity"]) / gap if gap > 0 else None
    return entry


def run_mip(settings: ExperimentSettings, bundles: Path, label_counts: Sequence[int] = (1, 3)) -> dict[str, Any]:
    """The GEMINI-MIP experiment; writes and returns ``results.json``'s content."""
    start = time.perf_counter()
    bundle = bundles / "gemini_mip"
    datalists = {k: settings.labeled_datalist(k) for k in label_counts}
    ft_configs, probe_configs = ["finetune"], ["finetune", "linear_probe"]
    common = {**settings.common(), "datalist": str(datalists[label_counts[0]])}
    cases = load_cases(bundle, ft_configs, common, settings.data["test"])
    k_classes = settings.num_classes
    ceiling = ceiling_registration(settings, cases)
    per_arm: dict[str, list] = {}
    registration: list = []
    seconds: dict[str, list] = {}
    commands: list[str] = []
    # GVSL's network (the authors') is 3D only
    pretrain = {n: v for n, v in MIP_PRETRAIN.items() if settings.spatial_dims == 3 or not n.startswith("gvsl")}
    skipped = {n: "the GVSL network is 3D only" for n in MIP_PRETRAIN if n not in pretrain}
    for seed in settings.seeds:
        pretrained = {"scratch": ""}
        for name, (extra, arm) in pretrain.items():
            configs = ["train", *extra]
            overrides = {
                **settings.common(),
                **flow_init_override(bundle, configs, settings.flow_init),
                "datalist": str(datalists[label_counts[-1]]),
                "seed": seed,
                "epoch_length": settings.iterations,
                **arm,
            }
            used, secs = train_run(
                bundle, configs, settings.out / "runs" / f"{name}_pretrain_seed{seed}", overrides, commands
            )
            seconds.setdefault(f"{name}/pretrain", []).append(round(secs, 1))
            pretrained[name] = used["ckpt_dir"] + "/model.pt"
            if name == "gemini_mip":
                registration.append(
                    evaluate_registration(load_network(bundle, configs, used), cases, k_classes, settings.max_pairs)
                )
        for name, path in pretrained.items():
            for k in label_counts:
                for mode, configs in (("finetune", ft_configs), ("probe", probe_configs)):
                    key = f"{name}/{mode}_{k}"
                    overrides = {
                        **settings.common(),
                        **flow_init_override(bundle, configs, settings.flow_init),
                        "datalist": str(datalists[k]),
                        "seed": seed,
                        "epoch_length": settings.finetune_iterations,
                        "pretrained": path,
                    }
                    used, secs = train_run(
                        bundle, configs, settings.out / "runs" / f"{name}_{mode}{k}_seed{seed}", overrides, commands
                    )
                    seconds.setdefault(key, []).append(round(secs, 1))
                    per_arm.setdefault(key, []).append(
                        evaluate_segmentation(load_network(bundle, configs, used), cases, k_classes)
                    )
    arms = {key: _arm(settings.seeds, values) | {"train_seconds": seconds[key]} for key, values in per_arm.items()}
    first = arms[f"gemini_mip/finetune_{label_counts[0]}"]
    first["registration"] = _registration_entry(registration, ceiling)
    first["pretrain_seconds"] = seconds["gemini_mip/pretrain"]
    comparisons = [
        _comparison(arms, f"{name}/{mode}_{k}", f"scratch/{mode}_{k}")
        for name in pretrain
        for mode in ("finetune", "probe")
        for k in label_counts
    ]
    pretrain_seconds = {key: v for key, v in seconds.items() if key.endswith("/pretrain")}
    results = {"label_counts": list(label_counts), "arms": arms, "pretrain_seconds": pretrain_seconds}
    if skipped:
        results["skipped_arms"] = skipped
    return _finish("mip", settings, results, comparisons, start, commands)


def results_markdown(results: Mapping[str, Any]) -> str:
    """The Markdown table of a results dict: mean +- std over seeds per arm,
    registration numbers, and the paired per-subject differences."""
    s = results["settings"]
    lines = [
        f"Experiment `{results['experiment']}` on `{s['datalist']}`: seeds {s['seeds']}, "
        f"{s['iterations']} iterations ({s['finetune_iterations']} segmentation steps for fine-tuning), "
        f"{len(s['test_subjects'])} test subjects, wall time {results['wall_seconds']:.0f} s.",
        "",
        "| Arm | Test Dice, mean ± std over seeds | per seed |",
        "|---|---|---|",
    ]
    for name, arm in results["arms"].items():
        m = np.asarray(arm["mean_dice"], dtype=float)
        per_seed = ", ".join(f"{v:.3f}" for v in m)
        lines.append(f"| `{name}` | {np.mean(m):.3f} ± {np.std(m):.3f} | {per_seed} |")
    regs = {name: arm["registration"] for name, arm in results["arms"].items() if "registration" in arm}
    if regs:
        lines += [
            "",
            "| Deformer of | Dice identity | Dice after (linear) | after (nearest) | ceiling (linear) | gap closed | "
            "GVS identity → after (ceiling) | folding % (max) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in regs.items():
            m = r["mean"]
            ceil = r.get("dice_ceiling")
            gap = r.get("gap_closed")
            lines.append(
                f"| `{name.split('/')[0]}` | {r['dice_identity']:.3f} | {m['dice_after']:.3f} | {m['dice_after_nearest']:.3f} | "
                f"{'-' if ceil is None else f'{ceil:.3f}'} | {'-' if gap is None else f'{100 * gap:.0f} %'} | "
                f"{r['gvs_identity']:.3f} → {m['gvs_after']:.3f} ({r.get('gvs_ceiling', float('nan')):.3f}) | "
                f"{m['folding_percent']:.4f} ({max(r['folding_percent_max']):.4f}) |"
            )
    lines += [
        "",
        "| Paired per-subject difference (seed-averaged) | mean | 95 % interval | subjects with a > b |",
        "|---|---|---|---|",
    ]
    for c in results["comparisons"]:
        lo, hi = c["ci95"]
        lines.append(
            f"| `{c['a']}` − `{c['b']}` | {c['mean']:+.3f} | [{lo:+.3f}, {hi:+.3f}] | {100 * c['fraction_positive']:.0f} % |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """Command line; returns the results dict. ``merge --out DIR RUN_DIR...``
    merges runs made with different seeds (:func:`merge_results`)."""
    argv = list(argv) if argv is not None else None
    import sys

    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["merge"]:
        merge = argparse.ArgumentParser(prog="python -m gemini_dcl.experiment merge")
        merge.add_argument("runs", nargs="+", type=Path, help="output folders of runs with different seeds")
        merge.add_argument("--out", required=True, type=Path)
        margs = merge.parse_args(args_in[1:])
        try:
            return merge_results(margs.runs, margs.out)
        except (ValueError, FileNotFoundError) as err:
            merge.error(str(err))
    parser = argparse.ArgumentParser(prog="python -m gemini_dcl.experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=("semi", "mip"))
    parser.add_argument("--datalist", required=True, type=Path, help="datalist JSON (any 2D or 3D set)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (results.json, .md, .png, runs/)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=400, help="GEMINI-Semi / pre-training iterations")
    parser.add_argument(
        "--finetune-iterations", type=int, default=None, help="fine-tune and probe steps (default --iterations)"
    )
    parser.add_argument("--num-labeled", type=int, default=1, help="semi: labelled subjects used (the first ones)")
    parser.add_argument(
        "--label-counts", type=int, nargs="+", default=[1, 3], help="mip: labelled subjects per fine-tune"
    )
    parser.add_argument("--channels", type=int, nargs=9, default=[8, 16, 16, 32, 32, 32, 16, 16, 8])
    parser.add_argument("--deformer-channels", type=int, nargs=5, default=[8, 16, 16, 16, 8])
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--flow-init", default="small_normal", choices=("small_normal", "kaiming"))
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-pairs", type=int, default=11, help="registration pairs (consecutive test subjects)")
    parser.add_argument("--roi-size", type=int, nargs="+", default=None, help="training crop (default: whole image)")
    parser.add_argument(
        "--arms", nargs="+", default=list(SEMI_ARMS), choices=list(SEMI_ARMS), help="semi: arms to run (all by default)"
    )
    parser.add_argument("--bundles", type=Path, default=None, help="folder holding gemini_semi and gemini_mip")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the nets are small, and on a shared "
        "machine more threads made training up to 50 times slower)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        bundles = find_bundles(args.bundles)
        settings = ExperimentSettings(
            args.datalist,
            args.out,
            args.seeds,
            args.iterations,
            args.finetune_iterations,
            args.channels,
            args.deformer_channels,
            args.learning_rate,
            args.flow_init,
            args.batch_size,
            args.max_pairs,
            args.roi_size,
        )
        if "supervised_only" not in args.arms:
            raise ValueError("--arms must include supervised_only (every comparison is against it)")
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.kind == "semi":
        return run_semi(settings, bundles, args.num_labeled, args.arms)
    return run_mip(settings, bundles, args.label_counts)


if __name__ == "__main__":
    main()
