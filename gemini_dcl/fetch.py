"""Download a packaged bundle or its weights, verified by sha256 before use.

``monai.bundle download --url`` checks no hash. This closes that gap:

- bundle mode, ``python -m gemini_dcl.fetch NAME --url URL --sha256 HASH --bundle_dir DIR``:
  the zip is downloaded (progress bar) to a hidden temporary file in ``DIR``,
  its size checked against ``Content-Length`` (a truncated download is
  refused) and its sha256 against ``HASH``; only then is it extracted, into a
  hidden temporary folder, its members checked (one top folder ``NAME/``, no
  absolute or ``..`` paths), and the folder renamed to ``DIR/NAME``. A refused
  file is deleted: nothing unverified is ever left where it would be loaded.
- weights mode, ``python -m gemini_dcl.fetch --large_files BUNDLE_PATH``:
  every entry of ``BUNDLE_PATH/large_files.yml`` (``path``, ``url``,
  ``hash_val``, ``hash_type`` sha256) is downloaded and verified the same way
  and then renamed onto ``BUNDLE_PATH/path``. A present file that already
  matches is kept; entries without a hash are refused.

Errors exit with status 2 and a message naming the file, expected and actual
hash (or sizes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import yaml
from tqdm import tqdm

from gemini_dcl.package import sha256_file

__all__ = ["FetchError", "download_verified", "fetch_bundle", "fetch_large_files"]


class FetchError(RuntimeError):
    """A download that cannot be trusted: truncated, wrong hash, unsafe archive."""


def _check_hash(expected: str) -> str:
    expected = expected.strip().lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise FetchError(f"expected a 64-digit hex sha256, got {expected!r}")
    return expected


def download_verified(
    url: str, sha256: str, dest_dir: str | os.PathLike, progress: bool = True, timeout: float = 60.0
) -> Path:
    """Download ``url`` into a hidden temporary file in ``dest_dir`` and return
    its path once its size and sha256 are verified; on any failure the
    temporary file is deleted and :class:`FetchError` raised. The caller
    renames the file into place (same folder, so the rename is atomic)."""
    expected = _check_hash(sha256)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".fetch-", suffix=".part", dir=dest_dir)
    tmp = Path(name)
    digest, received = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], disable=not progress) as bar:
                while True:
                    try:
                        block = response.read(1 << 16)
                    except Exception as e:  # http.client.IncompleteRead, connection reset: a short download
                        raise FetchError(f"download of {url} broke off after {received} bytes: {e}") from e
                    if not block:
                        break
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    bar.update(len(block))
        if total is not None and received != total:
            raise FetchError(f"download of {url} is truncated: {received} of {total} bytes")
        actual = digest.hexdigest()
        if actual != expected:
            raise FetchError(
                f"sha256 mismatch for {url}: expected {expected}, got {actual} ({received} bytes); "
                "the file was deleted and nothing was installed"
            )
        return tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _safe_members(archive: zipfile.ZipFile, name: str) -> None:
    for member in archive.namelist():
        parts = PurePosixPath(member).parts
        if member.startswith("/") or "\\" in member or ".." in parts or not parts or parts[0] != name:
            raise FetchError(f"archive member {member!r} is not inside the single top folder {name}/")


def fetch_bundle(
    name: str, url: str, sha256: str, bundle_dir: str | os.PathLike, overwrite: bool = False, progress: bool = True
) -> Path:
    """Download, verify and extract a bundle zip to ``bundle_dir/name``; returns that path."""
    bundle_dir = Path(bundle_dir)
    target = bundle_dir / name
    if target.exists() and not overwrite:
        raise FetchError(f"{target} already exists (pass overwrite / --overwrite to replace it)")
    archive_path = download_verified(url, sha256, bundle_dir, progress)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=bundle_dir))
    try:
        try:
            with zipfile.ZipFile(archive_path) as archive:
                _safe_members(archive, name)
                bad = archive.testzip()
                if bad is not None:
                    raise FetchError(f"archive member {bad} is corrupt")
                archive.extractall(staging)
        except zipfile.BadZipFile as e:
            raise FetchError(f"{url} is not a zip archive: {e}") from e
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / name, target)
    finally:
        archive_path.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def fetch_large_files(bundle_path: str | os.PathLike, progress: bool = True) -> list[Path]:
    """Download and verify every entry of ``bundle_path/large_files.yml``; returns the installed paths."""
    bundle_path = Path(bundle_path).resolve()
    spec = yaml.safe_load((bundle_path / "large_files.yml").read_text()) or {}
    installed = []
    for entry in spec.get("large_files", []):
        hash_type = str(entry.get("hash_type") or "sha256").lower()
        if hash_type != "sha256":
            raise FetchError(f"{entry['path']}: hash_type {hash_type} is not supported (sha256 only)")
        if not entry.get("hash_val"):
            raise FetchError(f"{entry['path']}: large_files.yml gives no hash_val; refusing an unverifiable file")
        target = (bundle_path / entry["path"]).resolve()
        if not target.is_relative_to(bundle_path):
            raise FetchError(f"{entry['path']} points outside the bundle {bundle_path}")
        if target.is_file() and sha256_file(target) == _check_hash(entry["hash_val"]):
            installed.append(target)
            continue
        tmp = download_verified(entry["url"], entry["hash_val"], target.parent, progress)
        os.replace(tmp, target)
        installed.append(target)
    return installed


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 when a file is refused)."""
    parser = argparse.ArgumentParser(prog="python -m gemini_dcl.fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", nargs="?", help="bundle name (the zip's top folder)")
    parser.add_argument("--url", help="URL of the bundle zip")
    parser.add_argument("--sha256", help="expected sha256 of the zip")
    parser.add_argument("--bundle_dir", default=".", help="where NAME/ is created (default: .)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing NAME/ after verification")
    parser.add_argument("--large_files", metavar="BUNDLE_PATH", help="weights mode: verify large_files.yml entries")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    progress = not args.no_progress
    try:
        if args.large_files:
            for path in fetch_large_files(args.large_files, progress):
                print(f"verified {path}")
            return 0
        if not (args.name and args.url and args.sha256):
            parser.error("bundle mode needs NAME, --url and --sha256 (or use --large_files BUNDLE_PATH)")
        print(
            f"verified and extracted {fetch_bundle(args.name, args.url, args.sha256, args.bundle_dir, args.overwrite, progress)}"
        )
    except (FetchError, OSError, KeyError, yaml.YAMLError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
