"""PNG figures with matplotlib's Agg canvas (no display, no pyplot state):
segmentation overlays, a registration panel, training curves, the summary
of a multi-seed experiment.

Arrays may be numpy or torch, with leading singleton batch/channel axes;
3D volumes are shown by their middle slices along each axis (overlays) or the
middle slice of the last axis (registration panel).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, TwoSlopeNorm
from matplotlib.figure import Figure

__all__ = ["overlay_figure", "registration_panel", "training_curves", "checkerboard", "experiment_figure"]

PathLike = Union[str, Path]
_LABEL_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]


def _spatial(name: str, x: Any, channels: bool = False) -> np.ndarray:
    """``x`` as float numpy with leading singleton axes removed: (*S), or
    (ndim, *S) when ``channels``; S must be 2D or 3D."""
    if x is None:
        raise ValueError(f"{name} is required")
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    keep = 1 if channels else 0
    while arr.ndim > keep + 2 and arr.shape[0] == 1:
        arr = arr[0]
    spatial = arr.shape[keep:]
    if len(spatial) not in (2, 3) or (channels and arr.shape[0] != len(spatial)):
        what = "(ndim, *spatial)" if channels else "(*spatial) with optional leading singleton axes"
        raise ValueError(f"{name} must be {what}, 2D or 3D, got shape {tuple(np.shape(x))}")
    return arr.astype(np.float32)


def _middle_slices(vol: np.ndarray) -> list[np.ndarray]:
    """2D: the image; 3D: the middle slice across each axis (axis 0, 1, 2)."""
    if vol.ndim == 2:
        return [vol]
    return [np.take(vol, vol.shape[a] // 2, axis=a) for a in range(3)]


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=100)
    return path


def _label_cmap(num_classes: int) -> ListedColormap:
    colours = [_LABEL_COLOURS[i % len(_LABEL_COLOURS)] for i in range(max(num_classes - 1, 1))]
    return ListedColormap(colours)


def overlay_figure(
    image: Any, label: Any = None, prediction: Any = None, path: PathLike = "overlay.png", title: str = ""
) -> Path:
    """Image with label and prediction overlays (label 0 transparent).

    Args:
        image: (*S) or with leading singleton axes, S 2D or 3D.
        label, prediction: integer maps of the same S, optional.
        path: PNG file written (parents created).

    Returns:
        ``path``. Rows: the middle slices (3D: across axes 0, 1, 2);
        columns: image, image + label, image + prediction.
    """
    img = _spatial("image", image)
    overlays = [(n, _spatial(n, m)) for n, m in (("label", label), ("prediction", prediction)) if m is not None]
    for name, m in overlays:
        if m.shape != img.shape:
            raise ValueError(f"{name} spatial shape {m.shape} must equal image's {img.shape}")
    num_classes = int(max([m.max() for _, m in overlays], default=1)) + 1
    cmap = _label_cmap(num_classes)
    rows = list(zip(_middle_slices(img), *[_middle_slices(m) for _, m in overlays]))
    cols = 1 + len(overlays)
    fig = Figure(figsize=(3 * cols, 3 * len(rows)))
    for r, (im, *maps) in enumerate(rows):
        for c in range(cols):
            ax = fig.add_subplot(len(rows), cols, r * cols + c + 1)
            ax.imshow(im.T, cmap="gray", origin="lower")
            if c > 0:
                shown = np.ma.masked_equal(maps[c - 1].T, 0)
                vmax = max(num_classes - 1, 1)
                ax.imshow(shown, cmap=cmap, vmin=1, vmax=vmax, alpha=0.45, origin="lower", interpolation="nearest")
            ax.set_title(["image", *[n for n, _ in overlays]][c] if r == 0 else "")
            ax.axis("off")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """Alternate ``a`` and ``b`` (same 2D shape) in ``tiles`` x ``tiles`` squares."""
    rows = (np.arange(a.shape[0]) * tiles // a.shape[0])[:, None]
    cols = (np.arange(a.shape[1]) * tiles // a.shape[1])[None, :]
    return np.where((rows + cols) % 2 == 0, a, b)


def _plane(vol: np.ndarray) -> np.ndarray:
    """2D image of a 2D or 3D volume: itself or the middle slice of the last axis."""
    return vol if vol.ndim == 2 else vol[..., vol.shape[-1] // 2]


def registration_panel(
    moving: Any, fixed: Any, warped: Any, ddf: Any, jacobian: Any, path: PathLike, grid_step: int = 4
) -> Path:
    """Moving, fixed, warped, checkerboard(warped, fixed), the deformed grid
    ``x + ddf(x)`` (in-plane components) and the Jacobian-determinant map
    (diverging around 1; folds, det <= 0, outlined).

    Args:
        moving, fixed, warped, jacobian: (*S) or with leading singleton axes.
        ddf: (ndim, *S) or (1, ndim, *S), voxel units, channel i along axis i.
        path: PNG written. grid_step: grid line spacing in voxels.

    Returns:
        ``path``; 3D inputs are shown by the middle slice of the last axis.
    """
    images = {n: _spatial(n, v) for n, v in (("moving", moving), ("fixed", fixed), ("warped", warped))}
    jac = _spatial("jacobian", jacobian)
    field = _spatial("ddf", ddf, channels=True)
    for name, v in [*images.items(), ("jacobian", jac), ("ddf", field[0])]:
        if v.shape != images["fixed"].shape:
            raise ValueError(f"{name} spatial shape {v.shape} must equal fixed's {images['fixed'].shape}")
    m, f, w, j = (_plane(v) for v in (*images.values(), jac))
    u = [_plane(field[i]) for i in range(2)]  # in-plane displacement along axes 0 and 1
    fig = Figure(figsize=(12, 7.5))
    panels = [("moving", m), ("fixed", f), ("warped", w), ("checkerboard warped/fixed", checkerboard(w, f))]
    vmax = max(float(np.max(v)) for v in (m, f, w)) or 1.0
    for k, (name, im) in enumerate(panels):
        ax = fig.add_subplot(2, 3, k + 1)
        ax.imshow(im.T, cmap="gray", origin="lower", vmin=0, vmax=vmax)
        ax.set_title(name)
        ax.axis("off")
    ax = fig.add_subplot(2, 3, 5)
    ii, jj = np.meshgrid(np.arange(f.shape[0]), np.arange(f.shape[1]), indexing="ij")
    px, py = ii + u[0], jj + u[1]
    for k in range(0, f.shape[0], grid_step):
        ax.plot(px[k, :], py[k, :], "b-", lw=0.7)
    for k in range(0, f.shape[1], grid_step):
        ax.plot(px[:, k], py[:, k], "b-", lw=0.7)
    ax.set_aspect("equal")
    ax.set_title("deformation grid")
    ax.axis("off")
    ax = fig.add_subplot(2, 3, 6)
    span = max(float(np.abs(j - 1).max()), 1e-3)
    shown = ax.imshow(j.T, cmap="RdBu_r", norm=TwoSlopeNorm(1.0, 1.0 - span, 1.0 + span), origin="lower")
    if (j <= 0).any():
        ax.contour((j <= 0).T.astype(float), levels=[0.5], colors="k", linewidths=0.8, origin="lower")
    fig.colorbar(shown, ax=ax, fraction=0.046)
    ax.set_title(f"Jacobian det. (folds {float((jac <= 0).mean()):.2%})")
    ax.axis("off")
    return _save(fig, path)


def _load_history(history: Union[Mapping, Sequence[Mapping], PathLike]) -> dict[str, list[float]]:
    """Columns of a history: {name: values}, records [{name: value}], or a
    .json (either form) / .csv (header row) file."""
    if isinstance(history, (str, Path)):
        path = Path(history)
        if not path.is_file():
            raise FileNotFoundError(f"history file {path} does not exist")
        if path.suffix == ".csv":
            with path.open(newline="") as fh:
                history = list(csv.DictReader(fh))
        elif path.suffix == ".json":
            history = json.loads(path.read_text())
        else:
            raise ValueError(f"history file must be .csv or .json, got {path.name}")
    if isinstance(history, Mapping):
        columns = {str(k): list(v) for k, v in history.items()}
    elif isinstance(history, Sequence) and all(isinstance(r, Mapping) for r in history):
        names = list(dict.fromkeys(k for r in history for k in r))
        columns = {str(n): [r.get(n, np.nan) for r in history] for n in names}
    else:
        raise TypeError(
            f"history must be a dict of lists, a list of dicts or a file path, got {type(history).__name__}"
        )
    out = {}
    for name, values in columns.items():
        try:
            out[name] = [float(v) if v not in ("", None) else np.nan for v in values]
        except (TypeError, ValueError):
            continue  # non-numeric columns (e.g. a time stamp) are not plotted
    if not out:
        raise ValueError("history holds no numeric columns")
    return out


def training_curves(history: Union[Mapping, Sequence[Mapping], PathLike], path: PathLike, x_key: str = "") -> Path:
    """One subplot per metric against ``x_key`` (default: "epoch", "iteration"
    or "step" when present, else the index).

    Args:
        history: {name: [values]}, [{name: value}, ...], or a .csv/.json file.
        path: PNG written.

    Returns:
        ``path``.
    """
    columns = _load_history(history)
    x_key = x_key or next((k for k in ("epoch", "iteration", "step") if k in columns), "")
    if x_key and x_key not in columns:
        raise ValueError(f"x_key {x_key!r} is not a column of the history ({sorted(columns)})")
    metrics = [k for k in columns if k != x_key]
    if not metrics:
        raise ValueError(f"history holds no metric besides {x_key!r}")
    cols = min(len(metrics), 3)
    rows = -(-len(metrics) // cols)
    fig = Figure(figsize=(4 * cols, 3 * rows))
    for k, name in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        y = np.asarray(columns[name])
        x = np.asarray(columns[x_key]) if x_key else np.arange(len(y))
        ax.plot(x[: len(y)], y, marker="." if len(y) < 50 else None)
        ax.set_title(name)
        ax.set_xlabel(x_key or "index")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def experiment_figure(results: Mapping[str, Any], path: PathLike) -> Path:
    """Summary of ``gemini_dcl.experiment`` results: left, the test Dice of
    every arm as mean +- std over seeds (dots: the seeds); right, each
    comparison's paired per-subject differences (dots) with their mean and
    95 % interval (bar)."""
    arms = results["arms"]
    comparisons = results.get("comparisons", [])
    names = list(arms)
    fig = Figure(figsize=(11, max(3.0, 0.32 * max(len(names), len(comparisons)) + 1.2)))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.1]})
    for y, name in enumerate(names):
        seeds = np.asarray(arms[name]["mean_dice"], dtype=float)
        left.errorbar(np.mean(seeds), y, xerr=np.std(seeds), fmt="o", color="black", capsize=3)
        left.scatter(seeds, np.full(len(seeds), y), s=10, color="#4363d8", zorder=3)
    left.set_yticks(range(len(names)), names, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("test Dice (mean ± std over seeds)")
    left.grid(axis="x", alpha=0.3)
    for y, c in enumerate(comparisons):
        diff = np.asarray(c["per_subject"], dtype=float)
        right.scatter(diff, np.full(len(diff), y), s=9, color="#f58231", alpha=0.7)
        right.errorbar(
            c["mean"],
            y,
            xerr=[[c["mean"] - c["ci95"][0]], [c["ci95"][1] - c["mean"]]],
            fmt="D",
            color="black",
            capsize=3,
        )
    right.axvline(0.0, color="grey", lw=0.8)
    right.set_yticks(range(len(comparisons)), [f"{c['a']} − {c['b']}" for c in comparisons], fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("paired per-subject Dice difference, mean and 95 % CI")
    right.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{results.get('experiment', '')}: seeds {results.get('settings', {}).get('seeds', '')}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
