"""The drop-in modules against MONAI's own: ``Warp``, ``DVF2DDF`` and
``LocalNormalizedCrossCorrelationLoss`` over MONAI's parameter grids, forward
and gradients, on fresh random inputs; float64 unless a test says otherwise."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from opsutil import assert_rel_close, avoid_ties, gen, randn, weighted_grads

import gemini_ops

monai_blocks = pytest.importorskip("monai.networks.blocks")
monai_losses = pytest.importorskip("monai.losses")

F64 = torch.float64
SPATIAL = {1: (11,), 2: (7, 9), 3: (5, 6, 7)}


def monai_warp(*args, **kwargs):
    with warnings.catch_warnings():  # "Using PyTorch native grid_sample"
        warnings.simplefilter("ignore")
        return monai_blocks.Warp(*args, **kwargs)


def monai_dvf2ddf(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return monai_blocks.DVF2DDF(*args, **kwargs)


def leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def compare(ours_fn, theirs_fn, inputs, seed, dtype=F64, what="", grad_of=None, factor=1.0):
    """Forward and gradients (w.r.t. the inputs flagged in ``grad_of``) agree."""
    grad_of = grad_of or [True] * len(inputs)
    mine, theirs = [leaf(t) for t in inputs], [leaf(t) for t in inputs]
    out_m, out_t = ours_fn(*mine), theirs_fn(*theirs)
    assert out_m.dtype == out_t.dtype, what
    assert_rel_close(out_m, out_t, dtype, floor=1.0, factor=factor, what=f"{what} forward")
    wanted = [i for i, g in enumerate(grad_of) if g]
    g_m = weighted_grads(out_m, [mine[i] for i in wanted], seed)
    g_t = weighted_grads(out_t, [theirs[i] for i in wanted], seed)
    for i, a, b in zip(wanted, g_m, g_t):
        a = torch.zeros_like(inputs[i]) if a is None else a
        b = torch.zeros_like(inputs[i]) if b is None else b
        assert_rel_close(a, b, dtype, floor=1.0, factor=factor, what=f"{what} d/d input {i}")


# ---------------------------------------------------------------- Warp
WARP_GRID = [
    (ndim, mode, padding, jitter)
    for ndim, mode, padding, jitter in itertools.product(
        (2, 3), ("nearest", "bilinear", "bicubic"), ("zeros", "border", "reflection"), (False, True)
    )
    if not (mode == "bicubic" and ndim == 3)  # grid_sample: bicubic is 2D only
]


@pytest.mark.parametrize("ndim,mode,padding,jitter", WARP_GRID)
def test_warp_matches_monai(ndim, mode, padding, jitter):
    seed = 100 + WARP_GRID.index((ndim, mode, padding, jitter))
    spatial = SPATIAL[ndim]
    image = randn((2, 3, *spatial), F64, seed)
    # displacements of a few voxels: many samples land outside, where the padding decides
    ddf = avoid_ties(randn((2, ndim, *spatial), F64, seed + 1, 2.5))
    compare(
        gemini_ops.Warp(mode, padding, jitter),
        monai_warp(mode, padding, jitter),
        (image, ddf),
        seed,
        what=f"Warp {ndim}D {mode} {padding} jitter={jitter}",
        grad_of=[True, mode != "nearest"],
    )


def test_warp_defaults_are_monai_defaults():
    """``Warp()`` pads with the border like MONAI; ``gemini_ops.warp`` keeps zeros."""
    image = randn((1, 2, 6, 7, 5), F64, 1)
    ddf = randn((1, 3, 6, 7, 5), F64, 2, 3.0)
    ours = gemini_ops.Warp()(image, ddf)
    assert_rel_close(ours, monai_warp()(image, ddf), F64, what="Warp()")
    assert torch.equal(ours, gemini_ops.warp(image, ddf, padding_mode="border"))
    assert (gemini_ops.warp(image, ddf) - ours).abs().max() > 0.1  # the functional default differs


@pytest.mark.parametrize(
    "codes,names",
    [((1, 0), ("bilinear", "border")), ((0, 7), ("nearest", "zeros")), ((1, 1), ("bilinear", "reflection"))],
)
def test_warp_integer_codes(codes, names):
    """MONAI's integer codes mean the modes MONAI documents for them."""
    image, ddf = randn((2, 2, 8, 6), F64, 3), avoid_ties(randn((2, 2, 8, 6), F64, 4, 2.0))
    assert torch.equal(gemini_ops.Warp(*codes)(image, ddf), gemini_ops.Warp(*names)(image, ddf))
    assert_rel_close(gemini_ops.Warp(*codes)(image, ddf), monai_warp(*names)(image, ddf), F64, what=str(codes))


