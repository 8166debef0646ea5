"""Datalists of the GEMINI bundles: loading, validation before training, and
label-value mapping.

A datalist is a JSON object with four lists (paths relative to the JSON's
folder, or absolute), each readable by MONAI's
``load_decathlon_datalist(path, data_list_key=section)``; other top-level keys
are ignored::

    {"labeled":    [{"image": "img/s0.nii.gz", "label": "lab/s0.nii.gz"}, ...],
     "unlabeled":  [{"image": "img/s5.nii.gz"}, ...],
     "validation": [{"image": ..., "label": ...}, ...],
     "test":       [{"image": ..., "label": ...}, ...]}

Label files hold the dataset's own values (e.g. MM-WHS 0, 205, 420, 500, 550,
600, 820, 850); ``label_values`` lists them in class order and
:func:`label_mapping` turns them into classes 0..K-1.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import CacheDataset
from monai.data import Dataset as MonaiDataset
from monai.transforms import MapLabelValued
from torch.utils.data import Dataset

__all__ = [
    "SECTIONS",
    "LABELED_SECTIONS",
    "DatalistError",
    "load_datalist",
    "validate_datalist",
    "label_mapping",
    "unlabeled_images",
    "PairDataset",
    "sample_datalist",
    "label_of",
]

SECTIONS = ("labeled", "unlabeled", "validation", "test")
LABELED_SECTIONS = ("labeled", "validation", "test")


class DatalistError(ValueError):
    """A datalist problem; ``problems`` lists every fault found, one per entry
    and file, so a user fixes them all in one pass."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source, self.problems = source, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"datalist {source}: {len(self.problems)} problem(s):\n{lines}")


