"""Hypothesis fuzzing of shapes (size-1 axes included), strides, dtypes and
modes, every backend against an oracle. The number of examples comes from the
profile in conftest.py (``ci``: 60 per test, 4 tests)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from opsutil import BACKENDS, DTYPES, RTOL, avoid_ties, rel_error, weighted_grads

import gemini_ops
from gemini_ops import reference

pytestmark = pytest.mark.usefixtures("one_thread")

ALL = [*BACKENDS, "reference"]


def warp_oracle(image, ddf, mode, padding_mode):
    """``image(x + ddf(x))`` by grid_sample on the image padded with 2 voxels a
    side (zeros, or edge copies for border): every padded axis has >= 5
    voxels, so the align_corners=True normalisation is exact even for axes of
    size 1 (where grid_sample maps every coordinate onto the one voxel)."""
    ndim = ddf.shape[1]
    pad = [2] * (2 * ndim)
    padded = F.pad(image, pad, mode="constant" if padding_mode == "zeros" else "replicate")
    axes = [torch.arange(n, dtype=ddf.dtype) for n in ddf.shape[2:]]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"))
    pts = ddf + grid + 2.0
    sizes = torch.tensor([n + 4 for n in ddf.shape[2:]], dtype=ddf.dtype).reshape(1, ndim, *([1] * ndim))
    norm = pts * 2.0 / (sizes - 1) - 1.0
    norm = norm.permute(0, *range(2, 2 + ndim), 1).flip(-1)
    return F.grid_sample(padded, norm, mode=mode, padding_mode=padding_mode, align_corners=True)


def integrate_oracle(velocity, steps, padding_mode):
    u = velocity / 2**steps
    for _ in range(steps):
        u = u + warp_oracle(u, u, "bilinear", padding_mode)
    return u


@st.composite
def volumes(draw, channels=None, max_size=6):
    ndim = draw(st.sampled_from([2, 3]))
    batch = draw(st.integers(1, 2))
    c = draw(st.integers(1, 3)) if channels is None else channels
    spatial = tuple(draw(st.integers(1, max_size)) for _ in range(ndim))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    return ndim, batch, c, spatial, dtype, seed


@st.composite
def strided(draw, t: torch.Tensor):
    """The values of ``t`` in a view with other strides: a permutation of the
    memory order, and/or a slice with step 2 of a larger buffer."""
    perm = draw(st.permutations(list(range(t.dim()))))
    base = t.permute(*perm).contiguous()
    inv = [perm.index(k) for k in range(t.dim())]
    view = base.permute(*inv)
    if draw(st.booleans()):
        axis = draw(st.integers(0, t.dim() - 1))
        shape = list(view.shape)
        shape[axis] = 2 * shape[axis]
        big = torch.full(shape, float("nan"), dtype=t.dtype)  # NaN: reading a wrong element shows
        sl = [slice(None)] * t.dim()
        sl[axis] = slice(0, None, 2)
        big[tuple(sl)] = view
        view = big[tuple(sl)]
    assert torch.equal(view, t)
    return view


def _rand(shape, dtype, gen, scale=1.0):
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _compare(ours, oracle, dtype, seed, names, floors=None):
    """``ours``: (value, grads) of the op under test. ``oracle(dt)``: (value,
    grads) of the oracle run in dtype ``dt`` on the same (rounded) inputs.

    float64: within 1e-10 of the float64 oracle. float32: within 1e-5 of the
    float64 oracle, or, where the problem is ill-conditioned in float32 (the
    float32 oracle itself is further off: a sample point that rounding moves
    across a cell boundary, a near-zero feature norm), no more than four times
    as far off as the float32 oracle: another float32 formula rounds
    differently (the reference backend's GSS gradient, C=2, a (6, 1) grid:
    1.21e-5 where the oracle's was 4.1e-6), while a wrong result is off by
    orders of magnitude. ``floors``: the natural scale of each quantity where
    the exact result may vanish (see opsutil.rel_error)."""
    exact = oracle(torch.float64)
    approx = oracle(torch.float32) if dtype == torch.float32 else None
    floors = floors or [0.0] * len(names)
    for k, (name, floor) in enumerate(zip(names, floors)):
        a = ours[0] if k == 0 else ours[1][k - 1]
        e = exact[0] if k == 0 else exact[1][k - 1]
        err = rel_error(a, e, floor)
        tol = RTOL[dtype]
        if approx is not None:
            x = approx[0] if k == 0 else approx[1][k - 1]
            tol = max(tol, 4 * rel_error(x, e, floor))
        assert err <= tol, f"{name}: relative error {err:.3g} > {tol:.3g} ({dtype})"


@given(
    vol=volumes(),
    mode=st.sampled_from(["bilinear", "nearest"]),
    padding_mode=st.sampled_from(["zeros", "border"]),
    backend=st.sampled_from(ALL),
    scale=st.sampled_from([0.5, 2.0, 5.0]),
    data=st.data(),
)
def test_fuzz_warp(vol, mode, padding_mode, backend, scale, data):
    ndim, batch, c, spatial, dtype, seed = vol
    gen = torch.Generator().manual_seed(seed)
    image = _rand((batch, c, *spatial), dtype, gen)
    ddf = avoid_ties(_rand((batch, ndim, *spatial), torch.float64, gen, scale)).to(dtype)
    x = [data.draw(strided(t)).requires_grad_() for t in (image, ddf)]
    out = gemini_ops.warp(*x, mode, padding_mode, backend=backend)
    g = weighted_grads(out, x, seed)
    if mode == "nearest":  # piecewise constant in ddf
        assert torch.count_nonzero(g[1]) == 0
    n = 3 if mode == "bilinear" else 2

    def oracle(dt):
        y = [t.to(dt).requires_grad_() for t in (image, ddf)]
        ref = warp_oracle(*y, mode, padding_mode)
        return ref, weighted_grads(ref, y, seed)[: n - 1]

    # an exact 0 (border padding on a size-1 axis: a difference of equal values) may come
    # out of grid_sample as 1e-16: the scale of one term |dI/dx * w| is about max |image|
    floors = [0.0, 0.0, image.abs().max().item()][:n]
    _compare((out, g[: n - 1]), oracle, dtype, seed, ["warp", "d/d image", "d/d ddf"][:n], floors)


@given(
    vol=volumes(channels=0),
    steps=st.integers(0, 4),
    padding_mode=st.sampled_from(["zeros", "border"]),
    backend=st.sampled_from(ALL),
    data=st.data(),
)
def test_fuzz_integrate(vol, steps, padding_mode, backend, data):
    ndim, batch, _, spatial, dtype, seed = vol
    gen = torch.Generator().manual_seed(seed)
    velocity = _rand((batch, ndim, *spatial), dtype, gen, 2.0)
    v = data.draw(strided(velocity)).requires_grad_()
    out = gemini_ops.integrate_velocity(v, steps, padding_mode, backend=backend)

    def oracle(dt):
        y = velocity.to(dt).requires_grad_()
        ref = integrate_oracle(y, steps, padding_mode)
        return ref, weighted_grads(ref, (y,), seed)

    _compare((out, weighted_grads(out, (v,), seed)), oracle, dtype, seed, ["integrate", "d/d velocity"])


@given(
    vol=volumes(),
    with_mask=st.booleans(),
    reduction=st.sampled_from(["mean", "none"]),
    backend=st.sampled_from(ALL),
    data=st.data(),
)
def test_fuzz_gss(vol, with_mask, reduction, backend, data):
    ndim, batch, c, spatial, dtype, seed = vol
    gen = torch.Generator().manual_seed(seed)
    fm, ff = _rand((batch, c, *spatial), dtype, gen), _rand((batch, c, *spatial), dtype, gen)
    ddf = avoid_ties(_rand((batch, ndim, *spatial), torch.float64, gen, 1.5)).to(dtype)
    mask = (torch.rand((batch, 1, *spatial), generator=gen) > 0.3).to(dtype) if with_mask else None
    x = [data.draw(strided(t)).requires_grad_() for t in (fm, ff, ddf)]
    out = gemini_ops.gss_similarity(*x, mask, reduction, backend=backend)

    def reduce(v, weight):
        return v * weight if reduction == "none" else (v * weight).sum() / weight.sum().clamp_min(1e-6)

    def oracle(dt, numerator_only=False):
        y = [t.to(dt).requires_grad_() for t in (fm, ff, ddf)]
        warped = warp_oracle(y[0], y[2], "bilinear", "zeros")
        weight = (mask if with_mask else reference.sample_mask(ddf)).to(dt)
        if numerator_only:  # <w, f> / (|w| |f|) with the norms held fixed
            norms = warped.norm(dim=1, keepdim=True).clamp_min(1e-8) * y[1].norm(dim=1, keepdim=True).clamp_min(1e-8)
            cos = (warped * y[1]).sum(1, keepdim=True) / norms.detach()
        else:
            cos = F.cosine_similarity(warped, y[1], dim=1, eps=1e-8).unsqueeze(1)
        ref = reduce(cos, weight)
        return ref, weighted_grads(ref, y, seed)

    # a cosine and a mean of cosines are O(1), however small the largest one (one
    # voxel in the mask with cosine 0.0031 made float32 rounding 2.5e-5 of it); the
    # quotient rule's two terms cancel (exactly, for one channel): the gradients'
    # rounding scales with the first term's
    floors = [1.0]
    floors += [t.abs().max().item() for t in oracle(torch.float64, numerator_only=True)[1]]
    names = ["gss", "d/d feat_moving", "d/d feat_fixed", "d/d ddf"]
    _compare((out, weighted_grads(out, x, seed)), oracle, dtype, seed, names, floors)


@given(
    vol=volumes(),
    window=st.sampled_from([1, 3, 5, 7]),
    squared=st.booleans(),
    backend=st.sampled_from(ALL),
    data=st.data(),
)
def test_fuzz_local_ncc(vol, window, squared, backend, data):
    ndim, batch, c, spatial, dtype, seed = vol
    gen = torch.Generator().manual_seed(seed)
    a = _rand((batch, c, *spatial), dtype, gen)
    b = (a.double() + _rand(a.shape, torch.float64, gen)).to(dtype)
    x = [data.draw(strided(t)).requires_grad_() for t in (a, b)]
    out = gemini_ops.local_ncc(*x, window, None, squared, reduction="none", backend=backend)
    n = 3 if window > 1 else 1  # a 1-voxel window is identically 0: its gradient is rounding noise

    def oracle(dt, numerator_only=False):
        y = [t.to(dt).requires_grad_() for t in (a, b)]
        ref = _ncc_map(*y, window, squared, numerator_only)
        return ref, weighted_grads(ref, y, seed)

    # a correlation is O(1); the quotient rule's terms cancel (a window holding one voxel
    # and zero padding correlates perfectly): the gradients' rounding scales with the numerator's
    floors = [1.0] + [t.abs().max().item() for t in oracle(torch.float64, numerator_only=True)[1]]
    ours = (out, weighted_grads(out, x, seed) if n > 1 else ())
    _compare(ours, oracle, dtype, seed, ["ncc", "d/d a", "d/d b"][:n], floors[:n])


def _ncc_map(a, b, window, squared, numerator_only=False, eps=1e-5):
    """The cc map of the docstring; with ``numerator_only`` its denominator is held fixed."""
    n = float(window ** (a.dim() - 2))
    s_a, s_b = reference.box_sum(a, window), reference.box_sum(b, window)
    cross = reference.box_sum(a * b, window) - s_a * s_b / n
    var_a = reference.box_sum(a * a, window) - s_a * s_a / n
    var_b = reference.box_sum(b * b, window) - s_b * s_b / n
    den = var_a * var_b + eps
    if numerator_only:
        den = den.detach()
    return cross * cross / den if squared else cross / den.sqrt()
