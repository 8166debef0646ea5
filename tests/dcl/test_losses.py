"""gemini_dcl.losses against independent computations (numpy / scipy loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from gemini_dcl.losses import GSSLoss, SegLoss, gvs_loss, segmentation_ce, smoothness_loss, soft_dice_loss
from gemini_ops import warp

SHAPES = {2: (13, 17), 3: (7, 9, 11)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_smoothness_loss_matches_loop(spatial_dims):
    ddf = torch.randn(2, spatial_dims, *SHAPES[spatial_dims], dtype=torch.float64)
    u = ddf.numpy()
    per_axis = []
    for axis in range(spatial_dims):
        n = u.shape[2 + axis]
        total, count = 0.0, 0
        for k in range(n - 1):
            d = np.take(u, k + 1, axis=2 + axis) - np.take(u, k, axis=2 + axis)
            total += float((d**2).sum())
            count += d.size
        per_axis.append(total / count)
    assert smoothness_loss(ddf).item() == pytest.approx(np.mean(per_axis), rel=1e-10)


def _ncc_reference(a: np.ndarray, b: np.ndarray, window: int) -> np.ndarray:
    """Squared local NCC per voxel by box sums with zero padding (scipy)."""
    n = window ** (a.ndim)

    def box(x):
        return ndimage.uniform_filter(x, size=window, mode="constant", cval=0.0) * n

    sa, sb, saa, sbb, sab = box(a), box(b), box(a * a), box(b * b), box(a * b)
    cross = sab - sa * sb / n
    var_a, var_b = saa - sa * sa / n, sbb - sb * sb / n
    return cross**2 / (var_a * var_b + 1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gvs_loss_matches_masked_squared_ncc(spatial_dims):
    s = SHAPES[spatial_dims]
    warped, fixed = torch.rand(2, 1, *s, dtype=torch.float64), torch.rand(2, 1, *s, dtype=torch.float64)
    mask = (torch.rand(2, 1, *s) > 0.3).double()
    cc = np.stack([_ncc_reference(warped[i, 0].numpy(), fixed[i, 0].numpy(), 5) for i in range(2)])
    m = mask[:, 0].numpy()
    expected = 1 - (cc * m).sum() / m.sum()
    assert gvs_loss(warped, fixed, mask, window=5).item() == pytest.approx(expected, rel=1e-8)
    assert gvs_loss(warped, fixed, window=5).item() == pytest.approx(1 - cc.mean(), rel=1e-8)


def test_gss_loss_value_and_gradient_split():
    s = (6, 7, 8)
    fm = torch.randn(1, 4, *s, dtype=torch.float64, requires_grad=True)
    ff = torch.randn(1, 4, *s, dtype=torch.float64, requires_grad=True)
    ddf = (0.8 * torch.randn(1, 3, *s, dtype=torch.float64)).requires_grad_()
    mask = torch.ones(1, 1, *s, dtype=torch.float64)

    # Value: warp the moving features with scipy, cosine along channels.
    coords = np.stack(np.meshgrid(*[np.arange(n) for n in s], indexing="ij")) + ddf.detach()[0].numpy()
    warped = np.stack(
        [ndimage.map_coordinates(c, coords, order=1, mode="grid-constant", cval=0.0) for c in fm.detach()[0].numpy()]
    )
    f = ff.detach()[0].numpy()
    # Sample points outside the volume give zero vectors: cosine 0 (norms clamped at 1e-8).
    norms = np.maximum(np.linalg.norm(warped, axis=0), 1e-8) * np.maximum(np.linalg.norm(f, axis=0), 1e-8)
    cos = (warped * f).sum(0) / norms
    loss = GSSLoss()(fm, ff, ddf, mask)
    assert loss.item() == pytest.approx(1.1 * (1 - cos.mean()), rel=1e-8)

    # Gradients: 0.1 x (features trained, flow detached) + 1 x (flow trained, features detached).
    loss.backward()
    grads = [t.grad.clone() for t in (fm, ff, ddf)]
    for t in (fm, ff, ddf):
        t.grad = None

    def gss(a, b, u):
        return 1 - torch.nn.functional.cosine_similarity(warp(a, u), b, dim=1).mean()

    (0.1 * gss(fm, ff, ddf.detach()) + gss(fm.detach(), ff.detach(), ddf)).backward()
    for mine, ref in zip(grads, (fm.grad, ff.grad, ddf.grad)):
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-9)


def _one_hot_np(labels: np.ndarray, c: int) -> np.ndarray:
    return (np.arange(c)[None, :, None, None] == labels[:, None]).astype(np.float64)


def test_authors_ce_and_dice_match_loops():
    prob = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    target = (torch.rand(2, 3, 5, 6) > 0.5).double()
    p, y = prob.numpy(), target.numpy()
    ce = -np.mean([y[idx] * np.log(p[idx] + 1e-6) for idx in np.ndindex(p.shape)])
    bce = -np.mean([y[i] * np.log(p[i] + 1e-6) + (1 - y[i]) * np.log(1 - p[i] + 1e-6) for i in np.ndindex(p.shape)])
    dices = []
    for b in range(2):
        for c in range(3):
            inter = sum(y[b, c][i] * p[b, c][i] for i in np.ndindex(5, 6))
            den = sum(y[b, c][i] ** 2 + p[b, c][i] ** 2 for i in np.ndindex(5, 6))
            dices.append((2 * inter + 1) / (den + 1))
    assert segmentation_ce(prob, target).item() == pytest.approx(ce, rel=1e-10)
    assert segmentation_ce(prob, target, binary=True).item() == pytest.approx(bce, rel=1e-10)
    assert soft_dice_loss(prob, target).item() == pytest.approx(1 - np.mean(dices), rel=1e-10)


def test_seg_loss_softmax_sigmoid_and_label_maps():
    logits = torch.randn(2, 4, 6, 7, dtype=torch.float64)
    labels = torch.randint(0, 4, (2, 1, 6, 7))
    onehot = torch.from_numpy(_one_hot_np(labels[:, 0].numpy(), 4))
    prob = torch.softmax(logits, 1)
    expected = segmentation_ce(prob, onehot) + 2 * soft_dice_loss(prob, onehot)
    loss = SegLoss("softmax", dice_weight=2.0)
    assert loss(logits, onehot).item() == pytest.approx(expected.item(), rel=1e-10)
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-10)

    multi = (torch.rand(2, 4, 6, 7) > 0.5).double()
    sig = torch.sigmoid(logits)
    expected = segmentation_ce(sig, multi, binary=True) + soft_dice_loss(sig, multi)
    assert SegLoss("sigmoid")(logits, multi).item() == pytest.approx(expected.item(), rel=1e-10)


def test_seg_loss_monai_backend_matches_hand_computation():
    logits = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    labels = torch.randint(0, 3, (2, 1, 5, 6))
    y = torch.from_numpy(_one_hot_np(labels[:, 0].numpy(), 3))
    p = torch.softmax(logits, 1)
    ce = -(y * torch.log_softmax(logits, 1)).sum(1).mean()
    inter, den = (p * y).sum((2, 3)), (p**2).sum((2, 3)) + (y**2).sum((2, 3))
    dice = (1 - (2 * inter + 1e-5) / (den + 1e-5)).mean()
    assert SegLoss("softmax", backend="monai")(logits, labels).item() == pytest.approx((ce + dice).item(), rel=1e-6)


def test_loss_input_errors():
    with pytest.raises(ValueError, match="ddf must have shape"):
        smoothness_loss(torch.zeros(1, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="target .* must have the shape of pred"):
        soft_dice_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="activation must be"):
        SegLoss("relu")
    with pytest.raises(ValueError, match="backend must be"):
        SegLoss(backend="torch")
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 2\]"):
        SegLoss()(torch.zeros(1, 3, 4, 4), torch.full((1, 1, 4, 4), 3))
    with pytest.raises(ValueError, match="logits must have shape"):
        SegLoss()(torch.zeros(3, 4), torch.zeros(3, 4))
