"""Every CPU instruction-set path (GEMINI_CPU_CAPABILITY) against the
reference: warp (row kernels: full lanes, row tails, masked border lanes,
both paddings, 2D/3D), velocity integration, GSS and local NCC, forward and
backward, on one and two threads, and the scatter's slab colouring and its
per-thread-buffer fallback. A focused subset, not the whole op suite per path."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from opsutil import (
    assert_fwd_bwd_close,
    avoid_ties,
    have,
    randn,
    random_ddf,
    smooth_field,
    supported_cpu_paths,
)

import gemini_ops
from gemini_ops import reference

pytestmark = pytest.mark.skipif(not have("compiled"), reason="needs the compiled library")

SUPPORTED = supported_cpu_paths()


# 3D: 21 = one 16-lane + 5 tail voxels, or two 8-lane + 5; 2D: 37 = 2 x 16 + 5
SHAPES = {2: (19, 37), 3: (13, 11, 21)}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_paths(path, threads, ndim, dtype, padding):
    spatial = SHAPES[ndim]
    image = randn((2, 3, *spatial), dtype, 1)
    ddf = random_ddf(2, ndim, spatial, dtype, 2, scale=3.0)  # many corners outside: masked lanes
    for mode in ("bilinear", "nearest"):
        i, d = image.clone().requires_grad_(), ddf.clone().requires_grad_()
        ri, rd = image.double().requires_grad_(), ddf.double().requires_grad_()
        out = gemini_ops.warp(i, d, mode, padding)
        ref = reference.warp(ri, rd, mode, padding)
        assert_fwd_bwd_close(out, ref, (i, d), (ri, rd), dtype, factor=4.0, what=f"{path} {mode}")


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_warp_many_channels(path, threads, padding):
    """9 channels: a block of 8 scattered together (AVX-512: in vector groups
    of lanes, see csrc/cpu/lanes.h), then one more."""
    spatial = SHAPES[3]
    image = randn((2, 9, *spatial), torch.float32, 16).requires_grad_()
    ddf = random_ddf(2, 3, spatial, torch.float32, 17, scale=3.0).requires_grad_()
    ri, rd = image.detach().double().requires_grad_(), ddf.detach().double().requires_grad_()
    out = gemini_ops.warp(image, ddf, "bilinear", padding)
    ref = reference.warp(ri, rd, "bilinear", padding)
    assert_fwd_bwd_close(out, ref, (image, ddf), (ri, rd), torch.float32, factor=4.0, what=path)


@pytest.mark.parametrize("which", ["image", "ddf"])
def test_warp_one_gradient(path, threads, which):
    spatial = SHAPES[3]
    image = randn((1, 2, *spatial), torch.float32, 3).requires_grad_(which == "image")
    ddf = random_ddf(1, 3, spatial, torch.float32, 4).requires_grad_(which == "ddf")
    leaf = image if which == "image" else ddf
    out = gemini_ops.warp(image, ddf)
    ref_leaf = leaf.double().detach().requires_grad_()
    ref = reference.warp(ref_leaf, ddf.double()) if which == "image" else reference.warp(image.double(), ref_leaf)
    assert_fwd_bwd_close(out, ref, (leaf,), (ref_leaf,), torch.float32, factor=4.0, what=path)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_integrate_paths(path, threads, ndim, padding):
    spatial = (24, 14, 21) if ndim == 3 else (40, 37)
    v = smooth_field(1, ndim, spatial, 5, max_abs=4.0, dtype=torch.float32).requires_grad_()
    rv = v.detach().double().requires_grad_()
    out = gemini_ops.integrate_velocity(v, 5, padding)
    ref = reference.integrate_velocity(rv, 5, padding)
    assert_fwd_bwd_close(out, ref, (v,), (rv,), torch.float32, factor=20.0, what=path)


@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_square_step_interleaved(path, threads, padding):
    """One squaring step of a float32 3D field, on interleaved levels
    (csrc/cpu/square.h): lanes with every corner inside (x pairs loaded as
    one, consecutive lanes' shared corners added once) and lanes at the
    border; rows of 37 end in tails. The displacements avoid cell boundaries
    (avoid_ties), where float32 and float64 may pick different cells."""
    spatial = (13, 11, 37)
    u = avoid_ties(smooth_field(2, 3, spatial, 21, max_abs=2.5) + randn((2, 3, *spatial), torch.float64, 22, 0.3))
    v = (2 * u).float().requires_grad_()  # one step squares v / 2 = u, exactly
    rv = v.detach().double().requires_grad_()
    out = gemini_ops.integrate_velocity(v, 1, padding)
    ref = reference.integrate_velocity(rv, 1, padding)
    assert_fwd_bwd_close(out, ref, (v,), (rv,), torch.float32, factor=4.0, what=path)


def test_integrate_many_steps_checkpointed(path):
    """Above 8 steps the backward keeps ~2 sqrt(steps) fields and recomputes."""
    v = smooth_field(1, 3, (10, 9, 18), 12, max_abs=3.0).requires_grad_()
    out = gemini_ops.integrate_velocity(v, 11)
    ref = reference.integrate_velocity(v, 11)
    assert_fwd_bwd_close(out, ref, (v,), (v,), torch.float64, what=path)


@pytest.mark.parametrize("channels", [3, 5, 8, 16, 37])
@pytest.mark.parametrize("ndim", [2, 3])
def test_gss_float_lanes(path, threads, channels, ndim):
    """float32 GSS on full lanes and tails. From half a vector of channels
    (AVX2: 4, AVX-512: 8) the moving features go channel-innermost
    (csrc/cpu/gss.h), padded to whole vectors (5, 37); 37 channels: more
    than the backward keeps between its passes (it samples those again).
    Half the voxels carry no gradient, a whole row of lanes included."""
    spatial = (11, 6, 21) if ndim == 3 else (9, 37)
    fm = randn((2, channels, *spatial), torch.float32, 13).requires_grad_()
    ff = randn((2, channels, *spatial), torch.float32, 14).requires_grad_()
    ddf = random_ddf(2, ndim, spatial, torch.float32, 15).requires_grad_()
    leaves = [t.detach().double().requires_grad_() for t in (fm, ff, ddf)]
    keep = (torch.rand(2, 1, *spatial, generator=torch.Generator().manual_seed(16)) < 0.5).double()
    keep[:, :, 1] = 0
    out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
    ref = reference.gss_map(*leaves) * reference.sample_mask(leaves[2])
    assert_fwd_bwd_close(out * keep.float(), ref * keep, (fm, ff, ddf), leaves, torch.float32, factor=10.0, what=path)


@pytest.mark.parametrize(("batch", "max_abs"), [(2, 1.5), (1, 9.0)], ids=["slabs", "buffers"])
def test_gss_scatter_slabs_and_buffers(path, batch, max_abs):
    """The channel-innermost GSS backward on two threads: its moving-feature
    gradient is scattered in slabs or into per-thread buffers, as warp's."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spatial = (40, 9, 18)
        fm = randn((batch, 16, *spatial), torch.float32, 17).requires_grad_()
        ff = randn((batch, 16, *spatial), torch.float32, 18).requires_grad_()
        ddf = smooth_field(batch, 3, spatial, 19, max_abs=max_abs, dtype=torch.float32).requires_grad_()
        leaves = [t.detach().double().requires_grad_() for t in (fm, ff, ddf)]
        out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
        ref = reference.gss_map(*leaves) * reference.sample_mask(leaves[2])
        assert_fwd_bwd_close(out, ref, (fm, ff, ddf), leaves, torch.float32, factor=10.0, what=path)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("batch", "max_abs", "far"), [(2, 1.5, 0.0), (1, 9.0, 0.0), (2, 1.5, 2e6)], ids=["slabs", "buffers", "far"]
)
def test_scatter_slabs_and_buffers(path, batch, max_abs, far):
    """Two threads, 40 planes: small displacements colour slabs of
    2 ceil(m) + 2 planes (m = 1.5: 7 slabs, 3 even ones per item); large
    ones leave one slab per colour, too few for two threads, and fall back
    to per-thread buffers, as does one displacement of 2e6 voxels (beyond
    what the slab width is computed for)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        spatial = (40, 9, 18)
        image = randn((batch, 2, *spatial), torch.float64, 6).requires_grad_()
        ddf = smooth_field(batch, 3, spatial, 7, max_abs=max_abs)
        if far:
            ddf[0, 0, 20, 4, 9] = far
        ddf.requires_grad_()
        out = gemini_ops.warp(image, ddf)
        ref = reference.warp(image, ddf)
        assert_fwd_bwd_close(out, ref, (image, ddf), (image, ddf), torch.float64, what=path)
    finally:
        torch.set_num_threads(before)


def test_gss_and_ncc_paths(path, threads):
    spatial = (9, 10, 19)
    fm = randn((1, 4, *spatial), torch.float64, 8).requires_grad_()
    ff = randn((1, 4, *spatial), torch.float64, 9).requires_grad_()
    ddf = smooth_field(1, 3, spatial, 10, max_abs=3.0).requires_grad_()
    out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
    ref = reference.gss_map(fm, ff, ddf) * reference.sample_mask(ddf)
    assert_fwd_bwd_close(out, ref, (fm, ff, ddf), (fm, ff, ddf), torch.float64, what=path + " gss")
    a, b = fm[:, :2], ff[:, :2]
    out = gemini_ops.local_ncc(a, b, 5, reduction="none")
    ref = reference.local_ncc_map(a, b, 5)
    assert_fwd_bwd_close(out, ref, (fm, ff), (fm, ff), torch.float64, what=path + " ncc")


def test_environment_variable_selects_and_caps():
    """GEMINI_CPU_CAPABILITY picks the path at load time; a bad value is a
    clear error naming the variable."""
    code = "import torch, gemini_ops; gemini_ops.backend_info(); print(torch.ops.gemini.cpu_capability())"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for want in ("default", SUPPORTED[-1]):
        env["GEMINI_CPU_CAPABILITY"] = want
        got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert got.stdout.split()[-1] == want
    env["GEMINI_CPU_CAPABILITY"] = "sse9"
    code = "import torch, gemini_ops; gemini_ops.backend_info(); torch.ops.gemini.cpu_capability()"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.returncode != 0 and "GEMINI_CPU_CAPABILITY" in got.stderr and "sse9" in got.stderr
    with pytest.raises(ValueError, match="capability"):
        torch.ops.gemini.set_cpu_capability("sse9")


def test_benchmark_runs_every_path(tmp_path):
    """The benchmark command of benchmarks/RESULTS.md, tiny: our rows on each
    forced path next to MONAI's, with the busy-core column and the finite
    checks users get by default."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_ops.py")
    out = tmp_path / "rows.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [
        sys.executable,
        script,
        "--sizes",
        "10x12x14",
        "--repeats",
        "1",
        "--min-time",
        "0",
        "--cases",
        "warp",
        "step",
    ]
    cmd += ["--paths", *SUPPORTED, "--busy-core", "--finite-checks", "--json", str(out)]
    got = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    all_rows = json.loads(out.read_text())["rows"]
    steps = [r for r in all_rows if r["case"] == "step"]
    assert {r["impl"] for r in steps} == set(SUPPORTED) and all(r["floor_ms"] > 0 for r in steps)
    rows = [r for r in all_rows if r["case"] != "step"]
    labels = {r["impl"] for r in rows}
    assert labels == {"MONAI", *(f"ours ({p})" for p in SUPPORTED)}
    assert all(r["busy_over_idle"] > 0 for r in rows if r["impl"] != "MONAI")
    assert "OMP_WAIT_POLICY=PASSIVE" in got.stdout and "finite checks=True" in got.stdout


@pytest.mark.skipif("avx2" not in SUPPORTED, reason="the bound kernels need AVX2 + FMA")
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="needs a C++ compiler")
def test_step_bounds_runs():
    """The lower-bound command of benchmarks/RESULTS.md, tiny: it builds the
    bound kernels, prints our step on each path and every bound, and exits
    non-zero if its trilinear kernel's step is off the reference."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "step_bounds.py")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, script, "--size", "20", "22", "21", "--rounds", "1", "--repeats", "1"]
    got = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert got.returncode == 0, got.stderr
    kernels = [line.split("|")[2].strip() for line in got.stdout.splitlines() if line.startswith("| 1 |")]
    paths = [p for p in ("avx2", "avx512") if p in SUPPORTED]
    assert kernels == [f"ours ({p})" for p in paths] + ["setup", "half", "loads", "trilinear"]
