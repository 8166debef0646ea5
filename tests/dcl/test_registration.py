"""gemini_dcl.registration with a stand-in network (independent of gemini_dcl.networks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gemini_ops
from gemini_dcl.losses import gvs_loss
from gemini_dcl.registration import dice_per_class, gvs_value, register, warp_label, warp_label_linear


class TranslationNet(torch.nn.Module):
    """features: the image; flow(A, B): the constant displacement
    ``centroid(A) - centroid(B)``, so that ``warp(A, flow)`` moves A's blob onto B's."""

    def features(self, x):
        return x

    def flow(self, feat_a, feat_b):
        def centroid(f):
            grids = torch.meshgrid(*[torch.arange(n, dtype=f.dtype) for n in f.shape[2:]], indexing="ij")
            w = f.sum(1)
            return torch.stack([(g * w).flatten(1).sum(1) / w.flatten(1).sum(1) for g in grids], 1)

        shift = centroid(feat_a) - centroid(feat_b)  # (B, ndim)
        return shift.view(*shift.shape, *([1] * (feat_a.dim() - 2))).expand(-1, -1, *feat_a.shape[2:]).contiguous()


class FixedFlowNet(torch.nn.Module):
    def __init__(self, ddf):
        super().__init__()
        self.ddf = ddf

    def features(self, x):
        return x

    def flow(self, feat_a, feat_b):
        return self.ddf


def blob_label(shape, centre, radius):
    """(1, 1, *shape) int64: 1 inside a ball, 2 inside its inner half."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, centre)))
    lab = np.where(r <= radius, 1, 0) + np.where(r <= radius / 2, 1, 0)
    return torch.from_numpy(lab)[None, None]


@pytest.mark.parametrize("shape", [(20, 18, 16), (24, 20)])
def test_register_moves_moving_onto_fixed(shape):
    ndim = len(shape)
    centre = np.asarray(shape) / 2
    moving_label = blob_label(shape, centre - 3, 5)
    fixed_label = blob_label(shape, centre + 1, 5)  # the same blob, 4 voxels further along every axis
    moving, fixed = moving_label.float(), fixed_label.float()
    res = register(TranslationNet(), moving, fixed, moving_label, fixed_label)
    assert res.ddf.shape == (1, ndim, *shape)
    torch.testing.assert_close(res.ddf, torch.full_like(res.ddf, -4.0))
    torch.testing.assert_close(res.warped, fixed)
    assert res.warped_label.dtype == torch.int64
    torch.testing.assert_close(res.warped_label, fixed_label)
    torch.testing.assert_close(res.dice, torch.ones(1, 2))
    assert (res.dice_before < 0.5).all()
    torch.testing.assert_close(res.mean_dice, torch.ones(1))
    torch.testing.assert_close(res.mean_dice_linear, torch.ones(1))
    torch.testing.assert_close(res.mean_dice_before, res.dice_before.nanmean(1))
    assert float(res.gvs) < 0.5 * float(res.gvs_before)
    torch.testing.assert_close(res.jacobian, torch.ones(1, 1, *shape))
    assert res.folding_fraction.shape == (1,) and float(res.folding_fraction) == 0.0


def test_register_jacobian_and_folding_of_a_folding_field():
    shape = (12, 14, 10)
    x = torch.arange(shape[0], dtype=torch.float32).view(1, -1, 1, 1).expand(1, *shape)
    ddf = torch.zeros(2, 3, *shape)
    ddf[1, 0] = -2.0 * x[0]  # x -> -x along axis 0: determinant -1 everywhere in sample 1
    image = torch.rand(2, 1, *shape)
    res = register(FixedFlowNet(ddf), image, image)
    torch.testing.assert_close(res.jacobian, gemini_ops.jacobian_determinant(ddf))
    torch.testing.assert_close(res.folding_fraction, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(res.warped, gemini_ops.warp(image, ddf))
    assert res.warped_label is None and res.dice is None


def test_dice_per_class_against_sets():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, (2, 1, 8, 9))
    target = rng.integers(0, 3, (2, 1, 8, 9))
    target[1][target[1] == 2] = 0
    pred[1][pred[1] == 2] = 0  # class 2 absent from sample 1: NaN
    out = dice_per_class(torch.from_numpy(pred), torch.from_numpy(target), 3)
    for b in range(2):
        for c in (1, 2):
            p, t = pred[b] == c, target[b] == c
            expected = 2 * (p & t).sum() / (p.sum() + t.sum()) if p.sum() + t.sum() else np.nan
            np.testing.assert_allclose(out[b, c - 1].item(), expected, rtol=1e-6)
    assert torch.isnan(out[1, 1])


def test_warp_label_keeps_dtype_and_label_set():
    label = torch.randint(0, 4, (1, 1, 10, 12, 8), dtype=torch.uint8)
    ddf = torch.randn(1, 3, 10, 12, 8) * 2
    out = warp_label(label, ddf)
    assert out.dtype == torch.uint8
    assert set(out.unique().tolist()) <= {0, 1, 2, 3}


def test_register_bad_input():
    net = FixedFlowNet(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="moving"):
        register(net, torch.zeros(8, 8), torch.zeros(8, 8))
    with pytest.raises(ValueError, match="same shape"):
        register(net, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="moving_label"):
        register(net, torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), moving_label=torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="net.flow"):
        register(FixedFlowNet(torch.zeros(1, 3, 8, 8)), torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_warp_label_linear_integer_shift_and_half_voxel():
    """An integer shift moves the map exactly (as nearest does); a half-voxel
    shift of a thin stripe keeps the stripe, which nearest sampling can lose
    or widen."""
    label = torch.zeros(1, 1, 12, 10, dtype=torch.int64)
    label[0, 0, 4:8, 3:7] = 1
    label[0, 0, 5:7, 4:6] = 2
    ddf = torch.zeros(1, 2, 12, 10)
    ddf[:, 0] = 2.0
    expected = torch.zeros_like(label)
    expected[0, 0, 2:6, 3:7] = 1
    expected[0, 0, 3:5, 4:6] = 2
    torch.testing.assert_close(warp_label_linear(label, ddf, 3), expected)
    torch.testing.assert_close(warp_label_linear(label, torch.zeros(1, 2, 12, 10), 3), label)
    stripe = torch.zeros(1, 1, 12, 10, dtype=torch.int64)
    stripe[0, 0, 6] = 1
    half = torch.full((1, 2, 12, 10), 0.0)
    half[:, 0] = 0.4
    out = warp_label_linear(stripe, half, 2)
    assert out.sum() == 10 and (out[0, 0, 6] == 1).all()


def test_gvs_value_per_sample_matches_the_loss():
    torch.manual_seed(0)
    fixed = torch.rand(2, 1, 16, 14)
    moving = torch.stack([fixed[0], torch.rand(1, 16, 14)])
    out = gvs_value(moving, fixed)
    assert out.shape == (2,)
    for b in range(2):
        torch.testing.assert_close(out[b], gvs_loss(moving[b : b + 1], fixed[b : b + 1]))
    assert out[0] < 0.01 < 0.5 < out[1]
