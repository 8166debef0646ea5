"""Bundle workflows that are not a MONAI engine loop: the test-set evaluation
(segmentation and registration metrics, CSV + JSON) and the registration of
one NIfTI pair to NIfTI outputs. Bundle configs build them with ``_target_``
and call ``run()``."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot
from torch import nn

from gemini_dcl.registration import register

__all__ = ["SegRegEvaluation", "PairRegistration"]

logger = logging.getLogger(__name__)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def _spacing(image: Any) -> list[float] | None:
    if isinstance(image, MetaTensor):
        return [float(s) for s in image.pixdim]
    return None


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)


def _json_safe(obj: Any) -> Any:
    """NaN -> None, so the summary is strict JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


class SegRegEvaluation:
    """Evaluate a trained GEMINI network on the test list.

    Segmentation: sliding-window logits -> argmax; per case and foreground
    class, Dice (``monai.metrics.DiceMetric``) and HD95 in mm
    (``HausdorffDistanceMetric(percentile=95)`` with the image spacing).
    Registration (with ``register_pairs``): every ordered pair of test cases
    of equal shape (at most ``max_pairs``), moving -> fixed with the deformer;
    Dice of the warped moving label vs the fixed label (before and after) and
    the percentage of voxels with non-positive Jacobian determinant.

    Writes ``output_dir/segmentation.csv``, ``registration.csv`` and
    ``summary.json``; ``run()`` returns the summary.

    Args:
        network: a GEMINI network (``forward``, ``features``, ``flow``).
        data: test entries with ``image`` and ``label``.
        transform: loading/preprocessing of an entry (no random parts).
        roi_size: sliding-window size.
        num_classes: classes including background.
        output_dir: where the files go.
        device: where to compute.
        class_names: names of classes 0..K-1 (default ``class_i``).
        sw_batch_size, overlap: sliding-window settings.
        register_pairs: compute the registration metrics.
        max_pairs: cap on registered pairs (None: all).
    """

    def __init__(
        self,
        network: nn.Module,
        data: Sequence[Mapping[str, Any]],
        transform: Callable,
        roi_size: Sequence[int],
        num_classes: int,
        output_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        class_names: Sequence[str] | None = None,
        sw_batch_size: int = 1,
        overlap: float = 0.25,
        register_pairs: bool = True,
        max_pairs: int | None = None,
    ) -> None:
        if not data:
            raise ValueError("the test list is empty: nothing to evaluate")
        self.network, self.data, self.transform = network, list(data), transform
        self.num_classes = int(num_classes)
        self.class_names = list(class_names) if class_names else [f"class_{i}" for i in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class_names for {self.num_classes} classes")
        self.output_dir = Path(output_dir)
        self.device = torch.device(device)
        self.inferer = SlidingWindowInferer(roi_size=list(roi_size), sw_batch_size=sw_batch_size, overlap=overlap)
        self.register_pairs, self.max_pairs = register_pairs, max_pairs

    @torch.no_grad()
    def run(self) -> dict:
        """Compute, write and return the metrics."""
        self.network.eval()
        cases = [self.transform(dict(entry)) for entry in self.data]
        seg_rows = self._segmentation(cases)
        reg_rows = self._registration(cases) if self.register_pairs else []
        _write_csv(self.output_dir / "segmentation.csv", seg_rows)
        _write_csv(self.output_dir / "registration.csv", reg_rows)
        summary = self._summary(seg_rows, reg_rows)
        (self.output_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2) + "\n")
        logger.info(f"evaluation summary: {json.dumps(_json_safe(summary))}")
        return summary

    def _segmentation(self, cases: Sequence[Mapping[str, Any]]) -> list[dict]:
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
        hd95 = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        rows = []
        for entry, case in zip(self.data, cases):
            image = case["image"].unsqueeze(0).to(self.device)
            label = case["label"].unsqueeze(0).to(self.device)
            pred = self.inferer(image, self.network).argmax(1, keepdim=True)
            p, y = one_hot(pred, self.num_classes), one_hot(label.long(), self.num_classes)
            d = dice(p, y)[0].tolist()
            h = hd95(p, y, spacing=_spacing(case["image"]))[0].tolist()
            for c in range(1, self.num_classes):
                rows.append(
                    {"image": entry["image"], "class": self.class_names[c], "dice": d[c - 1], "hd95_mm": h[c - 1]}
                )
        return rows

    def _registration(self, cases: Sequence[Mapping[str, Any]]) -> list[dict]:
        rows = []
        pairs = [(i, j) for i in range(len(cases)) for j in range(len(cases)) if i != j]
        for i, j in pairs[: self.max_pairs]:
            moving, fixed = cases[i], cases[j]
            if moving["image"].shape != fixed["image"].shape:
                logger.warning(f"skip pair {self.data[i]['image']} -> {self.data[j]['image']}: shapes differ")
                continue
            result = register(
                self.network,
                moving["image"].unsqueeze(0).to(self.device),
                fixed["image"].unsqueeze(0).to(self.device),
                moving["label"].unsqueeze(0).to(self.device).long(),
                fixed["label"].unsqueeze(0).to(self.device).long(),
                num_classes=self.num_classes,
            )
            rows.append(
                {
                    "moving": self.data[i]["image"],
                    "fixed": self.data[j]["image"],
                    "dice_before": _nanmean(result.dice_before[0].tolist()),
                    "dice_after": float(result.mean_dice[0]),
                    "dice_after_linear": float(result.mean_dice_linear[0]),
                    "folding_percent": 100.0 * float(result.folding_fraction[0]),
                }
            )
        return rows

    def _summary(self, seg_rows: Sequence[Mapping], reg_rows: Sequence[Mapping]) -> dict:
        per_class = {
            name: {
                "dice": _nanmean([r["dice"] for r in seg_rows if r["class"] == name]),
                "hd95_mm": _nanmean([r["hd95_mm"] for r in seg_rows if r["class"] == name]),
            }
            for name in self.class_names[1:]
        }
        summary: dict[str, Any] = {
            "test_cases": len(self.data),
            "segmentation": {
                "mean_dice": _nanmean([r["dice"] for r in seg_rows]),
                "mean_hd95_mm": _nanmean([r["hd95_mm"] for r in seg_rows]),
                "per_class": per_class,
            },
        }
        if reg_rows:
            folding = [r["folding_percent"] for r in reg_rows]
            summary["registration"] = {
                "pairs": len(reg_rows),
                "mean_dice_before": _nanmean([r["dice_before"] for r in reg_rows]),
                "mean_dice_after": _nanmean([r["dice_after"] for r in reg_rows]),
                "mean_dice_after_linear": _nanmean([r["dice_after_linear"] for r in reg_rows]),
                "folding_percent_mean": float(np.mean(folding)),
                "folding_percent_max": float(np.max(folding)),
            }
        return summary


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


