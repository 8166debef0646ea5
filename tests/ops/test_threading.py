"""The CPU kernels' parallel paths: volumes above the serial threshold, with
channel counts that make the scatter partition channels (C % threads == 0)
or give each thread its own buffer (C < threads or uneven), vs the reference."""

import os
import subprocess
import sys

import pytest
import torch
from opsutil import assert_rel_close, avoid_ties, randn, smooth_field, weighted_grads

import gemini_ops
from gemini_ops import reference

SPATIAL = (18, 20, 24)  # 8640 voxels: above the CPU kernels' serial threshold


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * max(1.0, b.abs().max().item()))


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("channels", [1, 3, 4, 16])
def test_warp_parallel_paths(channels, threads, four_threads):
    torch.set_num_threads(threads)
    image = randn((2, channels, *SPATIAL), torch.float64, channels).requires_grad_()
    ddf = (
        smooth_field(2, 3, SPATIAL, channels + 1, max_abs=5.0) + 0.3 * randn((2, 3, *SPATIAL), torch.float64, 7)
    ).requires_grad_()
    for mode in ("bilinear", "nearest"):
        out = gemini_ops.warp(image, ddf, mode)
        ref = reference.warp(image, ddf, mode)
        _close(out, ref)
        for g, r in zip(weighted_grads(out, (image, ddf), 3), weighted_grads(ref, (image, ddf), 3)):
            _close(g, r)


@pytest.mark.parametrize("threads", [2, 3])
def test_integrate_parallel_paths(threads, four_threads):
    torch.set_num_threads(threads)
    v = smooth_field(2, 3, SPATIAL, 5, max_abs=6.0).requires_grad_()
    out = gemini_ops.integrate_velocity(v, 7)
    ref = reference.integrate_velocity(v, 7)
    _close(out, ref)
    _close(weighted_grads(out, (v,), 4)[0], weighted_grads(ref, (v,), 4)[0])


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("max_abs", [0.8, 6.0])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_integrate_interleaved_parallel_paths(threads, max_abs, padding, four_threads):
    """float32 3D fields square on interleaved levels (csrc/cpu/square.h).
    Small displacements keep the threads' scatters apart by slabs, large ones
    (the last steps at max |v| = 6) give each thread a buffer; rows of 23
    voxels end in tails taken one voxel at a time. Against one thread: the
    levels are the same, so only the order of the scatter's adds differs
    (float64 references differ more, where float32 rounding moves a sample
    point across a cell boundary)."""
    v = smooth_field(2, 3, (40, 17, 23), 11, max_abs=max_abs, dtype=torch.float32)
    w = randn(v.shape, torch.float32, 12)

    def run(n):
        torch.set_num_threads(n)
        x = v.clone().requires_grad_()
        out = gemini_ops.integrate_velocity(x, 7, padding)
        return out, torch.autograd.grad((out * w).sum(), x)[0]

    out1, g1 = run(1)
    out, g = run(threads)
    torch.testing.assert_close(out, out1, rtol=0, atol=0)
    assert_rel_close(g, g1, torch.float32, what="gradient")


@pytest.mark.parametrize("channels", [1, 3, 16])
def test_gss_parallel_paths(channels, four_threads):
    torch.set_num_threads(2)
    fm = randn((1, channels, *SPATIAL), torch.float64, 1).requires_grad_()
    ff = randn((1, channels, *SPATIAL), torch.float64, 2).requires_grad_()
    ddf = smooth_field(1, 3, SPATIAL, 3, max_abs=5.0).requires_grad_()
    out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
    ref = reference.gss_map(fm, ff, ddf) * reference.sample_mask(ddf)
    _close(out, ref)
    for g, r in zip(weighted_grads(out, (fm, ff, ddf), 5), weighted_grads(ref, (fm, ff, ddf), 5)):
        _close(g, r)
    # the masked mean, summed by the op row by row: the reference's, and the
    # same bits on 1 and 3 threads (the rows' sums are added in row order)
    means = []
    for threads in (1, 3):
        torch.set_num_threads(threads)
        ref_mean = (reference.gss_map(fm, ff, ddf) * reference.sample_mask(ddf)).sum() / reference.sample_mask(
            ddf
        ).sum()
        mean = gemini_ops.gss_similarity(fm, ff, ddf)
        assert mean.dim() == 0
        _close(mean, ref_mean)
        for g, r in zip(weighted_grads(mean, (fm, ff, ddf), 7), weighted_grads(ref_mean, (fm, ff, ddf), 7)):
            _close(g, r)
        means.append(mean.detach())
    assert means[0].item() == means[1].item()


def test_local_ncc_parallel_paths(four_threads):
    torch.set_num_threads(2)
    a = randn((2, 2, *SPATIAL), torch.float64, 8).requires_grad_()
    b = randn((2, 2, *SPATIAL), torch.float64, 9).requires_grad_()
    out = gemini_ops.local_ncc(a, b, 9, reduction="none")
    ref = reference.local_ncc_map(a, b, 9)
    _close(out, ref)
    for g, r in zip(weighted_grads(out, (a, b), 6), weighted_grads(ref, (a, b), 6)):
        _close(g, r)


