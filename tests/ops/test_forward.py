"""Each op of the compiled and emulated backends against the pure-PyTorch
reference on fresh random inputs: float32/float64, 2D/3D, batch 1/2,
contiguous and non-contiguous views."""

from __future__ import annotations

import pytest
import torch
from opsutil import BACKENDS, DTYPES, LAYOUTS, assert_rel_close, layout, ncc_inputs, randn, random_ddf, spatial_shape

import gemini_ops
from gemini_ops import reference

# (ndim, batch, layout, seed): each geometry once per dtype and backend
CASES = [
    (2, 1, "contiguous", 1),
    (2, 2, "sliced", 2),
    (2, 2, "transposed", 3),
    (3, 1, "channels_last", 4),
    (3, 2, "contiguous", 5),
    (3, 1, "sliced", 6),
    (3, 2, "transposed", 7),
]
assert {c[2] for c in CASES} == set(LAYOUTS)
# a subset (every layout, both ndims and batch sizes) for the many-parameter tests
SOME_CASES = [CASES[0], CASES[1], CASES[3], CASES[6]]
assert {c[2] for c in SOME_CASES} == set(LAYOUTS)


def case_id(c):
    return f"{c[0]}d-b{c[1]}-{c[2]}"


def _layout(t, kind):
    return layout(t, kind)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_matches_reference(backend, dtype, mode, padding_mode, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    image = randn((batch, 3, *spatial), dtype, seed)
    ddf = random_ddf(batch, ndim, spatial, dtype, seed + 100, scale=3.0)
    # many sample points fall outside the volume: the padding matters
    pts = ddf + torch.stack(torch.meshgrid(*[torch.arange(n, dtype=dtype) for n in spatial], indexing="ij"))
    outside = torch.zeros_like(pts[:, 0], dtype=torch.bool)
    for i, n in enumerate(spatial):
        outside |= (pts[:, i] < 0) | (pts[:, i] > n - 1)
    assert outside.float().mean() > 0.2
    out = gemini_ops.warp(_layout(image, kind), _layout(ddf, kind), mode, padding_mode, backend=backend)
    ref = reference.warp(image, ddf, mode, padding_mode)
    assert out.dtype == dtype and out.shape == image.shape
    assert_rel_close(out, ref, dtype, what=f"warp {mode}/{padding_mode}")


@pytest.mark.parametrize("case", SOME_CASES, ids=case_id)
@pytest.mark.parametrize("steps", [0, 1, 3, 7])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_integrate_velocity_matches_reference(backend, dtype, steps, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    velocity = randn((batch, ndim, *spatial), dtype, seed + 7 * steps, scale=2.0)
    for padding_mode in ("zeros", "border"):
        out = gemini_ops.integrate_velocity(_layout(velocity, kind), steps, padding_mode, backend=backend)
        ref = reference.integrate_velocity(velocity, steps, padding_mode)
        assert out.dtype == dtype and out.shape == velocity.shape
        assert_rel_close(out, ref, dtype, what=f"integrate steps={steps} {padding_mode}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gss_matches_reference(backend, dtype, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    fm = randn((batch, 4, *spatial), dtype, seed)
    ff = randn((batch, 4, *spatial), dtype, seed + 1)
    ddf = random_ddf(batch, ndim, spatial, dtype, seed + 2, scale=2.0)
    mask = (torch.rand((batch, 1, *spatial), generator=torch.Generator().manual_seed(seed)) > 0.4).to(dtype)

    cos = reference.gss_map(fm, ff, ddf)
    valid = reference.sample_mask(ddf)
    assert 0 < valid.mean() < 1  # the default mask excludes some voxels, keeps others
    expected = {
        ("none", False): cos * valid,
        ("mean", False): (cos * valid).sum() / valid.sum(),
        ("none", True): cos * mask,
        ("mean", True): (cos * mask).sum() / mask.sum(),
    }
    # a mean of cosines of both signs cancels: its rounding error scales with
    # the mean of the magnitudes summed, not with the (small) result
    floors = {
        ("none", False): 0.0,
        ("mean", False): ((cos * valid).abs().sum() / valid.sum()).item(),
        ("none", True): 0.0,
        ("mean", True): ((cos * mask).abs().sum() / mask.sum()).item(),
    }
    args = (_layout(fm, kind), _layout(ff, kind), _layout(ddf, kind))
    for (reduction, with_mask), ref in expected.items():
        m = _layout(mask, kind) if with_mask else None
        out = gemini_ops.gss_similarity(*args, mask=m, reduction=reduction, backend=backend)
        assert out.dtype == dtype and out.shape == ref.shape
        floor = floors[(reduction, with_mask)]
        assert_rel_close(out, ref, dtype, floor=floor, what=f"gss {reduction} mask={with_mask}")
        # the functional's reference path agrees with the hand-written expectation
        out_ref = gemini_ops.gss_similarity(
            fm, ff, ddf, mask=mask if with_mask else None, reduction=reduction, backend="reference"
        )
        assert_rel_close(out_ref, ref, dtype, what="gss reference path")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gss_grad_scales_leave_value(backend, dtype, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    fm, ff = randn((batch, 2, *spatial), dtype, seed), randn((batch, 2, *spatial), dtype, seed + 1)
    ddf = random_ddf(batch, ndim, spatial, dtype, seed + 2, scale=1.5)
    plain = gemini_ops.gss_similarity(fm, ff, ddf, backend=backend)
    scaled = gemini_ops.gss_similarity(fm, ff, ddf, grad_scales=(0.1, 3.0, 0.5), backend=backend)
    assert_rel_close(scaled, plain, dtype, floor=1.0, what="value with grad_scales")
    ref = gemini_ops.gss_similarity(fm, ff, ddf, backend="reference")
    assert_rel_close(plain, ref, dtype, floor=1.0, what="gss (a mean of cosines: scale 1)")


@pytest.mark.parametrize("case", SOME_CASES, ids=case_id)
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("window", [1, 3, 5, 9])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_local_ncc_matches_reference(backend, dtype, window, squared, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    a, b, mask = ncc_inputs(batch, spatial, dtype, seed)
    ref = reference.local_ncc_map(a, b, window, squared, 1e-5)
    # a correlation is O(1): floor 1 (a 1-voxel window gives 0 up to rounding)
    out = gemini_ops.local_ncc(
        _layout(a, kind), _layout(b, kind), window, None, squared, reduction="none", backend=backend
    )
    assert out.dtype == dtype and out.shape == a.shape
    assert_rel_close(out, ref, dtype, floor=1.0, what=f"ncc map w={window}")
    mean = gemini_ops.local_ncc(_layout(a, kind), _layout(b, kind), window, None, squared, backend=backend)
    assert_rel_close(mean, ref.mean(), dtype, floor=1.0, what="ncc mean")
    masked = gemini_ops.local_ncc(a, b, window, _layout(mask, kind), squared, backend=backend)
    expected = (ref * mask).sum() / mask.expand_as(ref).sum()
    assert_rel_close(masked, expected, dtype, floor=1.0, what="ncc masked mean")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_local_ncc_eps(dtype, case):
    """eps enters the denominator as documented (compiled vs reference)."""
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    a, b = randn((batch, 1, *spatial), dtype, seed), randn((batch, 1, *spatial), dtype, seed + 1)
    for eps in (0.0, 1e-5, 0.3, 10.0):
        for squared in (True, False):
            out = gemini_ops.local_ncc(a, b, 3, None, squared, eps, "none", backend="compiled")
            assert_rel_close(out, reference.local_ncc_map(a, b, 3, squared, eps), dtype, floor=1.0, what=f"eps={eps}")


def _independent_jacobian(ddf: torch.Tensor) -> torch.Tensor:
    """det(I + du/dx) with hand-written differences: central inside, one-sided
    on the border (numpy's ``gradient`` convention), via torch.linalg.det."""
    ddf = ddf.double()
    ndim = ddf.shape[1]
    jac = torch.zeros((ddf.shape[0], *ddf.shape[2:], ndim, ndim), dtype=torch.float64)
    for j in range(ndim):
        axis = 2 + j
        n = ddf.shape[axis]
        d = torch.empty_like(ddf)
        idx = torch.arange(n)
        lo, hi = (idx - 1).clamp(min=0), (idx + 1).clamp(max=n - 1)
        d = (ddf.index_select(axis, hi) - ddf.index_select(axis, lo)) / (hi - lo).to(torch.float64).reshape(
            [-1 if k == axis else 1 for k in range(ddf.dim())]
        )
        for i in range(ndim):
            jac[..., i, j] = d[:, i]
    jac = jac + torch.eye(ndim, dtype=torch.float64)
    return torch.linalg.det(jac).unsqueeze(1)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_jacobian_determinant_and_folding(dtype, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    ddf = randn((batch, ndim, *spatial), dtype, seed, scale=0.6)
    det = gemini_ops.jacobian_determinant(_layout(ddf, kind))
    expected = _independent_jacobian(ddf)
    assert det.shape == (batch, 1, *spatial) and det.dtype == dtype
    assert_rel_close(det, expected, dtype, what="jacobian determinant")
    folds = expected <= 0
    assert 0 < folds.double().mean() < 1  # the field folds somewhere, not everywhere
    ff = gemini_ops.folding_fraction(_layout(ddf, kind))
    assert ff.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-12  # a share, stored in dtype
    assert ff.item() == pytest.approx(folds.double().mean().item(), abs=tol)
    mask = (torch.rand((batch, 1, *spatial), generator=torch.Generator().manual_seed(seed)) > 0.5).to(dtype)
    ffm = gemini_ops.folding_fraction(ddf, mask)
    assert ffm.item() == pytest.approx(((folds & mask.bool()).sum() / mask.sum()).item(), abs=tol)
    # identity: determinant 1 everywhere, no folds
    zero = torch.zeros_like(ddf)
    assert torch.equal(gemini_ops.jacobian_determinant(zero), torch.ones_like(det))
    assert gemini_ops.folding_fraction(zero).item() == 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ndim", [2, 3])
def test_jacobian_affine_field(dtype, ndim):
    """A linear displacement u(x) = (A - I) x has determinant det(A) everywhere."""
    spatial = (6, 5, 7)[:ndim]
    g = torch.Generator().manual_seed(ndim)
    A = torch.eye(ndim, dtype=torch.float64) + 0.4 * torch.randn(ndim, ndim, generator=g, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in spatial], indexing="ij"))
    u = torch.einsum("ij,j...->i...", A - torch.eye(ndim, dtype=torch.float64), grid).unsqueeze(0).to(dtype)
    det = gemini_ops.jacobian_determinant(u)
    assert_rel_close(det, torch.full_like(det, torch.linalg.det(A).item()), dtype, what="affine determinant")


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_reference_warp_size1_axis(mode):
    """A (1, 1, 1, 4) image displaced by 5 voxels along its size-1 axis: every
    sample point is outside, so zero padding gives 0 (the kernels do)."""
    image = torch.arange(1.0, 5.0, dtype=torch.float64).reshape(1, 1, 1, 4)
    ddf = torch.zeros((1, 2, 1, 4), dtype=torch.float64)
    ddf[:, 0] = 5.0
    for backend in ("compiled", "emulated"):
        assert torch.count_nonzero(gemini_ops.warp(image, ddf, mode, backend=backend)) == 0
    assert torch.count_nonzero(reference.warp(image, ddf, mode, "zeros")) == 0


def test_emulated_module_is_the_emulated_backend():
    """gemini_ops.emulated's functions are functional's on backend="emulated"."""
    if not gemini_ops.backend_info()["emulated"]:
        pytest.skip("needs the compiled library")
    image, ddf = randn((1, 2, 5, 6, 7), torch.float64, 60), random_ddf(1, 3, (5, 6, 7), torch.float64, 61, 1.5)
    calls = {
        "warp": (image, ddf),
        "integrate_velocity": (ddf, 3),
        "gss_similarity": (image, image.flip(2), ddf),
        "local_ncc": (image, image.flip(2), 3),
    }
    assert set(calls) == set(gemini_ops.emulated.__all__)
    for name, args in calls.items():
        got = getattr(gemini_ops.emulated, name)(*args)
        want = getattr(gemini_ops.functional, name)(*args, backend="emulated")
        assert torch.equal(got, want), name
