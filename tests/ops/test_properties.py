"""Properties: inverse consistency and fold-freeness of integrated velocities,
the GSS edge cases (empty mask, everything outside), the losses' gradients."""

from __future__ import annotations

import pytest
import torch
from opsutil import BACKENDS, DTYPES, assert_rel_close, randn, random_ddf, smooth_field

import gemini_ops

ALL = [*BACKENDS, "reference"]
SMOOTH = {2: (16, 16), 3: (12, 12, 12)}


def _inner(t: torch.Tensor, margin: int = 3) -> torch.Tensor:
    return t[(..., *[slice(margin, n - margin) for n in t.shape[2:]])]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", ALL)
def test_integrate_inverse_consistency(backend, ndim, seed):
    """u_ab = exp(v), u_ba = exp(-v): u_ab(x) + u_ba(x + u_ab(x)) ~ 0 away from the border."""
    v = smooth_field(1, ndim, SMOOTH[ndim], seed, max_abs=2.0, sigma=3.0)
    u_ab = gemini_ops.integrate_velocity(v, 7, backend=backend)
    u_ba = gemini_ops.integrate_velocity(-v, 7, backend=backend)
    assert u_ab.abs().max() > 1.5  # a real deformation
    residual = _inner(u_ab + gemini_ops.warp(u_ba, u_ab, backend=backend))
    assert residual.abs().max() < 0.15  # voxels; discretisation of the 7 squarings
    assert residual.abs().mean() < 0.03
    # control: composing with the forward map itself is far from the identity
    assert _inner(u_ab + gemini_ops.warp(u_ab, u_ab, backend=backend)).abs().max() > 1.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", ALL)
def test_smooth_velocity_gives_no_folds(backend, ndim, seed):
    v = smooth_field(2, ndim, SMOOTH[ndim], seed, max_abs=3.0, sigma=3.0)
    ddf = gemini_ops.integrate_velocity(v, 7, backend=backend)
    assert ddf.abs().max() > 2.0
    assert gemini_ops.folding_fraction(ddf).item() == 0.0
    assert (gemini_ops.jacobian_determinant(ddf) > 0).all()
    # the same field, larger, used as a plain displacement (steps=0) folds: the check can fail
    plain = gemini_ops.integrate_velocity(2 * v, 0, backend=backend)
    assert torch.equal(plain, 2 * v)
    assert gemini_ops.folding_fraction(plain).item() > 0.0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_identity_and_zero_fields(backend, dtype):
    image = randn((2, 3, 5, 6, 7), dtype, 1)
    zero = torch.zeros((2, 3, 5, 6, 7), dtype=dtype)
    for mode in ("bilinear", "nearest"):
        for padding_mode in ("zeros", "border"):
            out = gemini_ops.warp(image, zero, mode, padding_mode, backend=backend)
            if backend == "reference":  # grid_sample's normalised grid rounds
                assert_rel_close(out, image, dtype, what="identity warp")
            else:  # the kernels sample voxel centres exactly
                assert torch.equal(out, image)
    assert torch.equal(gemini_ops.integrate_velocity(zero, 7, backend=backend), zero)
    # GSS of a feature map with itself under the identity is 1
    sim = gemini_ops.gss_similarity(image, image, zero, backend=backend)
    assert sim.item() == pytest.approx(1.0, abs=10 * torch.finfo(dtype).eps)


@pytest.mark.parametrize("backend", ALL)
def test_nan_in_image_propagates(backend):
    """Documented: NaN in images or features propagates like arithmetic (no error)."""
    image = randn((1, 1, 5, 6), torch.float64, 2)
    image[0, 0, 2, 3] = float("nan")
    zero = torch.zeros((1, 2, 5, 6), dtype=torch.float64)
    out = gemini_ops.warp(image, zero, "nearest", backend=backend)
    assert torch.isnan(out[0, 0, 2, 3]) and torch.isnan(out).sum() == 1
    # bilinear: 0 * NaN is NaN, so the voxels whose interpolation corners include it may be NaN too
    out = gemini_ops.warp(image, zero, "bilinear", backend=backend)
    nan = torch.isnan(out[0, 0])
    assert nan[2, 3]
    assert not nan[torch.ones_like(nan).index_fill_(0, torch.tensor([1, 2]), False)].any()
    assert not nan[:, [0, 1, 4, 5]].any()


# ---------------------------------------------------------------- GSS edge cases
def _gss_inputs(dtype, seed, ndim=3, outside=False):
    spatial = (5, 6, 4)[:ndim]
    fm, ff = randn((2, 3, *spatial), dtype, seed), randn((2, 3, *spatial), dtype, seed + 1)
    ddf = random_ddf(2, ndim, spatial, dtype, seed + 2, scale=1.0)
    if outside:  # every sample point far outside the moving volume
        ddf = ddf + 50.0
    return [t.requires_grad_() for t in (fm, ff, ddf)]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_gss_empty_mask_gives_zero_not_nan(backend, dtype, ndim):
    x = _gss_inputs(dtype, 3, ndim)
    empty = torch.zeros((2, 1, *x[0].shape[2:]), dtype=dtype)
    sim = gemini_ops.gss_similarity(*x, mask=empty, backend=backend)
    assert sim.item() == 0.0
    grads = torch.autograd.grad(sim, x)
    for g in grads:
        assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0
    none = gemini_ops.gss_similarity(*x, mask=empty, reduction="none", backend=backend)
    assert torch.count_nonzero(none) == 0 and torch.isfinite(none).all()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", ALL)
