"""Package a MONAI bundle with its weights for distribution.

``python -m gemini_dcl.package BUNDLE_DIR OUT_DIR [--weights CKPT] [--url-base URL]``

writes

- ``OUT_DIR/{name}_v{version}.zip``: one top folder ``{name}/`` with
  ``configs/``, ``docs/``, ``LICENSE``, ``large_files.yml`` and
  ``models/model.pt`` (the layout ``monai.bundle download`` extracts and
  ``monai.bundle.load`` reads). The archive is deterministic (sorted members,
  fixed time stamps), so packaging the same files twice gives the same hash;
- ``OUT_DIR/{name}_v{version}.zip.sha256`` (``sha256sum`` format);
- ``OUT_DIR/{name}_v{version}_model.pt``: the weights alone, to publish next
  to the zip for ``monai.bundle download_large_files``;
- ``OUT_DIR/large_files.yml``: its entry (``path``, ``url``, ``hash_val``,
  ``hash_type: sha256``), also printed and written into the packaged bundle.

``name`` is the bundle folder's name and ``version`` the ``version`` of its
``configs/metadata.json``. ``--weights`` may be a plain state dict (the
bundle's ``models/model.pt``, the default) or a training checkpoint of
:class:`gemini_dcl.checkpoint.CheckpointHandler` (its ``model`` entry is
taken); ``models/model.pt`` in the zip is always a plain state dict that
``torch.load(weights_only=True)`` reads.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from gemini_dcl.pretrained import read_weights

__all__ = ["sha256_file", "large_file_entry", "package_bundle"]

# Entries copied from the bundle folder; anything else (data, eval, checkpoints) stays out.
BUNDLE_ENTRIES = ("configs", "docs", "LICENSE")
WEIGHTS_PATH = "models/model.pt"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest zip time stamp: identical bytes on every run


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def large_file_entry(url: str, hash_val: str, path: str = WEIGHTS_PATH) -> dict[str, str]:
    """A ``large_files.yml`` entry as ``monai.bundle download_large_files`` reads it."""
    return {"path": path, "url": url, "hash_val": hash_val, "hash_type": "sha256"}


def _bundle_files(bundle_dir: Path) -> list[tuple[Path, str]]:
    files = []
    for entry in BUNDLE_ENTRIES:
        src = bundle_dir / entry
        if src.is_file():
            files.append((src, entry))
        elif src.is_dir():
            files += [(p, p.relative_to(bundle_dir).as_posix()) for p in sorted(src.rglob("*")) if p.is_file()]
        elif entry in ("configs", "LICENSE"):
            raise FileNotFoundError(f"{src} is missing; a MONAI bundle needs configs/ and LICENSE")
    return files


def _zip_add(archive: zipfile.ZipFile, arcname: str, data: bytes) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def package_bundle(
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    url_base: str | None = None,
) -> dict[str, Any]:
    """Write the zip, its ``.sha256``, the weights file and ``large_files.yml``
    (see the module docstring). Returns ``{"zip", "sha256", "weights",
    "weights_sha256", "large_files", "entry"}``."""
    bundle_dir, out_dir = Path(bundle_dir).resolve(), Path(out_dir)
    meta_path = bundle_dir / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing; it gives the bundle's version")
    name, version = bundle_dir.name, json.loads(meta_path.read_text())["version"]
    weights = Path(weights) if weights is not None else bundle_dir / WEIGHTS_PATH
    if not weights.is_file():
        raise FileNotFoundError(f"weights {weights} not found (train first, or pass --weights)")
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_v{version}"

    buffer = io.BytesIO()
    torch.save(read_weights(weights), buffer)
    weights_out = out_dir / f"{stem}_model.pt"
    weights_out.write_bytes(buffer.getvalue())
    weights_hash = sha256_file(weights_out)
    url = f"{url_base.rstrip('/')}/{weights_out.name}" if url_base else weights_out.name
    entry = large_file_entry(url, weights_hash)
    large_files = yaml.safe_dump({"large_files": [entry]}, sort_keys=False)
    (out_dir / "large_files.yml").write_text(large_files)

    zip_path = out_dir / f"{stem}.zip"
    tmp = zip_path.with_name(f".{zip_path.name}.tmp-{os.getpid()}")
    try:
        with zipfile.ZipFile(tmp, "w") as archive:
            members = [(src.read_bytes(), arc) for src, arc in _bundle_files(bundle_dir)]
            members += [(large_files.encode(), "large_files.yml"), (buffer.getvalue(), WEIGHTS_PATH)]
            for data, arc in sorted(members, key=lambda m: m[1]):
                _zip_add(archive, f"{name}/{arc}", data)
        os.replace(tmp, zip_path)
    finally:
        tmp.unlink(missing_ok=True)
    zip_hash = sha256_file(zip_path)
    (out_dir / f"{zip_path.name}.sha256").write_text(f"{zip_hash}  {zip_path.name}\n")
    return {
        "zip": str(zip_path),
        "sha256": zip_hash,
        "weights": str(weights_out),
        "weights_sha256": weights_hash,
        "large_files": str(out_dir / "large_files.yml"),
        "entry": entry,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 on a user error)."""
    parser = argparse.ArgumentParser(prog="python -m gemini_dcl.package", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle_dir", help="the bundle folder (its name is the bundle name)")
    parser.add_argument("out_dir", help="where the zip, its .sha256, the weights and large_files.yml go")
    parser.add_argument("--weights", help="weights or training checkpoint (default BUNDLE_DIR/models/model.pt)")
    parser.add_argument("--url-base", help="URL the files will be published under (for the large_files.yml url)")
    args = parser.parse_args(argv)
    try:
        out = package_bundle(args.bundle_dir, args.out_dir, args.weights, args.url_base)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out['zip']}\nsha256 {out['sha256']}\nlarge_files.yml entry:")
    print(yaml.safe_dump({"large_files": [out["entry"]]}, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
