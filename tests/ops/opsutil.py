"""Helpers of the gemini_ops tests: tolerances, random inputs, layouts."""

from __future__ import annotations

import torch

import gemini_ops

BACKENDS = ["compiled", "emulated"]
DTYPES = [torch.float32, torch.float64]

# Relative tolerances of the issue: error relative to the largest magnitude of
# the reference (see ``assert_rel_close``).
RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def have(backend: str) -> bool:
    return bool(gemini_ops.backend_info()[backend])


def rel_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """``max|actual - expected| / max(max|expected|, floor)``, in float64.

    Relative to the largest magnitude of the reference rather than elementwise:
    warped values, gradients and correlations pass through zero, where an
    elementwise relative error is meaningless, while rounding errors of the
    kernels scale with the magnitudes that enter the sums (at most the
    largest one). ``floor`` is the natural scale of the quantity when the
    reference may be identically ~0 (a correlation is O(1); a 1-voxel NCC
    window gives 0 up to rounding). Both NaN in the same places count as equal;
    a NaN in only one of them is an infinite error.
    """
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    assert a.shape == e.shape, f"shape {tuple(a.shape)} != reference {tuple(e.shape)}"
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if not torch.equal(nan_a, nan_e):
        return float("inf")
    a, e = a[~nan_a], e[~nan_e]
    if a.numel() == 0:
        return 0.0
    err = (a - e).abs().max().item()
    scale = max(e.abs().max().item(), floor)
    if scale == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / scale


def assert_rel_close(actual, expected, dtype: torch.dtype, *, floor: float = 0.0, factor: float = 1.0, what=""):
    """Fail unless ``rel_error(actual, expected) <= factor * RTOL[dtype]``."""
    tol = factor * RTOL[dtype]
    err = rel_error(actual, expected, floor)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.3g} ({dtype})"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, dtype, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=gen(seed), dtype=torch.float64).mul_(scale).to(dtype)


def avoid_ties(ddf: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """Move displacements whose fractional part is within ``margin`` of 0 or
    0.5 away from it: there nearest rounding (and the GSS sample mask) and
    the derivative of linear interpolation are discontinuous, and two correct
    implementations may legitimately disagree by rounding alone."""
    frac = ddf - torch.floor(ddf)
    near = ((frac - 0.5).abs() < margin) | (frac < margin) | (frac > 1 - margin)
    return torch.where(near, ddf + 2.5 * margin, ddf)


def random_ddf(batch, ndim, spatial, dtype, seed, scale=2.5):
    """A displacement field with many samples outside the volume (|u| ~ scale voxels)."""
    return avoid_ties(randn((batch, ndim, *spatial), torch.float64, seed, scale)).to(dtype)


def smooth_field(batch, ndim, spatial, seed, max_abs=2.0, sigma=1.5, dtype=torch.float64):
    """Gaussian-smoothed noise rescaled so that max |v| == max_abs (voxels)."""
    noise = randn((batch, ndim, *spatial), torch.float64, seed)
    radius = int(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    out = noise
    conv = torch.nn.functional.conv2d if ndim == 2 else torch.nn.functional.conv3d
    for axis in range(ndim):
        shape = [1] * ndim
        shape[axis] = -1
        w = k.reshape(1, 1, *shape).repeat(ndim, 1, *([1] * ndim))
        pad = [0] * ndim
        pad[axis] = radius
        out = conv(out, w, padding=tuple(pad), groups=ndim)
    out = out * (max_abs / out.abs().max())
    return out.to(dtype)


LAYOUTS = ["contiguous", "sliced", "transposed", "channels_last"]


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """The same values as ``t`` in a (usually) non-contiguous view."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "sliced":  # every other element of a larger buffer along the last axis, offset 1
        big = torch.zeros((*t.shape[:-1], 2 * t.shape[-1] + 1), dtype=t.dtype)
        view = big[..., 1::2]
        view.copy_(t)
        assert not view.is_contiguous()
        return view
    if kind == "transposed":  # the last two spatial axes swapped in memory
        view = t.transpose(-1, -2).contiguous().transpose(-1, -2)
        assert not view.is_contiguous() or t.shape[-1] == 1 or t.shape[-2] == 1
        return view
    if kind == "channels_last":  # channels last in memory
        perm = [0, *range(2, t.dim()), 1]
        inv = [0, t.dim() - 1, *range(1, t.dim() - 1)]
        return t.permute(*perm).contiguous().permute(*inv)
    raise ValueError(kind)


def ncc_inputs(batch: int, spatial: tuple, dtype, seed: int):
    """Two correlated 2-channel images (b = a + noise) and a random mask."""
    a = randn((batch, 2, *spatial), dtype, seed)
    b = (a.double() + randn(a.shape, torch.float64, seed + 1, 0.7)).to(dtype)
    mask = (torch.rand((batch, 1, *spatial), generator=gen(seed)) > 0.5).to(dtype)
    return a, b, mask


def spatial_shape(ndim: int, seed: int) -> tuple:
    """A small, non-cubic spatial shape (5..9 a side)."""
    g = gen(seed)
    return tuple(int(s) for s in torch.randint(5, 10, (ndim,), generator=g))


def gradcheck_kwargs(backend: str) -> dict:
    """The emulated CUDA kernels scatter with atomics: sums are order dependent."""
    kw = {"eps": 1e-6, "atol": 1e-8, "rtol": 1e-6}
    if backend == "emulated":
        kw["nondet_tol"] = 1e-12
    return kw


# The CPU kernels' instruction sets (GEMINI_CPU_CAPABILITY).
CPU_PATHS = ("default", "avx2", "avx512")


def supported_cpu_paths() -> list:
    """The instruction sets this CPU runs (a request above them is capped)."""
    if not have("compiled"):
        return []
    ops = torch.ops.gemini
    before = ops.cpu_capability()
    try:
        return [p for p in CPU_PATHS if ops.set_cpu_capability(p) == p]
    finally:
        ops.set_cpu_capability(before)


def weighted_grads(out: torch.Tensor, inputs, seed: int):
    """Gradients of <out, w> for a random upstream gradient w, the same
    values for every dtype (w = 1.7 for a 0-dim out: not 1, so a backward
    that drops the upstream gradient fails); None for an input out does not
    depend on."""
    w = randn(out.shape, torch.float64, seed).to(out.dtype) if out.dim() else torch.tensor(1.7, dtype=out.dtype)
    return torch.autograd.grad((out * w).sum(), inputs, allow_unused=True)


def assert_fwd_bwd_close(out, ref, inputs, ref_inputs, dtype, factor=1.0, what=""):
    """``out`` and the gradients to ``inputs`` against the reference's."""
    assert_rel_close(out, ref, dtype, factor=factor, what=what + " forward")
    for k, (g, r) in enumerate(zip(weighted_grads(out, inputs, 11), weighted_grads(ref, ref_inputs, 11))):
        assert_rel_close(g, r, dtype, factor=factor, what=f"{what} grad {k}")