def test_gss_all_outside_gives_zero_not_nan(backend, dtype, ndim):
    x = _gss_inputs(dtype, 4, ndim, outside=True)
    sim = gemini_ops.gss_similarity(*x, backend=backend)
    assert sim.item() == 0.0
    for g in torch.autograd.grad(sim, x):
        assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0
    # the samples are zero-padded: even with an explicit full mask the cosine is 0 (|w| = 0 < eps), not NaN
    full = torch.ones((2, 1, *x[0].shape[2:]), dtype=dtype)
    sim_full = gemini_ops.gss_similarity(*x, mask=full, backend=backend)
    assert sim_full.item() == 0.0
    for g in torch.autograd.grad(sim_full, x):
        assert torch.isfinite(g).all()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", ALL)
def test_gss_own_mask_is_the_nearest_warp_of_ones(backend, ndim):
    """Without a mask, GSS counts the voxels whose sample point's nearest voxel
    (ties half to even) is inside: the mask that warping ones with "nearest"
    gives (GEMINI's trainer relies on it). Displacements on half-voxels make
    ties, and some points fall far outside."""
    spatial = (7, 9, 8)[:ndim]
    fm = randn((2, 3, *spatial), torch.float64, 50).requires_grad_()
    ff = randn((2, 3, *spatial), torch.float64, 51)
    ddf = (randn((2, ndim, *spatial), torch.float64, 52) * 8).round() / 2
    warped_ones = gemini_ops.warp(torch.ones((2, 1, *spatial), dtype=torch.float64), ddf, "nearest", backend=backend)
    assert 0 < warped_ones.mean() < 1
    own = gemini_ops.gss_similarity(fm, ff, ddf, backend=backend)
    given = gemini_ops.gss_similarity(fm, ff, ddf, warped_ones, backend=backend)
    torch.testing.assert_close(own, given, rtol=1e-12, atol=0)
    assert_rel_close(torch.autograd.grad(own, fm)[0], torch.autograd.grad(given, fm)[0], torch.float64)


@pytest.mark.parametrize("weights", [(0.1, 1.0), (1.0, 0.0), (0.0, 2.0), (0.3, 0.7), (0.0, 0.0)])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", ALL)
def test_gss_loss_equals_two_term_stop_gradient_reference(backend, ndim, weights):
    fw, dw = weights
    dtype = torch.float64
    x = _gss_inputs(dtype, 5 + ndim, ndim)
    mask = (randn((2, 1, *x[0].shape[2:]), dtype, 9) > -0.3).to(dtype)
    for m in (None, mask):
        loss = gemini_ops.GSSLoss(fw, dw, backend=backend)(*x, m)
        g = torch.autograd.grad(loss, x)
        y = [t.detach().clone().requires_grad_() for t in x]
        fm, ff, u = y

        def gss(a, b, d, m=m):
            return gemini_ops.gss_similarity(a, b, d, m, backend="reference")

        two_term = fw * (1 - gss(fm, ff, u.detach())) + dw * (1 - gss(fm.detach(), ff.detach(), u))
        r = torch.autograd.grad(two_term, y, allow_unused=True)
        assert_rel_close(loss, two_term, dtype, floor=1.0, what="GSSLoss value")
        for name, gi, ri in zip(("feat_moving", "feat_fixed", "ddf"), g, r):
            ri = torch.zeros_like(gi) if ri is None else ri
            assert_rel_close(gi, ri, dtype, what=f"GSSLoss d/d {name} weights={weights}")


@pytest.mark.parametrize("backend", ALL)
def test_gss_loss_default_weights(backend):
    loss_fn = gemini_ops.GSSLoss(backend=backend)
    assert (loss_fn.feature_weight, loss_fn.flow_weight) == (0.1, 1.0)
    x = _gss_inputs(torch.float64, 20)
    expected = 1.1 * (1 - gemini_ops.gss_similarity(*x, backend="reference"))
    assert_rel_close(loss_fn(*x), expected, torch.float64, floor=1.0, what="default GSSLoss")


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("backend", ALL)
def test_local_ncc_loss_is_one_minus_mean(backend, squared):
    a, b = randn((2, 1, 7, 6, 5), torch.float64, 30), randn((2, 1, 7, 6, 5), torch.float64, 31)
    mask = (randn((2, 1, 7, 6, 5), torch.float64, 32) > 0).double()
    for m in (None, mask):
        loss = gemini_ops.LocalNCCLoss(5, squared, backend=backend)(a, b, m)
        cc = gemini_ops.local_ncc(a, b, 5, None, squared, reduction="none", backend="reference")
        mean = cc.mean() if m is None else (cc * m).sum() / m.sum()
        assert_rel_close(loss, 1 - mean, torch.float64, floor=1.0, what="LocalNCCLoss")


@pytest.mark.parametrize("backend", ALL)
def test_local_ncc_empty_mask(backend):
    a, b = randn((1, 1, 6, 5), torch.float64, 40).requires_grad_(), randn((1, 1, 6, 5), torch.float64, 41)
    out = gemini_ops.local_ncc(a, b, 3, torch.zeros((1, 1, 6, 5), dtype=torch.float64), backend=backend)
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, a)
    assert torch.isfinite(g).all() and torch.count_nonzero(g) == 0


def test_masked_mean():
    values = randn((2, 3, 4, 5), torch.float64, 50)
    mask = (randn((2, 1, 4, 5), torch.float64, 51) > 0).double()
    expected = (values * mask).sum() / (mask.sum() * 3)
    assert_rel_close(gemini_ops.masked_mean(values, mask), expected, torch.float64)
    assert gemini_ops.masked_mean(values, None).item() == pytest.approx(values.mean().item(), abs=1e-14)
    assert gemini_ops.masked_mean(values, torch.zeros_like(mask)).item() == 0.0
