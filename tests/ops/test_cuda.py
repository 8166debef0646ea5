"""CUDA kernels vs the CPU kernels vs the reference, every op and dtype,
values and gradients. Skipped without a GPU (none on this project's machines
and CI: the CUDA sources are exercised there through the emulated backend)."""

from __future__ import annotations

import pytest
import torch
from opsutil import avoid_ties, rel_error

import gemini_ops
from gemini_ops import reference

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; none on this machine"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# value and gradient tolerances, relative to the largest magnitude of the float64 result
# computed from the same (rounded) inputs; half types accumulate in float32 but store
# inputs and outputs in 11 (float16) or 8 (bfloat16) significant bits
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (4e-3, 1e-2),
    torch.bfloat16: (3e-2, 6e-2),
}
CPU_DTYPE = {
    torch.float64: torch.float64,
    torch.float32: torch.float32,
    torch.float16: torch.float64,
    torch.bfloat16: torch.float64,
}


def _rand(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _run(fn, inputs, device, dtype, seed):
    """fn(*inputs) on ``device`` in ``dtype``: (value, grads), moved to CPU float64."""
    xs = [t.to(device=device, dtype=dtype).requires_grad_() for t in inputs]
    out = fn(*xs)
    w = _rand(out.shape, torch.float64, seed).to(device=device, dtype=dtype)
    grads = torch.autograd.grad((out * w).sum(), xs, allow_unused=True)
    to64 = lambda t: None if t is None else t.detach().to("cpu", torch.float64)  # noqa: E731
    return to64(out), [to64(g) for g in grads]


def _compare(name, fn_ops, fn_ref, inputs, dtype, seed, floor=0.0, grad_mask=None):
    """CUDA (dtype) vs CPU kernels (dtype, or float64 for the half types) vs the
    reference in float64, from the same inputs rounded to ``dtype``."""
    rounded = [t.to(dtype).to(torch.float64) for t in inputs]
    exact = _run(fn_ref, rounded, "cpu", torch.float64, seed)
    cuda = _run(fn_ops, rounded, "cuda", dtype, seed)
    cpu = _run(fn_ops, rounded, "cpu", CPU_DTYPE[dtype], seed)
    vtol, gtol = TOL[dtype]
    for label, got in (("cuda", cuda), ("cpu", cpu)):
        tol_v = vtol if label == "cuda" else TOL[CPU_DTYPE[dtype]][0]
        tol_g = gtol if label == "cuda" else TOL[CPU_DTYPE[dtype]][1]
        err = rel_error(got[0], exact[0], floor)
        assert err <= tol_v, f"{name} {label} {dtype}: value error {err:.3g} > {tol_v:.3g}"
        for k, (g, e) in enumerate(zip(got[1], exact[1])):
            if grad_mask is not None and not grad_mask[k]:
                continue
            err = rel_error(g, e)
            assert err <= tol_g, f"{name} {label} {dtype}: gradient {k} error {err:.3g} > {tol_g:.3g}"
    # CUDA and CPU kernels agree at least as well as each agrees with the reference
    err = rel_error(cuda[0], cpu[0], floor)
    assert err <= 2 * vtol, f"{name}: cuda vs cpu {err:.3g}"


SHAPES = [(2, 3, 9, 7), (1, 2, 6, 7, 5)]


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_warp(dtype, mode, padding_mode, shape):
    ndim = len(shape) - 2
    image = _rand(shape, torch.float64, 1)
    ddf = avoid_ties(_rand((shape[0], ndim, *shape[2:]), torch.float64, 2, 2.5), margin=0.05)

    def ops(i, d):
        return gemini_ops.warp(i, d, mode, padding_mode)

    def ref(i, d):
        return reference.warp(i, d, mode, padding_mode)

    _compare(f"warp {mode}/{padding_mode}", ops, ref, [image, ddf], dtype, 3, grad_mask=[True, mode == "bilinear"])


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("steps", [0, 1, 7])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_integrate(dtype, steps, shape):
    ndim = len(shape) - 2
    velocity = _rand((shape[0], ndim, *shape[2:]), torch.float64, 4, 2.0)
    for padding_mode in ("zeros", "border"):
        _compare(
            f"integrate {steps} {padding_mode}",
            lambda v, p=padding_mode: gemini_ops.integrate_velocity(v, steps, p),
            lambda v, p=padding_mode: reference.integrate_velocity(v, steps, p),
            [velocity],
            dtype,
            5,
        )


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_gss(dtype, reduction, shape):
    ndim = len(shape) - 2
    fm, ff = _rand(shape, torch.float64, 6), _rand(shape, torch.float64, 7)
    ddf = avoid_ties(_rand((shape[0], ndim, *shape[2:]), torch.float64, 8, 1.5), margin=0.05)

    def ops(a, b, d):
        return gemini_ops.gss_similarity(a, b, d, None, reduction, grad_scales=(0.1, 0.1, 1.0))

    def ref(a, b, d):
        # the functional's reference path applies the same gradient scales
        return gemini_ops.gss_similarity(a, b, d, None, reduction, grad_scales=(0.1, 0.1, 1.0), backend="reference")

    floor = 1.0 if reduction == "mean" else 0.0
    _compare(f"gss {reduction}", ops, ref, [fm, ff, ddf], dtype, 9, floor=floor)


@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d"])
@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("window", [3, 9])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_local_ncc(dtype, window, squared, shape):
    a = _rand(shape, torch.float64, 10)
    b = a + _rand(shape, torch.float64, 11, 0.7)
    _compare(
        f"ncc w={window}",
        lambda x, y: gemini_ops.local_ncc(x, y, window, None, squared, reduction="none"),
        lambda x, y: reference.local_ncc_map(x, y, window, squared, 1e-5),
        [a, b],
        dtype,
        12,
        floor=1.0,
    )


def test_cuda_backend_info_and_devices():
    info = gemini_ops.backend_info()
    assert info["cuda_available"] and info["cuda"], "a GPU is here but the CUDA kernels are not compiled in"
    x = torch.randn(1, 1, 5, 6, device="cuda")
    d = torch.zeros(1, 2, 5, 6)
    with pytest.raises(ValueError, match="ddf is on cpu"):
        gemini_ops.warp(x, d)
    with pytest.raises(ValueError, match="emulated backend runs CPU tensors only"):
        gemini_ops.warp(x, d.cuda(), backend="emulated")
    # the output lives on the input's device, also on a non-default stream
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        out = gemini_ops.warp(x, d.cuda())
    s.synchronize()
    assert out.device == x.device and torch.equal(out, x)
