"""Weights distribution end to end: ``gemini_dcl.package`` -> a real HTTP
server on 127.0.0.1 -> ``gemini_dcl.fetch`` (verified) -> ``monai.bundle.load``
-> inference; tampered and truncated downloads refused and never installed;
the plain MONAI path (``download`` + ``download_large_files``)."""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import monai.bundle
import pytest
import torch
import yaml
from gemini_semi_support import REPO, run

from gemini_dcl import fetch
from gemini_dcl.networks import GEMINI

BUNDLE = REPO / "bundles" / "gemini_mip"
NAME = "gemini_mip"
TRACKED = ("configs", "docs", "LICENSE", "large_files.yml")  # the bundle as committed, less its weights
VERSION = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]


def tiny_network() -> GEMINI:
    return GEMINI(3, 1, 1, channels=[8] * 9, deformer_channels=[8] * 5)


class _Handler(SimpleHTTPRequestHandler):
    """Serves the folder; ``/truncated/<file>`` announces the full size and
    sends half of it, then closes the connection."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if not self.path.startswith("/truncated/"):
            return super().do_GET()
        data = (Path(self.directory) / self.path.removeprefix("/truncated/")).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The bundle packaged with tiny weights, and an HTTP server on an ephemeral port serving it."""
    work = tmp_path_factory.mktemp("package")
    bundle = work / NAME
    shutil.copytree(BUNDLE, bundle, ignore=lambda d, names: [n for n in names if d == str(BUNDLE) and n not in TRACKED])
    torch.manual_seed(0)
    weights = work / "trained.pt"
    torch.save(tiny_network().state_dict(), weights)
    out = work / "out"
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(out)))
    url = f"http://127.0.0.1:{server.server_address[1]}"
    proc = run(
        [
            sys.executable,
            "-m",
            "gemini_dcl.package",
            str(bundle),
            str(out),
            "--weights",
            str(weights),
            "--url-base",
            url,
        ]
    )
    zip_path = out / f"{NAME}_v{VERSION}.zip"
    digest = (out / f"{zip_path.name}.sha256").read_text().split()[0]
    assert digest == hashlib.sha256(zip_path.read_bytes()).hexdigest() and digest in proc.stdout
    tampered = bytearray(zip_path.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    (out / "tampered.zip").write_bytes(bytes(tampered))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield {"out": out, "url": url, "zip": zip_path, "sha256": digest, "weights": weights}
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def fetch_cli(*args: str, check: bool = True) -> object:
    return run([sys.executable, "-m", "gemini_dcl.fetch", *args, "--no-progress"], check=check)


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".fetch-")] if folder.exists() else []


def test_package_layout(served: dict) -> None:
    import zipfile

    with zipfile.ZipFile(served["zip"]) as archive:
        names = set(archive.namelist())
    assert {n.split("/")[0] for n in names} == {NAME}
    for required in (
        "LICENSE",
        "configs/metadata.json",
        "configs/train.json",
        "configs/inference.json",
        "models/model.pt",
    ):
        assert f"{NAME}/{required}" in names
    entry = yaml.safe_load((served["out"] / "large_files.yml").read_text())["large_files"][0]
    assert entry["hash_type"] == "sha256" and entry["path"] == "models/model.pt"
    assert entry["hash_val"] == hashlib.sha256((served["out"] / f"{NAME}_v{VERSION}_model.pt").read_bytes()).hexdigest()


def test_fetch_verify_load_infer(served: dict, tmp_path: Path) -> None:
    url = f"{served['url']}/{served['zip'].name}"
    proc = fetch_cli(NAME, "--url", url, "--sha256", served["sha256"], "--bundle_dir", str(tmp_path))
    assert "verified" in proc.stdout and not leftovers(tmp_path)
    net = monai.bundle.load(NAME, model=tiny_network(), bundle_dir=str(tmp_path), device="cpu")
    expected = torch.load(served["weights"], weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in net.state_dict().items())
    net.eval()
    image = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        restored = net(image)
    assert restored.shape == image.shape and torch.isfinite(restored).all()
    # the fetched bundle's own large_files.yml verifies the weights it carries (MONAI's check)
    monai.bundle.download_large_files(bundle_path=str(tmp_path / NAME))


def test_tampered_zip_refused(served: dict, tmp_path: Path) -> None:
    url = f"{served['url']}/tampered.zip"
    proc = fetch_cli(NAME, "--url", url, "--sha256", served["sha256"], "--bundle_dir", str(tmp_path), check=False)
    assert proc.returncode == 2 and "sha256 mismatch" in proc.stderr
    assert not (tmp_path / NAME).exists() and not leftovers(tmp_path)


def test_truncated_download_refused(served: dict, tmp_path: Path) -> None:
    url = f"{served['url']}/truncated/{served['zip'].name}"
    with pytest.raises(fetch.FetchError, match="truncated|broke off"):
        fetch.fetch_bundle(NAME, url, served["sha256"], tmp_path, progress=False)
    assert not (tmp_path / NAME).exists() and not leftovers(tmp_path)


def test_weights_mode_and_monai_path(served: dict, tmp_path: Path) -> None:
    """``--large_files`` installs verified weights and refuses a wrong hash;
    MONAI's ``download`` (no hash) + ``download_large_files`` (hash) also work."""
    bundle = tmp_path / "weights_only"
    bundle.mkdir()
    shutil.copy(served["out"] / "large_files.yml", bundle / "large_files.yml")
    assert fetch.main(["--large_files", str(bundle), "--no-progress"]) == 0
    weights = bundle / "models" / "model.pt"
    assert weights.read_bytes() == (served["out"] / f"{NAME}_v{VERSION}_model.pt").read_bytes()

    bad = tmp_path / "bad"
    bad.mkdir()
    spec = yaml.safe_load((served["out"] / "large_files.yml").read_text())
    spec["large_files"][0]["url"] = f"{served['url']}/tampered.zip"
    (bad / "large_files.yml").write_text(yaml.safe_dump(spec))
    assert fetch.main(["--large_files", str(bad), "--no-progress"]) == 2
    assert not (bad / "models" / "model.pt").exists() and not leftovers(bad / "models")

    plain = tmp_path / "monai"
    monai.bundle.download(name=NAME, url=f"{served['url']}/{served['zip'].name}", bundle_dir=str(plain), progress=False)
    (plain / NAME / "models" / "model.pt").unlink()
    monai.bundle.download_large_files(bundle_path=str(plain / NAME))
    assert (plain / NAME / "models" / "model.pt").read_bytes() == weights.read_bytes()
