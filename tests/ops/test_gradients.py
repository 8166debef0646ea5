"""Gradients of the compiled and emulated backends against the reference's
autograd gradients, and ``torch.autograd.gradcheck`` in float64 for every
differentiable input of every op."""

from __future__ import annotations

import pytest
import torch
from opsutil import (
    BACKENDS,
    DTYPES,
    assert_rel_close,
    avoid_ties,
    gradcheck_kwargs,
    layout,
    ncc_inputs,
    randn,
    random_ddf,
    spatial_shape,
    weighted_grads,
)

import gemini_ops
from gemini_ops import reference

# (ndim, batch, layout, seed)
CASES = [(2, 1, "sliced", 11), (2, 2, "contiguous", 12), (3, 1, "transposed", 13), (3, 2, "channels_last", 14)]


def case_id(c):
    return f"{c[0]}d-b{c[1]}-{c[2]}"


def leaf(t: torch.Tensor, kind: str = "contiguous") -> torch.Tensor:
    return layout(t.detach(), kind).requires_grad_(True)


# ---------------------------------------------------------------- vs reference
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_warp_grads_match_reference(backend, dtype, mode, padding_mode, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    image = randn((batch, 2, *spatial), dtype, seed)
    ddf = random_ddf(batch, ndim, spatial, dtype, seed + 1, scale=2.0)
    i1, d1 = leaf(image, kind), leaf(ddf, kind)
    g = weighted_grads(gemini_ops.warp(i1, d1, mode, padding_mode, backend=backend), (i1, d1), seed)
    i2, d2 = leaf(image), leaf(ddf)
    r = weighted_grads(reference.warp(i2, d2, mode, padding_mode), (i2, d2), seed)
    assert_rel_close(g[0], r[0], dtype, what="d/d image")
    if mode == "nearest":  # piecewise constant in ddf: a zero gradient, not None
        assert g[1] is not None and torch.count_nonzero(g[1]) == 0
    else:
        assert_rel_close(g[1], r[1], dtype, what="d/d ddf")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("steps", [0, 1, 3, 7])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_integrate_grads_match_reference(backend, dtype, steps, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    velocity = randn((batch, ndim, *spatial), dtype, seed + steps, scale=2.0)
    for padding_mode in ("zeros", "border"):
        v1, v2 = leaf(velocity, kind), leaf(velocity)
        (g,) = weighted_grads(gemini_ops.integrate_velocity(v1, steps, padding_mode, backend=backend), (v1,), seed)
        (r,) = weighted_grads(reference.integrate_velocity(v2, steps, padding_mode), (v2,), seed)
        assert_rel_close(g, r, dtype, what=f"d/d velocity steps={steps} {padding_mode}")


@pytest.mark.parametrize("steps,every", [(1, 1), (5, 1), (7, 2), (8, 3), (11, 4), (11, 20)])
@pytest.mark.parametrize("ns", ["gemini", "gemini_emulated"])
def test_integrate_backward_with_and_without_checkpoints(ns, steps, every):
    """The backward from the forward's checkpoints (every `every`-th field),
    from fields it recomputes itself (all up to 8 steps, sqrt checkpoints
    beyond) and the reference agree; a second backward through the same graph
    gives the same gradient (checkpoints are only read)."""
    ops = getattr(torch.ops, ns)
    v = randn((2, 3, 7, 6, 9), torch.float64, 40 + steps, scale=2.0)
    g = randn(v.shape, torch.float64, 50 + steps)
    leaf_v = v.clone().requires_grad_()
    ddf, fields = ops.integrate_velocity_with_fields(leaf_v, steps, every, "border")
    assert fields.shape == ((steps - 1) // every, *v.shape) and not fields.requires_grad
    (first,) = torch.autograd.grad(ddf, leaf_v, g, retain_graph=True)
    (second,) = torch.autograd.grad(ddf, leaf_v, g)
    recomputed = ops.integrate_velocity_backward(g, v, v.new_empty(0), steps, 1, "border")
    ref_v = v.clone().requires_grad_()
    (ref,) = torch.autograd.grad(reference.integrate_velocity(ref_v, steps, "border"), ref_v, g)
    # (the emulated CUDA scatter adds with atomics: any order)
    assert torch.equal(first, second) if ns == "gemini" else torch.allclose(first, second, rtol=1e-12, atol=1e-12)
    assert_rel_close(first, ref, torch.float64, what=f"checkpoints every {every}, {steps} steps")
    assert_rel_close(recomputed, ref, torch.float64, what=f"recomputed fields, {steps} steps")
    assert_rel_close(ddf, ops.integrate_velocity(v, steps, "border"), torch.float64, what="forward")
    if fields.shape[0]:  # the checkpoints are the fields after every `every` squarings
        assert_rel_close(fields[0], ops.integrate_velocity(v / 2 ** (steps - every), every, "border"), torch.float64)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gss_grads_match_reference(backend, dtype, with_mask, reduction, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    fm, ff = randn((batch, 3, *spatial), dtype, seed), randn((batch, 3, *spatial), dtype, seed + 1)
    ddf = random_ddf(batch, ndim, spatial, dtype, seed + 2, scale=1.5)
    mask = (torch.rand((batch, 1, *spatial), generator=torch.Generator().manual_seed(seed)) > 0.3).to(dtype)
    m = mask if with_mask else None
    for scales in [(1.0, 1.0, 1.0), (0.1, 2.5, 0.7)]:
        x1 = [leaf(t, kind) for t in (fm, ff, ddf)]
        out = gemini_ops.gss_similarity(*x1, m, reduction, grad_scales=scales, backend=backend)
        g = weighted_grads(out, x1, seed)
        # a float64 oracle. The cosine's gradient subtracts nearly parallel
        # vectors (f/|f| - cos w/|w|) and the ddf gradient multiplies that by
        # differences of neighbouring values: float32 kernels land at ~1.05e-5
        # of the largest entry here, hence factor 2 for float32.
        x2 = [leaf(t.double()) for t in (fm, ff, ddf)]
        cos = reference.gss_map(*x2)
        weight = mask.double() if with_mask else reference.sample_mask(x2[2])
        ref = cos * weight if reduction == "none" else (cos * weight).sum() / weight.sum()
        r = weighted_grads(ref, x2, seed)
        for name, gi, ri, s in zip(("feat_moving", "feat_fixed", "ddf"), g, r, scales):
            factor = 2.0 if dtype == torch.float32 else 1.0
            assert_rel_close(gi, (s * ri).to(dtype), dtype, factor=factor, what=f"d/d {name}, scale {s}")


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_gss_grad_scales_scale_gradients(backend, dtype, case):
    """grad_scales multiply each input's gradient (0 included) and leave the value."""
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    inputs = [randn((batch, 2, *spatial), dtype, seed), randn((batch, 2, *spatial), dtype, seed + 1)]
    inputs.append(random_ddf(batch, ndim, spatial, dtype, seed + 2, scale=1.0))
    x = [leaf(t) for t in inputs]
    base_value = gemini_ops.gss_similarity(*x, backend=backend)
    base = weighted_grads(base_value, x, seed)
    for scales in [(0.1, 0.1, 1.0), (0.0, 3.0, 0.5), (2.0, 0.0, 0.0)]:
        x = [leaf(t) for t in inputs]
        value = gemini_ops.gss_similarity(*x, grad_scales=scales, backend=backend)
        assert_rel_close(value, base_value, dtype, floor=1.0, what="value")
        g = weighted_grads(value, x, seed)
        for gi, bi, s in zip(g, base, scales):
            assert gi is not None
            assert_rel_close(gi, s * bi, dtype, floor=1e-3 * bi.abs().max().item(), what=f"scale {s}")
            assert (s == 0) == (torch.count_nonzero(gi) == 0)


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("window", [1, 3, 5, 9])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_local_ncc_grads_match_reference(backend, dtype, window, squared, case):
    ndim, batch, kind, seed = case
    spatial = spatial_shape(ndim, seed)
    a, b, mask = ncc_inputs(batch, spatial, dtype, seed)
    for m in (None, mask):
        x1 = [leaf(a, kind), leaf(b, kind)]
        g = weighted_grads(gemini_ops.local_ncc(*x1, window, m, squared, backend=backend), x1, seed)
        x2 = [leaf(a), leaf(b)]
        cc = reference.local_ncc_map(*x2, window, squared, 1e-5)
        ref = cc.mean() if m is None else (cc * m).sum() / m.expand_as(cc).sum()
        r = weighted_grads(ref, x2, seed)
        if window == 1:  # the map is identically 0 (up to rounding), and so is its gradient
            scale = 1.0 / a.numel()  # the gradient's scale for an O(1) per-voxel map
            for gi in g:
                assert gi.abs().max().item() <= 1e-3 * scale
            continue
        for name, gi, ri in zip("ab", g, r):
            assert_rel_close(gi, ri, dtype, what=f"d/d {name} (mask={m is not None})")


# ---------------------------------------------------------------- gradcheck
GC_SHAPES = {2: (2, 2, 5, 4), 3: (1, 2, 4, 3, 4)}


def _f64(shape, seed, scale=1.0, ties=False):
    t = randn(shape, torch.float64, seed, scale)
    if ties:
        t = avoid_ties(t)
    return t.requires_grad_(True)


@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("one_thread")
def test_gradcheck_warp(backend, ndim, padding_mode):
    shape = GC_SHAPES[ndim]
    image = _f64(shape, 1)
    ddf = _f64((shape[0], ndim, *shape[2:]), 2, scale=1.5, ties=True)
    kw = gradcheck_kwargs(backend)
    assert torch.autograd.gradcheck(
        lambda i, d: gemini_ops.warp(i, d, "bilinear", padding_mode, backend=backend), (image, ddf), **kw
    )
    # nearest: differentiable in the image only (wrt ddf gradcheck compares with its zero gradient)
    assert torch.autograd.gradcheck(
        lambda i, d: gemini_ops.warp(i, d, "nearest", padding_mode, backend=backend), (image, ddf), **kw
    )


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("one_thread")
def test_gradcheck_integrate(backend, ndim, steps):
    shape = GC_SHAPES[ndim]
    velocity = _f64((shape[0], ndim, *shape[2:]), 3 + steps, scale=1.5)
    for padding_mode in ("zeros", "border"):
        assert torch.autograd.gradcheck(
            lambda v, p=padding_mode: gemini_ops.integrate_velocity(v, steps, p, backend=backend),
            (velocity,),
            **gradcheck_kwargs(backend),
        )


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("one_thread")
def test_gradcheck_gss(backend, ndim, reduction):
    shape = GC_SHAPES[ndim]
    fm, ff = _f64(shape, 5), _f64(shape, 6)
    ddf = _f64((shape[0], ndim, *shape[2:]), 7, scale=1.2, ties=True)
    kw = gradcheck_kwargs(backend)
    mask = (randn((shape[0], 1, *shape[2:]), torch.float64, 8) > -0.5).double()
    for m in (None, mask):
        assert torch.autograd.gradcheck(
            lambda a, b, d, m=m: gemini_ops.gss_similarity(a, b, d, m, reduction, backend=backend), (fm, ff, ddf), **kw
        )
    # grad_scales != 1: the backward is the scaled derivative. g(x) = gss(x) + (s - 1) * gss(x.detach())
    # has the value of gss and the plain derivative of s * gss... so instead compare with
    # gradcheck of h(x) = gss(x) / s_i applied through the scaled op: d h / d x_i is the true derivative
    scales = (0.1, 2.0, 0.5)
    for i, s in enumerate(scales):
        one = [1.0, 1.0, 1.0]
        one[i] = s

        def unscaled(a, b, d, i=i, s=s, one=tuple(one)):
            # the scaled op's backward for input i is s * (true derivative); dividing the output by
            # s and adding back (1 - 1/s) * detached value keeps the value and restores the true
            # derivative, which gradcheck then compares with finite differences
            out = gemini_ops.gss_similarity(a, b, d, None, reduction, grad_scales=one, backend=backend)
            return out / s + (1 - 1 / s) * out.detach()

        inputs = [t if k == i else t.detach() for k, t in enumerate((fm, ff, ddf))]
        assert torch.autograd.gradcheck(unscaled, tuple(inputs), **kw)


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("window", [3, 5])  # a 1-voxel window gives 0 (rounding noise): see the grads test
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.usefixtures("one_thread")
def test_gradcheck_local_ncc(backend, ndim, window, squared):
    shape = GC_SHAPES[ndim]
    a = _f64(shape, 10)
    b = (a.detach() + randn(shape, torch.float64, 11, 0.8)).requires_grad_()
    mask = (randn((shape[0], 1, *shape[2:]), torch.float64, 12) > 0).double()
    kw = gradcheck_kwargs(backend)
    assert torch.autograd.gradcheck(
        lambda x, y: gemini_ops.local_ncc(x, y, window, None, squared, reduction="none", backend=backend), (a, b), **kw
    )
    assert torch.autograd.gradcheck(
        lambda x, y: gemini_ops.local_ncc(x, y, window, mask, squared, backend=backend), (a, b), **kw
    )
    # the plain mean: summed by the op (CPU), or the mean of its map (emulated)
    assert torch.autograd.gradcheck(
        lambda x, y: gemini_ops.local_ncc(x, y, window, None, squared, backend=backend), (a, b), **kw
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_to_one_input_only(backend):
    """needs_input_grad is honoured: a gradient to one input equals that input's
    gradient when both are requested."""
    shape = GC_SHAPES[3]
    image, ddf = randn(shape, torch.float64, 1), random_ddf(1, 3, shape[2:], torch.float64, 2, 1.5)
    both = weighted_grads(gemini_ops.warp(leaf(image), d := leaf(ddf), backend=backend), (d,), 3)
    only = weighted_grads(gemini_ops.warp(image, d2 := leaf(ddf), backend=backend), (d2,), 3)
    assert_rel_close(only[0], both[0], torch.float64, what="ddf only")
    a, b = randn(shape, torch.float64, 4), randn(shape, torch.float64, 5)
    ga = weighted_grads(gemini_ops.local_ncc(la := leaf(a), b, 3, backend=backend), (la,), 6)[0]
    gab = weighted_grads(gemini_ops.local_ncc(la2 := leaf(a), leaf(b), 3, backend=backend), (la2,), 6)[0]
    assert_rel_close(ga, gab, torch.float64, what="a only")
    fm, ff = randn(shape, torch.float64, 7), randn(shape, torch.float64, 8)
    gd = weighted_grads(gemini_ops.gss_similarity(fm, ff, d3 := leaf(ddf), backend=backend), (d3,), 9)[0]
    gref = weighted_grads(gemini_ops.gss_similarity(fm, ff, d4 := leaf(ddf), backend="reference"), (d4,), 9)[0]
    assert_rel_close(gd, gref, torch.float64, what="gss ddf only")
    gb = weighted_grads(gemini_ops.local_ncc(a, lb := leaf(b), 3, backend=backend), (lb,), 6)[0]
    gab = weighted_grads(gemini_ops.local_ncc(leaf(a), lb2 := leaf(b), 3, backend=backend), (lb2,), 6)[0]
    assert_rel_close(gb, gab, torch.float64, what="b only")


@pytest.mark.parametrize("backend", [*BACKENDS, "reference"])
def test_nearest_warp_ddf_gradient_is_zero(backend):
    """Nearest sampling is piecewise constant in ddf: its gradient is zeros
    on every backend, with or without the image's gradient (a missing one
    would make optimisers with weight decay treat ddf differently)."""
    image, ddf = randn((1, 2, 5, 6), torch.float64, 50), random_ddf(1, 2, (5, 6), torch.float64, 51, 1.5)
    for image_grad in (False, True):
        i, d = image.clone().requires_grad_(image_grad), leaf(ddf)
        out = gemini_ops.warp(i, d, "nearest", backend=backend)
        gd = torch.autograd.grad(out.sum(), d)[0]
        assert torch.equal(gd, torch.zeros_like(ddf)), f"image_grad={image_grad}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("channels", "dtype"), [(3, torch.float64), (16, torch.float32)], ids=["f64-c3", "f32-c16"])
@pytest.mark.parametrize("wanted", ["ddf", "ddf+fixed", "ddf+moving", "moving", "fixed"])
def test_gss_gradient_subsets(backend, channels, dtype, wanted):
    """Each subset of GSS's inputs asking for a gradient gets it right (16
    float32 channels: the CPU's channel-innermost kernels; 3 float64: its
    plane-major lanes)."""
    spatial = (6, 7, 37)
    fm, ff = randn((2, channels, *spatial), dtype, 40), randn((2, channels, *spatial), dtype, 41)
    ddf = random_ddf(2, 3, spatial, dtype, 42, 2.0)
    inputs = {"moving": fm, "fixed": ff, "ddf": ddf}
    for w in wanted.split("+"):
        inputs[w] = leaf(inputs[w])
    args = [inputs[k] for k in ("moving", "fixed", "ddf")]
    refs = [t.detach().double().requires_grad_(t.requires_grad) for t in args]
    out = gemini_ops.gss_similarity(*args, reduction="none", backend=backend)
    ref = reference.gss_map(*refs) * reference.sample_mask(refs[2])
    got = weighted_grads(out, [t for t in args if t.requires_grad], 43)
    want = weighted_grads(ref, [t for t in refs if t.requires_grad], 43)
    for g, r in zip(got, want):
        assert_rel_close(g, r, dtype, factor=10.0, what=f"gss {wanted}")


def _box_sums(a: torch.Tensor, b: torch.Tensor, window: int) -> torch.Tensor:
    """Box sums of a, b, aa, bb, ab with zero padding, (5, *a.shape), by
    torch's average pooling in float64 (independent of our box passes)."""
    pool = {4: torch.nn.functional.avg_pool2d, 5: torch.nn.functional.avg_pool3d}[a.dim()]
    n = window ** (a.dim() - 2)
    fields = [a, b, a * a, b * b, a * b]
    return torch.stack([pool(f.double(), window, 1, window // 2, count_include_pad=True) * n for f in fields])


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("ns", ["gemini", "gemini_emulated"])
def test_local_ncc_kept_sums(ns, dtype, ndim):
    """The forward keeps the box sums that the backward reads: they equal an
    independent computation, are empty unless asked for, are left unchanged
    by the backward (a second backward of the same graph gives the same
    gradients), and a forward that kept none (a direct call of the op) gets
    the same gradients through autograd."""
    ops = getattr(torch.ops, ns)
    spatial = (11, 13) if ndim == 2 else (7, 9, 12)
    a, b = randn((2, 1, *spatial), dtype, 31), randn((2, 1, *spatial), dtype, 32)
    out, sums = ops.local_ncc(a, b, 5, True, 1e-5, True, False)
    assert sums.shape == (5, *a.shape) and sums.dtype == dtype
    expected = _box_sums(a, b, 5)
    assert_rel_close(sums, expected, dtype, what="kept sums")
    assert ops.local_ncc(a, b, 5, True, 1e-5, False, False)[1].numel() == 0
    assert torch.equal(ops.local_ncc(a, b, 5, True, 1e-5, False, False)[0], out)
    kept_before = sums.clone()
    w = randn(a.shape, dtype, 33)
    la, lb = leaf(a), leaf(b)
    cc = ops.local_ncc(la, lb, 5, True, 1e-5, True, False)[0]
    first = torch.autograd.grad((cc * w).sum(), (la, lb), retain_graph=True)
    second = torch.autograd.grad((cc * w).sum(), (la, lb))
    for g1, g2 in zip(first, second):
        assert torch.equal(g1, g2)
    direct = ops.local_ncc_backward(w, a, b, sums, 5, True, 1e-5, True, True)
    assert torch.equal(sums, kept_before)
    la, lb = leaf(a), leaf(b)
    unkept = torch.autograd.grad((ops.local_ncc(la, lb, 5, True, 1e-5, False, False)[0] * w).sum(), (la, lb))
    for g1, g2, g3 in zip(first, unkept, direct):
        assert torch.equal(g1, g2) and torch.equal(g1, g3)
    ra, rb = leaf(a), leaf(b)
    ref = torch.autograd.grad((reference.local_ncc_map(ra, rb, 5) * w).sum(), (ra, rb))
    for g, r in zip(first, ref):
        assert_rel_close(g, r, dtype, what="gradient from kept sums")


def test_second_outputs_take_no_gradient():
    """The ops' second outputs (the NCC's kept sums, the integration's
    checkpoints, GSS's mask) are non-differentiable, and autograd fills no
    zero gradient for them (set_materialize_grads(False)): a backward
    without it filled 5 MB per NCC call at 64^3."""
    a, b = leaf(randn((1, 1, 6, 7, 8), torch.float32, 34)), leaf(randn((1, 1, 6, 7, 8), torch.float32, 35))
    v = leaf(random_ddf(1, 3, (6, 7, 8), torch.float32, 36, 1.0))
    fm, ff = leaf(randn((1, 4, 5, 6, 7), torch.float32, 37)), randn((1, 4, 5, 6, 7), torch.float32, 38)
    ddf = leaf(random_ddf(1, 3, (5, 6, 7), torch.float32, 39, 1.0))
    outputs = (
        torch.ops.gemini.local_ncc(a, b, 3, True, 1e-5, True, False),
        torch.ops.gemini.integrate_velocity_with_fields(v, 5, 1, "zeros"),
        torch.ops.gemini.gss(fm, ff, ddf, 1e-8, 1.0, 1.0, 1.0, False),
        torch.ops.gemini.gss(fm, ff, ddf, 1e-8, 1.0, 1.0, 1.0, True),
    )
    for first, second in outputs:
        assert first.requires_grad and not second.requires_grad
    mask = torch.ones((1, 1, 5, 6, 7))
    loss = (
        gemini_ops.local_ncc(a, b, 3)
        + gemini_ops.integrate_velocity(v, 5).square().mean()
        + gemini_ops.gss_similarity(fm, ff, ddf, mask=mask)
    )
    with torch.profiler.profile(record_shapes=True) as prof:
        loss.backward()
    kept_shapes = ([5, 1, 1, 6, 7, 8], [1, 1, 5, 6, 7]) + tuple([k, 1, 3, 6, 7, 8] for k in range(1, 5))
    for e in prof.events():
        if e.name in ("aten::fill_", "aten::zero_", "aten::zeros", "aten::zeros_like"):
            assert not any(list(s) in kept_shapes for s in e.input_shapes), (e.name, e.input_shapes)
    assert a.grad is not None and v.grad is not None and fm.grad is not None and ddf.grad is not None