def test_warp_monai_enums():
    from monai.utils import GridSampleMode, GridSamplePadMode

    layer = gemini_ops.Warp(GridSampleMode.BICUBIC, GridSamplePadMode.REFLECTION)
    assert (layer.mode, layer.padding_mode) == ("bicubic", "reflection")


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_warp_size_one_axis(padding):
    """MONAI pins a size-1 axis to its only voxel, whatever the displacement."""
    image, ddf = randn((1, 2, 1, 6, 7), F64, 5), randn((1, 3, 1, 6, 7), F64, 6, 2.0)
    compare(gemini_ops.Warp("bilinear", padding), monai_warp("bilinear", padding), (image, ddf), 7, what=padding)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cpu(dtype):
    """float16/bfloat16 CPU inputs are computed in float32 and returned in
    their dtype, close to MONAI's (which computes in that dtype)."""
    image = randn((1, 2, 6, 7, 5), torch.float32, 8).to(dtype)
    ddf = randn((1, 3, 6, 7, 5), torch.float32, 9, 2.0).to(dtype)
    ours = gemini_ops.Warp()(image, ddf)
    assert ours.dtype == dtype
    assert torch.equal(ours, gemini_ops.Warp()(image.float(), ddf.float()).to(dtype))
    theirs = monai_warp()(image, ddf)
    ulp = torch.finfo(dtype).eps
    assert (ours.float() - theirs.float()).abs().max() <= 8 * ulp * theirs.abs().max().float()
    velocity = ddf.float().div(2).to(dtype)
    u = gemini_ops.VelocityIntegrator()(velocity)
    assert u.dtype == dtype and torch.equal(u, gemini_ops.VelocityIntegrator()(velocity.float()).to(dtype))
    a, b = image, (image.float() + 0.3 * randn(image.shape, torch.float32, 10)).to(dtype)
    loss = gemini_ops.LocalNormalizedCrossCorrelationLoss()(a, b)
    assert loss.dtype == dtype
    assert abs(loss.float() - monai_losses.LocalNormalizedCrossCorrelationLoss()(a, b).float()) <= 8 * ulp
    image = leaf(image)
    (g,) = torch.autograd.grad(gemini_ops.Warp()(image, ddf).float().sum(), [image])
    assert g.dtype == dtype
    cos = gemini_ops.gss_similarity(image, b, ddf, reduction="none")
    assert cos.dtype == dtype
    assert torch.equal(
        cos, gemini_ops.gss_similarity(image.float(), b.float(), ddf.float(), reduction="none").to(dtype)
    )


def test_warp_gradcheck_delegated_modes():
    """float64 gradcheck through the grid_sample path (bicubic, reflection)."""
    image = randn((1, 1, 5, 6), F64, 11).requires_grad_()
    ddf = avoid_ties(randn((1, 2, 5, 6), F64, 12, 1.5)).requires_grad_()
    for mode, padding in [("bicubic", "zeros"), ("bilinear", "reflection"), ("bicubic", "reflection")]:
        layer = gemini_ops.Warp(mode, padding)
        assert torch.autograd.gradcheck(layer, (image, ddf), eps=1e-6, atol=1e-7), (mode, padding)