def load_datalist(datalist: str | os.PathLike | Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> dict:
    """Read a datalist (a JSON path or an already loaded mapping) and make its
    ``image``/``label`` paths absolute: relative ones are taken from
    ``base_dir``, by default the JSON file's folder (the working folder for a
    mapping). Missing sections become empty lists; other keys pass through."""
    if isinstance(datalist, Mapping):
        source, raw = "<dict>", dict(datalist)
        base = Path(base_dir or ".")
    else:
        path = Path(datalist)
        source = str(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise DatalistError(source, ["file not found"]) from None
        except json.JSONDecodeError as e:
            raise DatalistError(source, [f"not valid JSON: {e}"]) from None
        base = Path(base_dir) if base_dir is not None else path.parent
    if not isinstance(raw, dict):
        raise DatalistError(source, [f"must be a JSON object with keys {list(SECTIONS)}, got {type(raw).__name__}"])
    # Other keys (the sample set's "labels", "xray", ...) pass through unchecked.
    problems, out = [], {k: v for k, v in raw.items() if k not in SECTIONS}
    for section in SECTIONS:
        entries = raw.get(section, [])
        if not isinstance(entries, list):
            problems.append(f"{section}: must be a list, got {type(entries).__name__}")
            entries = []
        out[section] = []
        for i, entry in enumerate(entries):
            # objects only, as monai.data.load_decathlon_datalist reads them
            if not isinstance(entry, dict) or "image" not in entry:
                problems.append(f"{section}[{i}]: must be an object with an 'image' path, got {entry!r}")
                continue
            resolved = dict(entry)
            for key in ("image", "label"):
                if key in resolved:
                    p = Path(os.path.expanduser(str(resolved[key])))
                    resolved[key] = str(p if p.is_absolute() else base / p)
            out[section].append(resolved)
    if problems:
        raise DatalistError(source, problems)
    out["_source"] = source
    return out


class _Volumes:
    """Reads each file once (a file can appear in several sections) and keeps
    what the checks need: shape, affine, finiteness, label values."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Any, str | None]] = {}

    def get(self, path: str, is_label: bool) -> tuple[Any, str | None]:
        key = f"{path}|{is_label}"
        if key not in self._cache:
            self._cache[key] = self._read(path, is_label)
        return self._cache[key]

    @staticmethod
    def _read(path: str, is_label: bool) -> tuple[Any, str | None]:
        if not Path(path).is_file():
            return None, "file not found"
        try:
            img = nib.load(path)
            # Reading the voxels (not only the header) catches truncated files.
            data = np.asanyarray(img.dataobj)
        except Exception as e:  # nibabel raises many types for damaged files
            return None, f"cannot be read as NIfTI (corrupt or truncated?): {type(e).__name__}: {e}"
        info: dict[str, Any] = {"shape": tuple(data.shape), "affine": np.asarray(img.affine)}
        if not np.isfinite(data).all():
            return info, "contains NaN or Inf voxels"
        if is_label:
            values = np.unique(data)
            if not np.all(values == np.round(values)):
                return info, "label holds non-integer values"
            info["values"] = values.astype(np.int64)
        return info, None


def _spatial(shape: tuple) -> tuple:
    # NIfTI stores a channel or time axis after the spatial ones; a trailing 1 is not spatial.
    while len(shape) > 2 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def validate_datalist(
    datalist: str | os.PathLike | Mapping[str, Any],
    label_values: Sequence[int] | None = None,
    require_unlabeled: bool = True,
    require: Sequence[str] = ("labeled",),
    base_dir: str | os.PathLike | None = None,
    affine_atol: float = 1e-3,
) -> dict:
    """Check a datalist before training and return it with absolute paths.

    Faults (all collected into one :class:`DatalistError`, each naming the
    section, entry index and file): a missing file; a file that is not
    readable NIfTI (corrupt or truncated); NaN/Inf voxels; a label value not
    in ``label_values`` or not an integer; an image and its label with
    different spatial shapes or affines; an entry of a labelled section
    without ``label``; an empty required section (``require``, plus
    ``unlabeled`` when ``require_unlabeled``).

    Args:
        datalist: JSON path or mapping (see the module docstring).
        label_values: the values label files may hold, in class order.
        require_unlabeled: the unlabelled list must not be empty.
        require: sections that must not be empty.
        base_dir: folder of relative paths (default: the JSON's folder).
        affine_atol: tolerance of the image/label affine comparison (mm).
    """
    data = load_datalist(datalist, base_dir)
    allowed = None if label_values is None else {int(v) for v in label_values}
    problems = []
    required = list(require) + (["unlabeled"] if require_unlabeled else [])
    for section in required:
        if not data[section]:
            kind = "labelled case" if section == "labeled" else f"{section} entry"
            present = {k: len(data[k]) for k in SECTIONS}
            problems.append(f"{section}: is empty (no {kind}); it needs at least one (entries per section: {present})")
    volumes = _Volumes()
    for section in SECTIONS:
        for i, entry in enumerate(data[section]):
            where = f"{section}[{i}]"
            image, err = volumes.get(entry["image"], is_label=False)
            if err:
                problems.append(f"{where} image {entry['image']}: {err}")
            if "label" not in entry:
                if section in LABELED_SECTIONS:
                    problems.append(f"{where} image {entry['image']}: has no 'label' (required in {section})")
                continue
            label, err = volumes.get(entry["label"], is_label=True)
            if err:
                problems.append(f"{where} label {entry['label']}: {err}")
                continue
            if allowed is not None:
                bad = sorted(int(v) for v in set(label["values"].tolist()) - allowed)
                if bad:
                    problems.append(
                        f"{where} label {entry['label']}: values {bad} are not in the label mapping {sorted(allowed)}"
                    )
            if image is None:
                continue
            if _spatial(image["shape"]) != _spatial(label["shape"]):
                problems.append(
                    f"{where} label {entry['label']}: shape {label['shape']} does not match image "
                    f"{entry['image']} shape {image['shape']}"
                )
            elif not np.allclose(image["affine"], label["affine"], atol=affine_atol):
                problems.append(
                    f"{where} label {entry['label']}: affine differs from image {entry['image']}:\n"
                    f"{np.array2string(label['affine'], precision=4)}\nvs\n{np.array2string(image['affine'], precision=4)}"
                )
    if problems:
        raise DatalistError(data["_source"], problems)
    return data


def label_mapping(keys: str | Sequence[str], label_values: Sequence[int]) -> MapLabelValued:
    """MONAI transform mapping the dataset's label values to classes 0..K-1
    in the order of ``label_values`` (e.g. MM-WHS ``[0, 205, 420, 500, 550,
    600, 820, 850]`` -> 0..7)."""
    values = [int(v) for v in label_values]
    if len(set(values)) != len(values):
        raise ValueError(f"label_values must be distinct, got {values}")
    return MapLabelValued(keys=keys, orig_labels=values, target_labels=list(range(len(values))))


def unlabeled_images(data: Mapping[str, Any], include_labeled: bool = True) -> list[dict[str, str]]:
    """Image entries of the unlabelled stream: ``unlabeled`` and, with
    ``include_labeled``, the images of ``labeled`` (their labels unused there)."""
    entries = list(data["unlabeled"]) + (list(data["labeled"]) if include_labeled else [])
    return [{"image": e["image"]} for e in entries]


class PairDataset(Dataset):
    """Ordered pairs (A, B), A != B, of a list of images, for GEMINI's
    unlabelled step: item ``i`` of the ``n (n - 1)`` pairs is
    ``pair_transform({"image_a": A, "image_b": B})``. The images go through
    ``transform`` once each and are cached (``cache=True``), so the pairs
    cost no extra loading; the random joint augmentation lives in
    ``pair_transform``. Shuffle the loader to draw random pairs.

    Args:
        data: image entries (``{"image": path}``), at least two.
        transform: deterministic per-image transform (loading, intensity, padding).
        pair_transform: random transform of the pair dict (same crop and
            affine for both); MONAI's DataLoader seeds it per worker.
        image_key: key of the image in ``data`` entries.
        pair_keys: output keys of A and B.
        cache: cache the transformed images (``monai.data.CacheDataset``).
    """

    def __init__(
        self,
        data: Sequence[Mapping[str, Any]],
        transform: Callable,
        pair_transform: Callable | None = None,
        image_key: str = "image",
        pair_keys: Sequence[str] = ("image_a", "image_b"),
        cache: bool = True,
    ) -> None:
        if len(data) < 2:
            raise ValueError(f"the unlabelled stream needs at least 2 images to make pairs, got {len(data)}")
        self.images = CacheDataset(data, transform, progress=False) if cache else MonaiDataset(data, transform)
        self.pair_transform = pair_transform
        self.image_key = image_key
        self.pair_keys = tuple(pair_keys)

    def __len__(self) -> int:
        n = len(self.images)
        return n * (n - 1)

    def __getitem__(self, index: int) -> Any:
        n = len(self.images)
        if not 0 <= index < n * (n - 1):
            raise IndexError(f"pair index {index} out of range for {n * (n - 1)} pairs")
        a, r = divmod(index, n - 1)
        b = r if r < a else r + 1  # skip the pair of an image with itself
        pair = {self.pair_keys[0]: self.images[a][self.image_key], self.pair_keys[1]: self.images[b][self.image_key]}
        return pair if self.pair_transform is None else self.pair_transform(pair)


def sample_datalist(folder: str | os.PathLike, **kwargs: Any) -> str:
    """Path of ``folder/datalist.json``, generating the sample set there
    first if it is absent (``gemini_dcl.sample_data.make_sample_dataset``,
    ``kwargs`` passed on). A file lock makes concurrent callers (the ranks of
    a ``torchrun`` job) wait for one generation instead of racing."""
    from gemini_dcl.sample_data import make_sample_dataset

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "datalist.json"
    with open(folder / ".generate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            make_sample_dataset(folder, **kwargs)
    return str(path)


def label_of(datalist: str | os.PathLike | Mapping[str, Any], image: str | os.PathLike) -> str | None:
    """The label path that ``datalist`` pairs with ``image`` (compared as
    absolute paths), or None when the image is not listed with a label."""
    target = Path(image).resolve()
    data = load_datalist(datalist)
    for section in LABELED_SECTIONS:
        for entry in data[section]:
            if "label" in entry and Path(entry["image"]).resolve() == target:
                return entry["label"]
    return None