@pytest.mark.parametrize(("channels", "threads"), [(1, 2), (1, 3), (3, 2)])
def test_local_ncc_column_tiles(channels, threads, four_threads):
    """Rows long enough that the CPU NCC splits volumes into column tiles for
    the threads (two or three per volume: first, middle and last tiles, whose
    backward sums r columns beyond their edges)."""
    torch.set_num_threads(threads)
    spatial = (7, 6, 150)
    a = randn((1, channels, *spatial), torch.float64, 10).requires_grad_()
    b = randn((1, channels, *spatial), torch.float64, 11).requires_grad_()
    for window in (5, 9):
        out = gemini_ops.local_ncc(a, b, window, reduction="none")
        ref = reference.local_ncc_map(a, b, window)
        _close(out, ref)
        for g, r in zip(weighted_grads(out, (a, b), 7), weighted_grads(ref, (a, b), 7)):
            _close(g, r)
        _check_mean(a, b, window)


def _check_mean(a, b, window):
    """The mean summed by the op over its work items, and its gradient."""
    mean, ref = gemini_ops.local_ncc(a, b, window), reference.local_ncc_map(a, b, window).mean()
    assert mean.dim() == 0
    _close(mean, ref)
    for g, r in zip(weighted_grads(mean, (a, b), 9), weighted_grads(ref, (a, b), 9)):
        _close(g, r)


@pytest.mark.parametrize(
    ("spatial", "threads"), [((100, 5, 9), 2), ((61, 8, 9), 3), ((45, 4, 150), 3), ((111, 8, 8), 11), ((111, 8, 8), 12)]
)
def test_local_ncc_plane_slabs(spatial, threads, four_threads):
    """Volumes with many planes, which the CPU NCC splits into slabs of planes
    (and, with long rows, column tiles too) for the threads: first, middle and
    last slabs, whose items push r planes beyond their edges (2r in the
    backward's first stage); with 11 or 12 threads on 111 planes the last
    slab is thinner than the window's radius. Both 1 and `threads` threads
    match the reference."""
    a = randn((1, 1, *spatial), torch.float64, 12).requires_grad_()
    b = randn((1, 1, *spatial), torch.float64, 13).requires_grad_()
    for window in (5, 9):
        ref = reference.local_ncc_map(a, b, window)
        ref_grads = weighted_grads(ref, (a, b), 8)
        for t in (1, threads):
            torch.set_num_threads(t)
            out = gemini_ops.local_ncc(a, b, window, reduction="none")
            _close(out, ref)
            for g, r in zip(weighted_grads(out, (a, b), 8), ref_grads):
                _close(g, r)
            _check_mean(a, b, window)


def test_large_outputs_on_host_pages(tmp_path):
    """From 4 MiB on the CPU ops' outputs are mapped host pages
    (csrc/include/gemini/host_pages.h): GSS with 16 channels at 64^3 (16 MiB
    per feature gradient, the moving one scattered into zeros) matches the
    reference, its gradients accumulate in place, and they survive
    torch.save / torch.load."""
    torch.set_num_threads(2)
    gemini_ops.empty_cache()
    spatial = (64, 64, 64)
    fm = randn((1, 16, *spatial), torch.float32, 21).requires_grad_()
    ff = randn((1, 16, *spatial), torch.float32, 22).requires_grad_()
    ddf = avoid_ties(smooth_field(1, 3, spatial, 23, max_abs=4.0)).float().requires_grad_()
    leaves = [t.detach().double().requires_grad_() for t in (fm, ff, ddf)]
    out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
    ref = reference.gss_map(*leaves) * reference.sample_mask(leaves[2])
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    w = randn(out.shape, torch.float64, 24)
    ref_grads = torch.autograd.grad((ref * w).sum(), leaves)
    for _ in range(2):
        (out * w.float()).sum().backward(retain_graph=True)
    assert not fm.grad.untyped_storage().resizable(), "the gradient should come from mapped host pages"
    for got, want in zip((fm.grad, ff.grad, ddf.grad), ref_grads):
        scale = want.abs().max().item()
        torch.testing.assert_close(got.double(), 2 * want, rtol=1e-3, atol=1e-4 * scale)
    torch.save(fm.grad, tmp_path / "g.pt")
    torch.testing.assert_close(torch.load(tmp_path / "g.pt"), fm.grad, rtol=0, atol=0)


def _dirty_host_pages():
    """Fills the host-page cache with NaN: three freed op outputs of each even
    size from 4 to 24 MiB, so that every large buffer of the next call (4 to
    16 MiB, a call asking for up to 4 of a size) comes from a used mapping."""
    gemini_ops.empty_cache()
    ddf = torch.zeros(1, 3, 64, 64, 64)
    outs = [gemini_ops.warp(torch.ones(1, c, 64, 64, 64), ddf) for c in range(4, 26, 2) for _ in range(3)]
    for o in outs:
        assert not o.untyped_storage().resizable(), "op outputs of 4 MiB and more should be on host pages"
        o.fill_(float("nan"))
    del outs, o
    assert gemini_ops.cached_bytes() >= 3 * sum(range(4, 26, 2)) * 2**20