# ---------------------------------------------------------------- DVF2DDF
DVF_GRID = [
    (ndim, mode, padding, steps)
    for ndim, mode, padding in itertools.product(
        (2, 3), ("nearest", "bilinear", "bicubic"), ("zeros", "border", "reflection")
    )
    if not (mode == "bicubic" and ndim == 3)
    for steps in ((1, 7) if mode == "bilinear" else (4,))
]


@pytest.mark.parametrize("ndim,mode,padding,steps", DVF_GRID)
def test_velocity_integrator_matches_dvf2ddf(ndim, mode, padding, steps):
    seed = 300 + DVF_GRID.index((ndim, mode, padding, steps))
    velocity = randn((2, ndim, *SPATIAL[ndim]), F64, seed, 2.0)
    compare(
        gemini_ops.VelocityIntegrator(steps, mode, padding),
        monai_dvf2ddf(steps, mode, padding),
        (velocity,),
        seed,
        what=f"DVF2DDF {ndim}D {mode} {padding} steps={steps}",
    )


def test_velocity_integrator_defaults_and_size_one_axis():
    velocity = randn((1, 3, 5, 6, 4), F64, 20, 2.0)
    compare(gemini_ops.VelocityIntegrator(), monai_dvf2ddf(), (velocity,), 21, what="defaults")
    flat = randn((1, 3, 1, 6, 4), F64, 22, 2.0)
    compare(gemini_ops.VelocityIntegrator(3), monai_dvf2ddf(3), (flat,), 23, what="size-1 axis")


# ---------------------------------------------------------------- LNCC
LNCC_GRID = list(itertools.product((1, 2, 3), ("rectangular", "triangular", "gaussian"), ("mean", "sum", "none")))


@pytest.mark.parametrize("ndim,kernel_type,reduction", LNCC_GRID)
def test_lncc_matches_monai(ndim, kernel_type, reduction):
    i = LNCC_GRID.index((ndim, kernel_type, reduction))
    kernel_size = (1, 3, 5, 9)[i % 4]
    smooth_nr, smooth_dr = ((0.0, 1e-5), (1e-3, 1e-2), (0.5, 1e-5))[i % 3]
    seed = 500 + i
    shape = (2, 2, *SPATIAL[ndim])
    pred = randn(shape, F64, seed)
    target = pred + randn(shape, F64, seed + 1, 0.8)
    target[0, 0] = 0.01 * pred[0, 0]  # low intensity: here the two denominators differ
    if kernel_type == "rectangular":
        # flat: the variance floor decides. Not with the other kernels: MONAI
        # sums their volume in float32, so its cross term of a flat window is
        # ~1e-7 instead of 0, and over the floor smooth_dr that is a visible
        # spurious gradient (ours sums in float64)
        target[1, 1].fill_(0.5)
    args = (ndim, kernel_size, kernel_type, reduction, smooth_nr, smooth_dr)
    compare(
        gemini_ops.LocalNormalizedCrossCorrelationLoss(*args),
        monai_losses.LocalNormalizedCrossCorrelationLoss(*args),
        (pred, target),
        seed,
        what=f"LNCC {args}",
        # MONAI sums its kernel volume in float32 (ours: float64); box kernels sum exactly
        factor=1.0 if kernel_type == "rectangular" else 1e4,
    )


def test_lncc_defaults():
    pred, target = randn((1, 1, 6, 7, 5), F64, 30), randn((1, 1, 6, 7, 5), F64, 31)
    target = pred + target
    compare(
        gemini_ops.LocalNormalizedCrossCorrelationLoss(),
        monai_losses.LocalNormalizedCrossCorrelationLoss(),
        (pred, target),
        32,
        what="defaults",
    )


