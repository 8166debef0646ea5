"""Derive the sample data shipped in ``gemini_dcl/data`` from the real data
(MNI152 2009a template, NIH ChestX-ray14 PNGs). Run once by the maintainers;
the package never reads the source folder.

    python scripts/derive_sample_data.py [--source /work/shared/data] [--out gemini_dcl/data]

MNI152: the T1 template and the grey/white-matter probability maps (1 mm,
uint8) are cropped to the head (the template's non-zero region, which is
brain plus surrounding CSF, 4 mm margin) and averaged over 2x2x2 blocks to
2 mm. Tissue labels at 2 mm, with ``head`` the hole-filled non-zero region and
``f`` its fraction per block: background where f < 0.5, else the argmax of
(CSF = f - p_GM - p_WM, p_GM, p_WM) as 1 CSF, 2 GM, 3 WM. Chest X-rays: 8-bit
grayscale, resized to 128x128 (Lanczos), same view/sex folders and names.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from scipy import ndimage

from gemini_dcl.sample_data import NOTICE, TEMPLATE_IMAGE, TEMPLATE_LABEL, XRAY_DIR, save_nifti

MNI = "mni152_2009a/mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
BLOCK = 2
MARGIN = 4
XRAY_SIZE = 128

NOTICE_TEXT = """# Notice: third-party data in gemini_dcl/data

## mni152/ (derived from the MNI ICBM 2009a template)

Files: `mni152_2009a_t1_2mm.nii.gz` (T1-weighted template, 2 mm, cropped) and
`mni152_2009a_tissue_2mm.nii.gz` (tissue labels 0 background, 1 CSF, 2 grey
matter, 3 white matter, derived from the grey/white-matter probability maps),
made by `scripts/derive_sample_data.py` from the ICBM 2009a nonlinear
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


def derive_template(source: Path, out: Path) -> None:
    """Write the 2 mm T1 and tissue labels under ``out/mni152``."""
    t1_img = nib.load(source / MNI.format("t1"))
    t1 = np.asarray(t1_img.dataobj, dtype=np.float64)
    gm = np.asarray(nib.load(source / MNI.format("gm")).dataobj, dtype=np.float64) / 255.0
    wm = np.asarray(nib.load(source / MNI.format("wm")).dataobj, dtype=np.float64) / 255.0
    head = ndimage.binary_fill_holes(t1 > 0)
    idx = np.argwhere(head)
    lo = np.maximum(idx.min(0) - MARGIN, 0)
    hi = np.minimum(idx.max(0) + MARGIN + 1, head.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    t1_2mm = _block_mean(t1[crop])
    gm_2mm, wm_2mm, head_2mm = (_block_mean(v[crop]) for v in (gm, wm, head.astype(np.float64)))
    label = np.stack([head_2mm - gm_2mm - wm_2mm, gm_2mm, wm_2mm]).argmax(0) + 1
    label[head_2mm < 0.5] = 0
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
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "gemini_dcl" / "data")
    args = parser.parse_args()
    derive_template(args.source, args.out)
    derive_xrays(args.source, args.out)
    (args.out / NOTICE).write_text(NOTICE_TEXT)


if __name__ == "__main__":
    main()