class PairRegistration:
    """Register ``moving`` onto ``fixed`` (NIfTI files) and write, on the fixed
    image's grid and affine: ``warped.nii.gz`` (the moving image),
    ``warped_label.nii.gz`` (the moving label, nearest neighbour, back in the
    dataset's label values), ``ddf.nii.gz`` (displacement, shape (*S, ndim),
    voxel units, component i along array axis i: ``warped(x) =
    moving(x + ddf(x))``), ``jacobian.nii.gz`` (determinant of the Jacobian of
    ``x -> x + ddf(x)``) and ``registration.json`` (folding %, Dice before and
    after when both labels are given). Both images must be on one grid after
    ``transform`` (resample them beforehand otherwise).

    Args:
        network: a GEMINI network (``features``, ``flow``).
        moving, fixed: image paths.
        output_dir: where the outputs go.
        transform: loading/preprocessing of ``{"image", "label"}`` dicts
            (label keys optional: ``allow_missing_keys``).
        moving_label, fixed_label: optional label paths.
        label_values: the dataset's label values in class order.
        device: where to compute.
    """

    def __init__(
        self,
        network: nn.Module,
        moving: str | os.PathLike,
        fixed: str | os.PathLike,
        output_dir: str | os.PathLike,
        transform: Callable,
        moving_label: str | os.PathLike | None = None,
        fixed_label: str | os.PathLike | None = None,
        label_values: Sequence[int] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.network, self.transform = network, transform
        self.moving, self.fixed = self._entry(moving, moving_label), self._entry(fixed, fixed_label)
        self.output_dir = Path(output_dir)
        self.label_values = None if label_values is None else np.asarray([int(v) for v in label_values])
        self.device = torch.device(device)

    @staticmethod
    def _entry(image: str | os.PathLike, label: str | os.PathLike | None) -> dict[str, str]:
        return {"image": str(image)} | ({} if label is None else {"label": str(label)})

    @torch.no_grad()
    def run(self) -> dict:
        """Register, write the NIfTI files and the JSON; return the JSON's content."""
        self.network.eval()
        moving, fixed = self.transform(dict(self.moving)), self.transform(dict(self.fixed))
        if moving["image"].shape != fixed["image"].shape:
            raise ValueError(
                f"moving {self.moving['image']} {tuple(moving['image'].shape[1:])} and fixed {self.fixed['image']} "
                f"{tuple(fixed['image'].shape[1:])} are not on one grid; resample them to a common grid first"
            )

        def batch(case: Mapping, key: str) -> torch.Tensor | None:
            return case[key].unsqueeze(0).to(self.device) if key in case else None

        moving_label, fixed_label = batch(moving, "label"), batch(fixed, "label")
        result = register(
            self.network,
            batch(moving, "image"),
            batch(fixed, "image"),
            None if moving_label is None else moving_label.long(),
            None if fixed_label is None else fixed_label.long(),
            num_classes=None if self.label_values is None else len(self.label_values),
        )
        affine = np.asarray(fixed["image"].affine, dtype=np.float64)
        out = {"moving": self.moving["image"], "fixed": self.fixed["image"], "files": {}}
        files = out["files"]
        files["warped"] = str(_save_nifti(result.warped[0, 0].cpu().numpy(), affine, self.output_dir / "warped.nii.gz"))
        ddf = result.ddf[0].movedim(0, -1).cpu().numpy().astype(np.float32)
        files["ddf"] = str(_save_nifti(ddf, affine, self.output_dir / "ddf.nii.gz"))
        jac = result.jacobian[0, 0].cpu().numpy().astype(np.float32)
        files["jacobian"] = str(_save_nifti(jac, affine, self.output_dir / "jacobian.nii.gz"))
        if result.warped_label is not None:
            classes = result.warped_label[0, 0].cpu().numpy().astype(np.int64)
            values = classes if self.label_values is None else self.label_values[classes]
            files["warped_label"] = str(
                _save_nifti(values.astype(np.int32), affine, self.output_dir / "warped_label.nii.gz")
            )
        out["folding_percent"] = 100.0 * float(result.folding_fraction[0])
        if result.dice is not None:
            out["dice_before"] = _nanmean(result.dice_before[0].tolist())
            out["dice_after"] = float(result.mean_dice[0])
            out["dice_after_linear"] = float(result.mean_dice_linear[0])
        (self.output_dir / "registration.json").write_text(json.dumps(_json_safe(out), indent=2) + "\n")
        logger.info(f"registration: {json.dumps(_json_safe(out))}")
        return out
