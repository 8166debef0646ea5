"""Derive the sample data shipped in ``gemini_dcl/data`` from the real data
(MNI152 2009a template, NIH ChestX-ray14 PNGs). Run once by the maintainers;
the package never reads the source folder.

    python scripts/derive_sample_data.py --source SRC [--out gemini_dcl/data]

SRC holds ``mni152_2009a/`` (the three ``mni_icbm152_*_tal_nlin_sym_09a_converted.nii.gz``
files shipped in the ``nilearn`` wheel, ``nilearn/datasets/data/``) and
``chestxray/<VIEW>_<SEX>/*.png`` (NIH ChestX-ray14 frontal images).

MNI152: the T1 template and the grey/white-matter probability maps (1 mm,
uint8) are cropped to the head (the template's non-zero region, which is
brain plus surrounding CSF, 4 mm margin) and averaged over 2x2x2 blocks to
2 mm. Structure labels (``gemini_dcl.sample_data.STRUCTURE_NAMES``) are made
at 1 mm and then voted to 2 mm (the class with the largest share of each
block; background where the hole-filled head covers < 0.5 of the block). At
1 mm, with ``head`` the hole-filled non-zero region, CSF = head - p_GM - p_WM,
the tissue of a voxel is the argmax of (CSF, p_GM, p_WM), and ``depth`` is
the distance (mm) to the outside of the head:
- ventricles: the CSF components of >= 500 voxels at depth > 22 mm, grown
  by 3 voxels into CSF at depth > 12 mm; other CSF is extracerebral CSF;
- deep grey matter: GM at depth > 22 mm inside the MNI box |x| < 34,
  -42 < y < 28, -16 < z < 22 mm (caudate, putamen, pallidum, thalamus);
- other GM (cortical) and WM are split into left (MNI x < 0) and right.
Chest X-rays: 8-bit grayscale, resized to 128x128 (Lanczos), same view/sex
folders and names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from gemini_dcl.sample_data import NOTICE, STRUCTURE_NAMES, TEMPLATE_IMAGE, TEMPLATE_LABEL, XRAY_DIR, save_nifti

MNI = "mni152_2009a/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
BLOCK = 2
MARGIN = 4
VENTRICLE_DEPTH_MM, VENTRICLE_GROW_DEPTH_MM, VENTRICLE_MIN_VOXELS, VENTRICLE_GROW = 22.0, 12.0, 500, 3
DEEP_GM_DEPTH_MM = 22.0
DEEP_GM_BOX_MM = ((-34.0, 34.0), (-42.0, 28.0), (-16.0, 22.0))
XRAY_SIZE = 128

NOTICE_TEXT = """# Notice: third-party data in gemini_dcl/data

## mni152/ (derived from the MNI ICBM 2009a template)