def _fwd_bwd(case):
    """(outputs, gradients) of one forward+backward at sizes whose buffers
    reach the host pages (>= 4 MiB)."""
    if case == "integrate":
        v = smooth_field(1, 3, (80, 80, 80), 31, max_abs=4.0).float().requires_grad_()
        image = randn((1, 1, 80, 80, 80), torch.float32, 32).requires_grad_()
        out = gemini_ops.warp(image, gemini_ops.integrate_velocity(v, 7))
        leaves = [v, image]
    elif case.startswith("gss"):
        # "gss-padded": channels padded to whole vectors in the channel-innermost
        # copies, and a last row of voxels shorter than a vector
        c, size = (12, (41, 41, 41)) if case == "gss-padded" else (16, (48, 48, 48))
        fm = randn((1, c, *size), torch.float32, 33).requires_grad_()
        ff = randn((1, c, *size), torch.float32, 34).requires_grad_()
        ddf = smooth_field(1, 3, size, 35, max_abs=4.0).float().requires_grad_()
        out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
        leaves = [fm, ff, ddf]
    else:
        a = randn((2, 1, 84, 84, 84), torch.float32, 36).requires_grad_()
        b = randn((2, 1, 84, 84, 84), torch.float32, 37).requires_grad_()
        out = gemini_ops.local_ncc(a, b, 9, reduction="none")
        leaves = [a, b]
    grads = torch.autograd.grad((out * randn(out.shape, torch.float32, 38)).sum(), leaves)
    return [out.detach().clone(), *[g.clone() for g in grads]]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("case", ["integrate", "gss", "gss-padded", "ncc"])
def test_reused_host_pages(case, threads):
    """A call whose buffers come from used (NaN-filled) cached mappings gives
    the same bits as one on fresh zero pages: every buffer read before it is
    written is cleared, whichever mapping it gets."""
    torch.set_num_threads(threads)
    gemini_ops.empty_cache()
    fresh = _fwd_bwd(case)
    _dirty_host_pages()
    reused = _fwd_bwd(case)
    for got, want in zip(reused, fresh):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert gemini_ops.cached_bytes() > 0
    assert gemini_ops.empty_cache() > 0 and gemini_ops.cached_bytes() == 0


def test_host_page_cache_limit():
    """GEMINI_CPU_CACHE_MB=0 keeps nothing; a bad value is named."""
    code = (
        "import torch, gemini_ops; d = gemini_ops.integrate_velocity(torch.ones(1, 3, 80, 80, 80), 2); "
        "del d; print(gemini_ops.cached_bytes())"
    )
    env = dict(os.environ, GEMINI_CPU_CACHE_MB="0")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert got.stdout.split()[-1] == "0"
    env["GEMINI_CPU_CACHE_MB"] = "lots"
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.returncode != 0 and "GEMINI_CPU_CACHE_MB" in got.stderr and "'lots'" in got.stderr


def test_host_page_cache_drops_the_oldest():
    """Beyond GEMINI_CPU_CACHE_MB the cache unmaps its oldest mappings: after
    freed outputs of 4, 5.7 and 8.1 MiB (warps of 4 channels at 64^3, 72^3
    and 81^3; 17.8 MiB in all) it keeps at most 12 MiB, the newest output's
    mapping among them."""
    code = (
        "import torch, gemini_ops\n"
        "for n in (64, 72, 81):\n"
        "    out = gemini_ops.warp(torch.ones(1, 4, n, n, n), torch.zeros(1, 3, n, n, n))\n"
        "    assert torch.equal(out, torch.ones_like(out))\n"
        "    del out\n"
        "print(gemini_ops.cached_bytes())"
    )
    env = dict(os.environ, GEMINI_CPU_CACHE_MB="12")
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    kept = int(got.stdout.split()[-1])
    assert 4 * 81**3 * 4 <= kept <= 12 * 2**20, kept


def _child_fwd_bwd(path):
    torch.set_num_threads(1)  # as DataLoader workers do
    torch.save([_fwd_bwd("integrate"), gemini_ops.cached_bytes()], path)


def test_host_pages_in_a_forked_child(tmp_path):
    """A child forked after the parent filled its host-page cache (as
    DataLoader workers are) computes on its copy of the used mappings and
    gives the bits of a call on fresh pages; the parent's cache is its own."""
    import multiprocessing

    torch.set_num_threads(1)
    gemini_ops.empty_cache()
    want = _fwd_bwd("integrate")
    _dirty_host_pages()
    kept = gemini_ops.cached_bytes()
    child = multiprocessing.get_context("fork").Process(target=_child_fwd_bwd, args=(tmp_path / "out.pt",))
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 0
    got, child_kept = torch.load(tmp_path / "out.pt")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert child_kept > 0 and gemini_ops.cached_bytes() == kept
    gemini_ops.empty_cache()
