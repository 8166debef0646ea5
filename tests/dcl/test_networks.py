"""GEMINI / GVSL networks: shapes, padding, parameter counts, keys, the GVSL
affine geometry against scipy, and input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy.spatial.transform import Rotation

import gemini_ops
from gemini_dcl.networks import GEMINI, GVSL, affine_matrix, affine_to_ddf

CH = (8, 16, 16, 16, 16, 16, 16, 8, 8)
DEF = (8, 8, 8, 8, 8)
SHAPES = {2: (19, 22), 3: (11, 14, 17)}


def small_gemini(spatial_dims: int, **kwargs) -> GEMINI:
    return GEMINI(spatial_dims, channels=CH, deformer_channels=DEF, **kwargs)


def small_gvsl(**kwargs) -> GVSL:
    return GVSL(channels=CH, affine_channels=8, **kwargs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gemini_method_shapes_and_dtypes(spatial_dims, dtype):
    net = small_gemini(spatial_dims, in_channels=2, out_channels=3).to(dtype)
    s = SHAPES[spatial_dims]
    a, b = torch.randn(2, 2, *s, dtype=dtype), torch.randn(2, 2, *s, dtype=dtype)
    fa, fb = net.features(a), net.features(b)
    outputs = {
        "features": (fa, (2, CH[-1], *s)),
        "velocity": (net.velocity(fa, fb), (2, spatial_dims, *s)),
        "flow": (net.flow(fa, fb), (2, spatial_dims, *s)),
        "head": (net.head(fa), (2, 3, *s)),
        "forward": (net(a), (2, 3, *s)),
    }
    for name, (out, shape) in outputs.items():
        assert tuple(out.shape) == shape, name
        assert out.dtype == dtype, name
        assert torch.isfinite(out).all(), name


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flow_integrates_velocity(spatial_dims):
    s = SHAPES[spatial_dims]
    fa, fb = torch.randn(1, CH[-1], *s), torch.randn(1, CH[-1], *s)
    plain = small_gemini(spatial_dims, integration_steps=0)
    torch.testing.assert_close(plain.flow(fa, fb), plain.velocity(fa, fb))
    net = small_gemini(spatial_dims, integration_steps=3)
    torch.testing.assert_close(net.flow(fa, fb), gemini_ops.integrate_velocity(net.velocity(fa, fb), 3))


def _even_pad(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[slice]]:
    """Pad evenly (extra voxel at the end) by hand and return the crop slices."""
    pads, crops = [], []
    for n in x.shape[2:]:
        diff = -n % multiple
        pads.append((diff // 2, diff - diff // 2))
        crops.append(slice(diff // 2, diff // 2 + n))
    flat = [p for pair in reversed(pads) for p in pair]
    return F.pad(x, flat), crops


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_odd_sizes_pad_and_crop_back_exactly(spatial_dims):
    net = small_gemini(spatial_dims).eval()
    x = torch.randn(1, 1, *SHAPES[spatial_dims])
    padded, crops = _even_pad(x, 16)
    assert all(n % 16 == 0 for n in padded.shape[2:])
    feat = net.features(x)
    torch.testing.assert_close(feat, net.features(padded)[(..., *crops)], rtol=1e-5, atol=1e-5)
    # The deformer pads its input to a multiple of 4 the same way.
    pair = torch.cat([feat, feat.flip(-1)], dim=1)
    pair_padded, crops4 = _even_pad(pair, 4)
    direct = net.deformer[0](pair)
    torch.testing.assert_close(direct, net.deformer[0](pair_padded)[(..., *crops4)], rtol=1e-5, atol=1e-5)


def _unet_keys_from_method_md() -> set[str]:
    """The authors' key layout as listed in docs/method.md."""

    def gn_pair(prefix: str, idx: tuple[int, ...]) -> set[str]:
        return {f"{prefix}.{i}.{p}" for i in idx for p in ("weight", "bias")}

    keys = gn_pair("unet.inc.double_conv", (0, 1, 3, 4))
    for i in range(1, 5):
        keys |= gn_pair(f"unet.down{i}.maxpool_conv.1.double_conv", (0, 1, 3, 4))
        keys |= gn_pair(f"unet.up{i}.conv.double_conv", (0, 1, 3, 4))
    return keys


