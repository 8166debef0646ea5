"""The CPU's per-voxel code against the reference: warp, velocity
integration and GSS take it for planes of 2^29 voxels or more (the row
kernels index a plane with int32 offsets), 2 GiB a channel, which no test
can afford. ``torch.ops.gemini.set_row_kernel_voxels`` lowers that limit, so
these small planes run it: forward and backward, the GSS mean summed row by
row, 2D and 3D, float32 and float64, on one and two threads (the planes
hold more than the 4096 voxels below which the kernels run on one thread),
on every instruction set the CPU has (the per-voxel code is compiled for
each)."""

import pytest
import torch
from opsutil import assert_fwd_bwd_close, avoid_ties, have, randn, random_ddf, smooth_field

import gemini_ops
from gemini_ops import reference

pytestmark = pytest.mark.skipif(not have("compiled"), reason="needs the compiled library")

LIMIT = 2**29
SHAPES = {2: (64, 67), 3: (9, 16, 29)}


@pytest.fixture
def per_voxel(path):
    """Every plane takes the per-voxel code, on the instruction set `path`."""
    ops = torch.ops.gemini
    assert ops.set_row_kernel_voxels(1) == 1
    yield path
    ops.set_row_kernel_voxels(LIMIT)


def _leaves(tensors):
    return [t.clone().requires_grad_() for t in tensors], [t.double().requires_grad_() for t in tensors]


def test_limit_default_and_checked():
    ops = torch.ops.gemini
    assert ops.row_kernel_voxels() == LIMIT
    for bad in (0, -3, LIMIT + 1):
        with pytest.raises(ValueError, match=r"set_row_kernel_voxels: voxels must be in \[1, 536870912\]"):
            ops.set_row_kernel_voxels(bad)
    assert ops.row_kernel_voxels() == LIMIT


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("channels", [1, 3])
def test_warp(per_voxel, threads, ndim, dtype, padding, channels):
    """On two threads, one channel (and three, not a multiple of the
    threads): both gradients in one pass, each thread scattering into its
    own buffer."""
    spatial = SHAPES[ndim]
    image, ddf = randn((2, channels, *spatial), dtype, 1), random_ddf(2, ndim, spatial, dtype, 2)
    (image, ddf), refs = _leaves([image, ddf])
    out = gemini_ops.warp(image, ddf, "bilinear", padding)
    ref = reference.warp(*refs, "bilinear", padding)
    assert_fwd_bwd_close(out, ref, (image, ddf), refs, dtype, 4.0, f"{per_voxel} warp")


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("padding", ["zeros", "border"])
def test_integrate(per_voxel, threads, ndim, padding):
    """3D float32 included: its squaring steps leave the interleaved levels
    for warps of the field by itself."""
    spatial = SHAPES[ndim]
    (v,), (rv,) = _leaves([smooth_field(1, ndim, spatial, 3, max_abs=3.0, dtype=torch.float32)])
    out = gemini_ops.integrate_velocity(v, 4, padding)
    ref = reference.integrate_velocity(rv, 4, padding)
    assert_fwd_bwd_close(out, ref, (v,), (rv,), torch.float32, 20.0, f"{per_voxel} integrate")


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [3, 16])
def test_gss(per_voxel, threads, ndim, dtype, channels):
    """The map and the fused mean (the sums of each row of voxels added in
    row order); 16 float32 channels would take the channel-innermost row
    kernels below the limit."""
    spatial = SHAPES[ndim]
    ddf = avoid_ties(randn((2, ndim, *spatial), torch.float64, 6, 2.5)).to(dtype)
    fm, ff = randn((2, channels, *spatial), dtype, 7), randn((2, channels, *spatial), dtype, 8)
    (fm, ff, ddf), refs = _leaves([fm, ff, ddf])
    mask = reference.sample_mask(refs[2])
    out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
    assert_fwd_bwd_close(out, reference.gss_map(*refs) * mask, (fm, ff, ddf), refs, dtype, 10.0, f"{per_voxel} gss map")
    mean = gemini_ops.gss_similarity(fm, ff, ddf)
    assert mean.dim() == 0
    ref_mean = (reference.gss_map(*refs) * mask).sum() / mask.sum()
    assert_fwd_bwd_close(mean, ref_mean, (fm, ff, ddf), refs, dtype, 10.0, f"{per_voxel} gss mean")


@pytest.mark.parametrize("wanted", ["ddf", "ddf+fixed", "ddf+moving", "moving", "fixed"])
def test_gss_gradient_subsets(per_voxel, threads, wanted):
    """Only the gradients asked for are computed (no moving-feature
    scatter without its gradient); one voxel's fixed features are all zero,
    where the cosine's gradient takes its eps branch."""
    spatial = SHAPES[3]
    ddf = avoid_ties(randn((1, 3, *spatial), torch.float64, 9, 2.0))
    fm, ff = randn((1, 4, *spatial), torch.float64, 10), randn((1, 4, *spatial), torch.float64, 11)
    ff[:, :, 4, 8, 14] = 0
    grad_of = {"moving": fm, "fixed": ff, "ddf": ddf}
    for w in wanted.split("+"):
        grad_of[w].requires_grad_()
    leaves = [t for t in (fm, ff, ddf) if t.requires_grad]
    refs = [t.detach().clone().requires_grad_(t.requires_grad) for t in (fm, ff, ddf)]
    ref_leaves = [r for r in refs if r.requires_grad]
    out = gemini_ops.gss_similarity(fm, ff, ddf, reduction="none")
    ref = reference.gss_map(*refs) * reference.sample_mask(refs[2])
    assert_fwd_bwd_close(out, ref, leaves, ref_leaves, torch.float64, 10.0, f"{per_voxel} gss {wanted}")