Files: `mni152_2009a_t1_2mm.nii.gz` (T1-weighted template, 2 mm voxels,
cropped) and `mni152_2009a_structures_2mm.nii.gz` (2 mm labels 0 background,
1 extracerebral CSF, 2 ventricles, 3 deep grey matter, 4/5 left/right
cortical grey matter, 6/7 left/right white matter, derived from the
grey/white-matter probability maps, tissue depth, MNI position and the
midline; see the script's docstring), made by `scripts/derive_sample_data.py` from the ICBM 2009a nonlinear
symmetric MNI152 template (files `mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz`
as shipped in the `nilearn` wheel). Synthetic subjects written by
`python -m gemini_dcl.sample_data` are derived from them too.

Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre,
Montreal Neurological Institute, McGill University. Permission to use, copy,
modify, and distribute this data for any purpose and without fee is hereby
granted, provided that the above copyright notice appear in all copies.

## chestxray/ (NIH ChestX-ray14)

16 frontal chest X-rays from the NIH ChestX-ray14 dataset (NIH Clinical
Center), grouped by view (AP/PA) and sex (F/M) as in the GEMINI authors'
self-supervised pre-training example, converted to 8-bit grayscale and
resized from 1024x1024 to 128x128 by `scripts/derive_sample_data.py`; file
names are the dataset's image indices. Data provider: NIH Clinical Center
(https://nihcc.app.box.com/v/ChestXray-NIHCC). Reference: X. Wang, Y. Peng,
L. Lu, Z. Lu, M. Bagheri, R. M. Summers, "ChestX-ray8: Hospital-scale Chest
X-ray Database and Benchmarks on Weakly-Supervised Classification and
Localization of Common Thorax Diseases", IEEE CVPR 2017.
"""


def _block_mean(vol: np.ndarray) -> np.ndarray:
    """Mean over BLOCK^3 blocks; zero-pads to a multiple of BLOCK first."""
    pad = [(0, -n % BLOCK) for n in vol.shape]
    vol = np.pad(vol, pad)
    x, y, z = (n // BLOCK for n in vol.shape)
    return vol.reshape(x, BLOCK, y, BLOCK, z, BLOCK).mean(axis=(1, 3, 5))


def _structures(t1: np.ndarray, gm: np.ndarray, wm: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """1 mm structure labels (values of ``STRUCTURE_NAMES``) from the T1 and the
    GM/WM probabilities; see the module docstring."""
    head = ndimage.binary_fill_holes(t1 > 0)
    csf = np.clip(head - gm - wm, 0.0, 1.0)
    tissue = np.stack([csf, gm, wm]).argmax(0)
    is_csf, is_gm, is_wm = (head & (tissue == k) for k in range(3))
    depth = ndimage.distance_transform_edt(head, sampling=np.linalg.norm(affine[:3, :3], axis=0))
    parts, n = ndimage.label(is_csf & (depth > VENTRICLE_DEPTH_MM))
    sizes = ndimage.sum_labels(np.ones_like(parts), parts, np.arange(1, n + 1))
    ventricles = np.isin(parts, 1 + np.flatnonzero(sizes >= VENTRICLE_MIN_VOXELS))
    ventricles = ndimage.binary_dilation(
        ventricles, iterations=VENTRICLE_GROW, mask=is_csf & (depth > VENTRICLE_GROW_DEPTH_MM)
    )
    mm = np.stack(np.meshgrid(*[np.arange(n) for n in t1.shape], indexing="ij"), -1) @ affine[:3, :3].T + affine[:3, 3]
    in_box = np.all([(mm[..., i] > lo) & (mm[..., i] < hi) for i, (lo, hi) in enumerate(DEEP_GM_BOX_MM)], axis=0)
    deep_gm = is_gm & in_box & (depth > DEEP_GM_DEPTH_MM)
    right = mm[..., 0] >= 0
    names = {v: k for k, v in STRUCTURE_NAMES.items()}
    label = np.zeros(t1.shape, np.uint8)
    for name, mask in (
        ("extracerebral_csf", is_csf & ~ventricles),
        ("ventricles", ventricles),
        ("left_cortical_gm", is_gm & ~deep_gm & ~right),
        ("right_cortical_gm", is_gm & ~deep_gm & right),
        ("deep_gm", deep_gm),
        ("left_wm", is_wm & ~right),
        ("right_wm", is_wm & right),
    ):
        label[mask] = names[name]
    return label


def derive_template(source: Path, out: Path) -> None:
    """Write the 2 mm T1 and structure labels under ``out/mni152``."""
    t1_img = nib.load(source / MNI.format("t1"))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float64)
    gm = np.asarray(nib.load(source / MNI.format("gm")).dataobj, dtype=np.float64) / 255.0
    wm = np.asarray(nib.load(source / MNI.format("wm")).dataobj, dtype=np.float64) / 255.0
    label_1mm = _structures(t1, gm, wm, t1_img.affine)
    head = ndimage.binary_fill_holes(t1 > 0)
    idx = np.argwhere(head)
    lo = np.maximum(idx.min(0) - MARGIN, 0)
    hi = np.minimum(idx.max(0) + MARGIN + 1, head.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    t1_2mm = _block_mean(t1[crop])
    votes = np.stack([_block_mean((label_1mm[crop] == v).astype(np.float64)) for v in sorted(STRUCTURE_NAMES)])
    label = votes[1:].argmax(0) + 1
    label[_block_mean(head[crop].astype(np.float64)) < 0.5] = 0
    # new voxel 0 is the centre of the first block: old index lo + (BLOCK - 1) / 2
    affine = t1_img.affine @ np.diag([BLOCK, BLOCK, BLOCK, 1.0])
    affine[:3, 3] = t1_img.affine[:3, :3] @ (lo + (BLOCK - 1) / 2) + t1_img.affine[:3, 3]
    (out / TEMPLATE_IMAGE).parent.mkdir(parents=True, exist_ok=True)
    note = "MNI ICBM2009a (C) 1993-2009 L. Collins, MNI, McGill; see NOTICE.md"
    save_nifti(np.round(t1_2mm).astype(np.uint8), affine, out / TEMPLATE_IMAGE, note)
    save_nifti(label.astype(np.uint8), affine, out / TEMPLATE_LABEL, note)


def derive_xrays(source: Path, out: Path) -> None:
    """Write 128x128 grayscale copies of the chest X-rays under ``out/chestxray``."""
    for png in sorted((source / "chestxray").glob("*/*.png")):
        dst = out / XRAY_DIR / png.parent.name / png.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(png) as im:
            im.convert("L").resize((XRAY_SIZE, XRAY_SIZE), Image.Resampling.LANCZOS).save(dst, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="folder with mni152_2009a/ and chestxray/")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "gemini_dcl" / "data")
    args = parser.parse_args()
    derive_template(args.source, args.out)
    derive_xrays(args.source, args.out)
    (args.out / NOTICE).write_text(NOTICE_TEXT)


if __name__ == "__main__":
    main()