def test_parameter_counts_and_keys_at_default_widths():
    with torch.device("meta"):
        nets = {"gemini3d": GEMINI(3), "gemini2d": GEMINI(2), "gvsl": GVSL()}
    counts = {k: sum(p.numel() for p in n.parameters()) for k, n in nets.items()}
    assert counts == {"gemini3d": 24_080_708, "gemini2d": 8_033_059, "gvsl": 32_440_739}
    unet = _unet_keys_from_method_md()
    assert len(unet) == 72
    wb = ("weight", "bias")
    gemini = unet | {f"deformer.0.Conv{i}.one_conv.{j}.{p}" for i in range(1, 6) for j in (0, 1) for p in wb}
    gemini |= {f"deformer.1.{p}" for p in wb} | {f"res_conv.{i}.{p}" for i in (0, 1, 3) for p in wb}
    for name in ("gemini3d", "gemini2d"):
        assert set(nets[name].state_dict()) == gemini
    assert len(gemini) == 100
    gvsl = unet | {f"{m}.double_conv.{i}.{p}" for m in ("f_conv", "sp_conv") for i in (0, 1, 3, 4) for p in wb}
    gvsl |= {f"{m}.{p}" for m in ("out_flow", "fc_rot", "fc_scl", "fc_trans", "fc_shear") for p in wb}
    gvsl |= {f"res_conv.{i}.{p}" for i in (0, 1, 3) for p in wb}
    assert set(nets["gvsl"].state_dict()) == gvsl and len(gvsl) == 104
    assert tuple(nets["gemini3d"].state_dict()["deformer.1.weight"].shape) == (3, 32, 3, 3, 3)
    assert tuple(nets["gvsl"].state_dict()["f_conv.double_conv.0.weight"].shape) == (256, 1024, 3, 3, 3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_forward_is_scriptable(spatial_dims):
    net = small_gemini(spatial_dims).eval()
    scripted = torch.jit.script(net)
    x = torch.randn(1, 1, *SHAPES[spatial_dims])
    torch.testing.assert_close(scripted(x), net(x))


def test_bad_inputs_give_clear_errors():
    net = small_gemini(3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, C, D, H, W\).*got 4 dims"):
        net(torch.randn(1, 1, 16, 16))
    with pytest.raises(ValueError, match="x must have 1 channels, got 2"):
        net.features(torch.randn(1, 2, 8, 8, 8))
    with pytest.raises(ValueError, match="feat_b must have 8 channels"):
        net.velocity(torch.randn(1, 8, 8, 8, 8), torch.randn(1, 4, 8, 8, 8))
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        GEMINI(4)
    with pytest.raises(ValueError, match="channels must hold 9 widths"):
        GEMINI(3, channels=(8, 16))
    with pytest.raises(ValueError, match="deformer_channels: every width"):
        GEMINI(3, channels=CH, deformer_channels=(8, 8, 4, 8, 8))
    with pytest.raises(ValueError, match="integration_steps"):
        GEMINI(3, channels=CH, deformer_channels=DEF, integration_steps=-1)
    gvsl = small_gvsl()
    with pytest.raises(ValueError, match="moving .* and fixed .* must have the same shape"):
        gvsl(torch.randn(1, 1, 16, 16, 16), torch.randn(1, 1, 16, 16, 8))
    with pytest.raises(ValueError, match="rotation must have shape"):
        affine_matrix(torch.zeros(3), torch.ones(1, 3), torch.zeros(1, 3), torch.zeros(1, 6), (4, 4, 4))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_flow_init(spatial_dims):
    """``small_normal`` starts the last deformer conv at N(0, 1e-5) with zero
    bias (a near-identity deformation); ``kaiming`` (the default) leaves the
    authors' initialisation, the same draws as before the option existed."""
    torch.manual_seed(0)
    kaiming = small_gemini(spatial_dims)
    torch.manual_seed(0)
    small = small_gemini(spatial_dims, flow_init="small_normal")
    conv = small.deformer[1]
    assert torch.count_nonzero(conv.bias) == 0
    assert 0.5e-5 < float(conv.weight.std()) < 1.5e-5 and abs(float(conv.weight.mean())) < 1e-5
    assert float(kaiming.deformer[1].weight.std()) > 1e-2
    for (name, a), b in zip(kaiming.state_dict().items(), small.state_dict().values()):
        assert torch.equal(a, b) == (not name.startswith("deformer.1.")), name
    shape = SHAPES[spatial_dims]
    feat = torch.randn(1, CH[-1], *shape)
    assert float(small.flow(feat, feat.flip(0)).abs().max()) < 1e-2
    with pytest.raises(ValueError, match=r"flow_init must be one of \('kaiming', 'small_normal'\), got 'zeros'"):
        small_gemini(spatial_dims, flow_init="zeros")


def test_gvsl_outputs_batch_and_affine_gradients():
    torch.manual_seed(0)
    net = small_gvsl()
    s = (12, 16, 20)
    moving, fixed = torch.randn(2, 1, *s), torch.randn(2, 1, *s)
    out = net(moving, fixed)
    expected = {"restored": (2, 1, *s), "theta": (2, 3, 4), "affine_ddf": (2, 3, *s), "flow": (2, 3, *s)}
    expected |= {"ddf": (2, 3, *s), "warped": (2, 1, *s)}
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    # Batched: each sample gives what it gives alone (GroupNorm is per sample).
    single = net(moving[1:], fixed[1:])
    for k in out:
        torch.testing.assert_close(out[k][1:], single[k], rtol=1e-4, atol=1e-5)
    (out["warped"] - fixed).square().mean().backward()
    for name in ("fc_rot", "fc_scl", "fc_trans", "fc_shear", "f_conv.double_conv.0", "out_flow"):
        grad = net.get_submodule(name).weight.grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert net.features(moving).shape == (2, CH[-1], *s)
    assert net.head(net.features(moving)).shape == (2, 1, *s)


def test_affine_matrix_matches_independent_construction():
    g = torch.Generator().manual_seed(1)
    rot = (torch.rand(2, 3, generator=g) - 0.5) * 1.2
    scale = 0.75 + 0.5 * torch.rand(2, 3, generator=g)
    trans = torch.randn(2, 3, generator=g) * 0.2
    shear = (torch.rand(2, 6, generator=g) - 0.5) * 0.3
    shape = (9, 14, 21)
    theta = affine_matrix(rot.double(), scale.double(), trans.double(), shear.double(), shape).numpy()
    for b in range(2):
        # Extrinsic x-y-z Euler angles: R = Rz @ Ry @ Rx, in (x, y, z) = (W, H, D) order.
        r = Rotation.from_euler("xyz", rot[b].numpy()).as_matrix()
        sh = np.eye(3)
        for k, (i, j) in enumerate([(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)]):
            sh[i, j] = np.tan(shear[b, k].item())
        m_xyz = sh @ np.diag(scale[b].numpy()) @ r
        perm = np.eye(3)[::-1]  # (x, y, z) <-> (D, H, W)
        np.testing.assert_allclose(theta[b, :, :3], perm @ m_xyz @ perm, atol=1e-6)
        half = (np.array(shape) - 1) / 2
        np.testing.assert_allclose(theta[b, :, 3], trans[b].numpy()[::-1] * half, atol=1e-6)


def _scipy_affine(image: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Reference: output[p] = image[c + A (p - c) + t], trilinear, zeros outside."""
    centre = (np.array(image.shape) - 1) / 2
    lin, t = theta[:, :3], theta[:, 3]
    offset = centre + t - lin @ centre
    return ndimage.affine_transform(image, lin, offset=offset, order=1, mode="grid-constant", cval=0.0)


def test_gvsl_affine_geometry_matches_scipy_on_non_cubic_volume():
    torch.manual_seed(2)
    s = (10, 15, 22)
    image = torch.randn(1, 1, *s, dtype=torch.float64)
    # A large rotation about one axis: rigid in voxel space only if built there.
    theta = affine_matrix(
        torch.tensor([[0.0, 0.0, 0.5]]), torch.ones(1, 3), torch.tensor([[0.1, -0.2, 0.05]]), torch.zeros(1, 6), s
    ).double()
    lin = theta[0, :, :3].numpy()
    np.testing.assert_allclose(lin @ lin.T, np.eye(3), atol=1e-6)
    ours = gemini_ops.warp(image, affine_to_ddf(theta, s))
    np.testing.assert_allclose(ours[0, 0].numpy(), _scipy_affine(image[0, 0].numpy(), theta[0].numpy()), atol=1e-6)

    # The network's own affine, end to end: a zero deformable flow leaves only it.
    net = small_gvsl(integration_steps=0)
    with torch.no_grad():
        net.out_flow.weight.zero_()
        net.out_flow.bias.zero_()
        out = net(image.float(), torch.randn(1, 1, *s))
    theta_net = out["theta"][0].double().numpy()
    expected = _scipy_affine(image[0, 0].numpy(), theta_net)
    np.testing.assert_allclose(out["warped"][0, 0].double().numpy(), expected, atol=1e-4)
    torch.testing.assert_close(out["ddf"], out["affine_ddf"])


def test_gvsl_total_ddf_composes_flow_then_affine():
    torch.manual_seed(3)
    net = small_gvsl(integration_steps=0)
    s = (8, 12, 16)
    out = net(torch.randn(1, 1, *s), torch.randn(1, 1, *s))
    # ddf(x) = affine_ddf(x + flow(x)) + flow(x); interior only, where bilinear
    # sampling of the (linear) affine field is exact.
    composed = gemini_ops.warp(out["affine_ddf"], out["flow"], padding_mode="border") + out["flow"]
    pts = torch.stack(torch.meshgrid(*[torch.arange(n) for n in s], indexing="ij"))[None] + out["flow"]
    inside = torch.stack([(pts[:, i] >= 0) & (pts[:, i] <= n - 1) for i, n in enumerate(s)], 1).all(1, keepdim=True)
    assert inside.sum() > 0.5 * inside.numel()
    diff = (composed - out["ddf"]).abs() * inside
    assert diff.max() < 1e-4