# ---------------------------------------------------------------- the two NCC denominators
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("window", [3, 9])
def test_clamp_denominator_is_robust_at_low_intensity(window, squared):
    """Identical images scaled by 0.01: MONAI's variance floor still scores a
    perfect match 1; the authors' ``+ eps`` collapses (documented)."""
    image = 0.01 * torch.rand((1, 1, 16, 16, 16), generator=gen(40), dtype=F64)
    clamp = gemini_ops.local_ncc(image, image, window, squared=squared, denominator="clamp")
    eps = gemini_ops.local_ncc(image, image, window, squared=squared)
    assert abs(clamp.item() - 1.0) < 1e-9
    assert eps.item() < (0.1 if window == 3 else 0.95)  # README: 0.006 and 0.84 squared


@pytest.mark.parametrize("backend", ["compiled", "reference"])
@pytest.mark.parametrize("squared", [True, False])
def test_denominators_independent(backend, squared):
    """Both denominators against a direct per-voxel computation (explicit
    windows, no running or separable sums)."""
    a = randn((1, 1, 6, 5, 7), F64, 41)
    b = a + randn(a.shape, F64, 42, 0.5)
    w, eps, smooth_nr = 3, 1e-2, 0.0
    pa = torch.nn.functional.pad(a, (1,) * 6)
    pb = torch.nn.functional.pad(b, (1,) * 6)
    wa = pa.unfold(2, w, 1).unfold(3, w, 1).unfold(4, w, 1).reshape(*a.shape, -1)
    wb = pb.unfold(2, w, 1).unfold(3, w, 1).unfold(4, w, 1).reshape(*a.shape, -1)
    da, db = wa - wa.mean(-1, keepdim=True), wb - wb.mean(-1, keepdim=True)
    cross, var_a, var_b = (da * db).sum(-1), (da * da).sum(-1), (db * db).sum(-1)
    expected = {
        "eps": cross**2 / (var_a * var_b + eps) if squared else cross / torch.sqrt(var_a * var_b + eps),
        "clamp": (cross**2 + smooth_nr) / (var_a.clamp_min(eps) * var_b.clamp_min(eps))
        if squared
        else cross / torch.sqrt(var_a.clamp_min(eps) * var_b.clamp_min(eps)),
    }
    for denominator, want in expected.items():
        got = gemini_ops.local_ncc(
            a, b, w, None, squared, eps, "none", denominator=denominator, smooth_nr=smooth_nr, backend=backend
        )
        assert_rel_close(got, want, F64, floor=1.0, what=denominator)


def test_local_ncc_loss_denominator_option():
    a = 0.01 * randn((1, 1, 6, 5, 7), F64, 43)
    b = a.clone()
    loss = gemini_ops.LocalNCCLoss(3, denominator="clamp")(a, b)
    assert abs(loss.item()) < 1e-9  # 1 - mean(1)
    assert gemini_ops.LocalNCCLoss(3)(a, b).item() > 0.5


def test_dropins_compile_fullgraph():
    """The drop-ins trace under torch.compile(fullgraph=True), NaN check on,
    and give the eager results."""
    warp, integrate = gemini_ops.Warp(), gemini_ops.VelocityIntegrator(3)
    lncc = gemini_ops.LocalNormalizedCrossCorrelationLoss(spatial_dims=3)

    def step(image, target, velocity):
        return lncc(warp(image, integrate(velocity)), target)

    image, target = randn((1, 1, 6, 5, 7), torch.float32, 50), randn((1, 1, 6, 5, 7), torch.float32, 51)
    velocity = randn((1, 3, 6, 5, 7), torch.float32, 52, 1.5)
    # aot_eager: dynamo and the fake kernels trace it; inductor's code generation is tested elsewhere
    compiled = torch.compile(step, fullgraph=True, dynamic=False, backend="aot_eager")
    assert_rel_close(compiled(image, target, velocity), step(image, target, velocity), torch.float32, floor=1.0)
