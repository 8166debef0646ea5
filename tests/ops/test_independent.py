"""The ops against computations that share no code with gemini_ops'
reference: MONAI's ``Warp``, ``DVF2DDF`` and
``LocalNormalizedCrossCorrelationLoss``, and compositions written here."""

from __future__ import annotations

import warnings

import pytest
import torch
from opsutil import BACKENDS, assert_rel_close, randn, random_ddf

import gemini_ops

monai_blocks = pytest.importorskip("monai.networks.blocks")
monai_losses = pytest.importorskip("monai.losses")

ALL = [*BACKENDS, "reference"]
SHAPES = {2: (2, 2, 9, 7), 3: (1, 2, 6, 7, 5)}


def _monai_warp(mode, padding_mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using PyTorch native grid_sample"
        return monai_blocks.Warp(mode=mode, padding_mode=padding_mode)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", ALL)
def test_warp_equals_monai(backend, ndim, padding_mode):
    shape = SHAPES[ndim]
    image = randn(shape, torch.float32, 21 + ndim)
    ddf = random_ddf(shape[0], ndim, shape[2:], torch.float32, 31 + ndim, scale=2.5)
    ours = gemini_ops.warp(image, ddf, "bilinear", padding_mode, backend=backend)
    theirs = _monai_warp("bilinear", padding_mode)(image, ddf)
    assert_rel_close(ours, theirs, torch.float32, what="warp vs monai.Warp")
    # the module wrapper is a drop-in with the same call
    module = gemini_ops.Warp("bilinear", padding_mode, backend=backend)
    assert_rel_close(module(image, ddf), theirs, torch.float32, what="gemini_ops.Warp vs monai.Warp")


@pytest.mark.parametrize("steps", [1, 3, 7])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", ALL)
def test_integrate_equals_monai_dvf2ddf(backend, ndim, padding_mode, steps):
    shape = SHAPES[ndim]
    velocity = randn((shape[0], ndim, *shape[2:]), torch.float32, 41 + steps, scale=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dvf2ddf = monai_blocks.DVF2DDF(num_steps=steps, mode="bilinear", padding_mode=padding_mode)
        theirs = dvf2ddf(velocity)
    ours = gemini_ops.integrate_velocity(velocity, steps, padding_mode, backend=backend)
    assert_rel_close(ours, theirs, torch.float32, what="integrate vs monai.DVF2DDF")
    module = gemini_ops.VelocityIntegrator(steps, "bilinear", padding_mode, backend=backend)
    assert_rel_close(module(velocity), theirs, torch.float32, what="VelocityIntegrator vs DVF2DDF")


def _box_sum_cumsum(x: torch.Tensor, window: int) -> torch.Tensor:
    """Centred box sum with zero padding by cumulative sums along each axis
    (float64): independent of the reference's convolution with ones."""
    r = window // 2
    out = x.double()
    for axis in range(2, x.dim()):
        pad = [0, 0] * (x.dim() - 2)
        k = x.dim() - 1 - axis  # F.pad lists the last axis first
        pad[2 * k], pad[2 * k + 1] = r + 1, r
        c = torch.nn.functional.pad(out, pad).cumsum(axis)
        n = out.shape[axis]
        out = c.narrow(axis, window, n) - c.narrow(axis, 0, n)
    return out


def _ncc_composition(a, b, window, squared, eps):
    """The cc formula of the docstring on the cumulative-sum box sums, float64."""
    a, b = a.double(), b.double()
    n = float(window ** (a.dim() - 2))
    s_a, s_b = _box_sum_cumsum(a, window), _box_sum_cumsum(b, window)
    s_aa, s_bb, s_ab = (_box_sum_cumsum(t, window) for t in (a * a, b * b, a * b))
    mean_a, mean_b = s_a / n, s_b / n
    # cross = sum((a - mean_a)(b - mean_b)) over the window, written in the expanded form
    cross = s_ab - mean_b * s_a - mean_a * s_b + n * mean_a * mean_b
    var_a = s_aa - 2 * mean_a * s_a + n * mean_a**2
    var_b = s_bb - 2 * mean_b * s_b + n * mean_b**2
    if squared:
        return cross**2 / (var_a * var_b + eps)
    return cross / torch.sqrt(var_a * var_b + eps)


def test_cumsum_box_sum_is_a_box_sum():
    """The helper itself against a brute-force loop over window offsets."""
    x = randn((1, 1, 5, 6, 4), torch.float64, 3)
    window, r = 3, 1
    padded = torch.nn.functional.pad(x, [r] * 6)
    brute = torch.zeros_like(x)
    for i in range(window):
        for j in range(window):
            for k in range(window):
                brute += padded[:, :, i : i + 5, j : j + 6, k : k + 4]
    assert torch.allclose(_box_sum_cumsum(x, window), brute, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("window", [3, 5, 9])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
def test_local_ncc_equals_independent_composition(backend, ndim, window, squared, dtype):
    shape = SHAPES[ndim]
    a = randn(shape, dtype, 50 + window)
    b = (a.double() * 0.5 + randn(shape, torch.float64, 60 + window)).to(dtype)
    expected = _ncc_composition(a, b, window, squared, 1e-5)
    ours = gemini_ops.local_ncc(a, b, window, None, squared, reduction="none", backend=backend)
    assert_rel_close(ours, expected, dtype, floor=1.0, what="ncc vs cumsum composition")
    assert_rel_close(
        gemini_ops.local_ncc(a, b, window, squared=squared, backend=backend), expected.mean(), dtype, floor=1.0
    )
    # the loss module is 1 - mean
    loss = gemini_ops.LocalNCCLoss(window, squared, backend=backend)(a, b)
    assert_rel_close(loss, 1 - expected.mean(), dtype, floor=1.0, what="LocalNCCLoss")
    # and its gradient is the negative gradient of the mean
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    (g1,) = torch.autograd.grad(gemini_ops.LocalNCCLoss(window, squared, backend=backend)(a1, b), a1)
    (g2,) = torch.autograd.grad(-gemini_ops.local_ncc(a2, b, window, squared=squared, backend=backend), a2)
    assert_rel_close(g1, g2, dtype, what="LocalNCCLoss gradient")


@pytest.mark.parametrize("window", [3, 5, 9])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", ALL)
def test_local_ncc_equals_monai_lncc(backend, ndim, window):
    """MONAI's loss is -mean(cross^2 / (max(var_t, dr) * max(var_p, dr))) with a
    rectangular kernel of ones and zero padding: equal to our squared map with
    eps = 0 wherever both variances exceed smooth_dr, which random data give.
    (With the default eps=1e-5 the two differ by design.)"""
    shape = SHAPES[ndim]
    a = randn(shape, torch.float64, 70 + window)
    b = (a + randn(shape, torch.float64, 80 + window)).to(torch.float64)
    lncc = monai_losses.LocalNormalizedCrossCorrelationLoss(
        spatial_dims=ndim,
        kernel_size=window,
        kernel_type="rectangular",
        reduction="none",
        smooth_nr=0.0,
        smooth_dr=1e-12,
    )
    theirs = -lncc(a, b)  # MONAI: pred=a, target=b; symmetric in the two
    ours = gemini_ops.local_ncc(a, b, window, None, True, 0.0, "none", backend=backend)
    assert_rel_close(ours, theirs, torch.float64, floor=1.0, what="ncc vs MONAI LNCC")
    mean = gemini_ops.local_ncc(a, b, window, None, True, 0.0, backend=backend)
    lncc.reduction = "mean"
    assert_rel_close(mean, -lncc(a, b), torch.float64, floor=1.0, what="mean vs MONAI LNCC")


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_by_integer_shift_is_a_roll(backend, mode):
    """A constant integer displacement shifts the image; zero padding fills the rest."""
    image = randn((1, 2, 6, 5, 7), torch.float64, 90)
    shift = (1, -2, 3)
    ddf = torch.empty((1, 3, 6, 5, 7), dtype=torch.float64)
    for i, s in enumerate(shift):
        ddf[:, i] = s
    out = gemini_ops.warp(image, ddf, mode, "zeros", backend=backend)
    expected = torch.zeros_like(image)
    src = [slice(max(s, 0), n + min(s, 0)) for s, n in zip(shift, image.shape[2:])]
    dst = [slice(max(-s, 0), n + min(-s, 0)) for s, n in zip(shift, image.shape[2:])]
    expected[(..., *dst)] = image[(..., *src)]
    assert torch.equal(out, expected)
    # border padding repeats the edge voxels
    out_b = gemini_ops.warp(image, ddf, mode, "border", backend=backend)
    idx = [torch.arange(n) for n in image.shape[2:]]
    gathered = image
    for axis, (s, ix) in enumerate(zip(shift, idx)):
        gathered = gathered.index_select(2 + axis, (ix + s).clamp(0, len(ix) - 1))
    assert torch.equal(out_b, gathered)


@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_bilinear_by_hand(backend):
    """A 2D sample point at fractional offsets: the bilinear formula by hand."""
    g = torch.Generator().manual_seed(5)
    image = torch.randn((1, 1, 4, 5), generator=g, dtype=torch.float64)
    ddf = torch.rand((1, 2, 4, 5), generator=g, dtype=torch.float64) * 3 - 1.5
    out = gemini_ops.warp(image, ddf, "bilinear", "zeros", backend=backend)
    H, W = 4, 5

    def pix(y, x):
        return image[0, 0, y, x].item() if 0 <= y < H and 0 <= x < W else 0.0

    for y in range(H):
        for x in range(W):
            py, px = y + ddf[0, 0, y, x].item(), x + ddf[0, 1, y, x].item()
            y0, x0 = int(torch.floor(torch.tensor(py))), int(torch.floor(torch.tensor(px)))
            fy, fx = py - y0, px - x0
            v = (
                pix(y0, x0) * (1 - fy) * (1 - fx)
                + pix(y0, x0 + 1) * (1 - fy) * fx
                + pix(y0 + 1, x0) * fy * (1 - fx)
                + pix(y0 + 1, x0 + 1) * fy * fx
            )
            assert out[0, 0, y, x].item() == pytest.approx(v, abs=1e-12)
