"""The authors' checkpoints: conversion round trip against an independently
written network with the authors' key layout (from docs/method.md), and
load_pretrained_backbone."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gemini_dcl import load_pretrained_backbone
from gemini_dcl.convert import convert_checkpoint, main, network_from_checkpoint
from gemini_dcl.networks import GEMINI, GVSL

CH = (8, 16, 16, 16, 16, 16, 16, 8, 8)
DEF = (8, 16, 8, 16, 8)
SHAPES = {2: (18, 21), 3: (10, 13, 17)}


# --- the authors' layout, written from method.md for this test only ----------


def _cgl(nd: int, cin: int, cout: int) -> list[nn.Module]:
    conv = nn.Conv3d if nd == 3 else nn.Conv2d
    return [conv(cin, cout, 3, padding=1), nn.GroupNorm(cout // 8, cout), nn.LeakyReLU(0.2)]


class _Double(nn.Module):
    def __init__(self, nd, cin, cout):
        super().__init__()
        self.double_conv = nn.Sequential(*_cgl(nd, cin, cout), *_cgl(nd, cout, cout))

    def forward(self, x):
        return self.double_conv(x)


class _One(nn.Module):
    def __init__(self, nd, cin, cout):
        super().__init__()
        self.one_conv = nn.Sequential(*_cgl(nd, cin, cout))


class _Down(nn.Module):
    def __init__(self, nd, cin, cout):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool3d(2) if nd == 3 else nn.MaxPool2d(2), _Double(nd, cin, cout))


class _Up(nn.Module):
    def __init__(self, nd, cin, cout):
        super().__init__()
        self.conv = _Double(nd, cin, cout)


def _up(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 5:
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def _pad(x: torch.Tensor, m: int):
    """Authors' padding: diff = (m - n % m) % m per axis, diff // 2 before."""
    sizes = x.shape[2:]
    diffs = [(m - n % m) % m for n in sizes]
    flat = []
    for d in reversed(diffs):
        flat += [d // 2, d - d // 2]
    region = tuple(slice(d // 2, d // 2 + n) for d, n in zip(diffs, sizes))
    return F.pad(x, flat), (slice(None), slice(None), *region)


class _UNetBase(nn.Module):
    def __init__(self, nd, cin, c):
        super().__init__()
        self.inc = _Double(nd, cin, c[0])
        for i in range(1, 5):
            setattr(self, f"down{i}", _Down(nd, c[i - 1], c[i]))
        for i, (a, b, o) in enumerate([(c[4], c[3], c[5]), (c[5], c[2], c[6]), (c[6], c[1], c[7]), (c[7], c[0], c[8])]):
            setattr(self, f"up{i + 1}", _Up(nd, a + b, o))

    def forward(self, x):
        x, region = _pad(x, 16)
        skips = [self.inc.double_conv(x)]
        for i in range(1, 5):
            skips.append(getattr(self, f"down{i}").maxpool_conv(skips[-1]))
        y = skips[4]
        for i in range(1, 5):
            y = getattr(self, f"up{i}").conv.double_conv(torch.cat([skips[4 - i], _up(y)], 1))
        return skips[4], y[region]


class _Shallow(nn.Module):
    def __init__(self, nd, cin, c):
        super().__init__()
        self.Conv1, self.Conv2, self.Conv3 = _One(nd, cin, c[0]), _One(nd, c[0], c[1]), _One(nd, c[1], c[2])
        self.Conv4, self.Conv5 = _One(nd, c[2] + c[1], c[3]), _One(nd, c[3] + c[0], c[4])

    def forward(self, x):
        x, region = _pad(x, 4)
        pool = F.max_pool3d if x.dim() == 5 else F.max_pool2d
        x1 = self.Conv1.one_conv(x)
        x2 = self.Conv2.one_conv(pool(x1, 2))
        x3 = self.Conv3.one_conv(pool(x2, 2))
        x4 = self.Conv4.one_conv(torch.cat([_up(x3), x2], 1))
        return self.Conv5.one_conv(torch.cat([_up(x4), x1], 1))[region]


def _res_conv(nd: int, cin: int, cout: int) -> nn.Sequential:
    conv = nn.Conv3d if nd == 3 else nn.Conv2d
    return nn.Sequential(conv(cin, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.LeakyReLU(0.2), conv(16, cout, 1))


class AuthorsGEMINI(nn.Module):
    def __init__(self, nd, cin, cout, c, dc, backbone_name="unet"):
        super().__init__()
        self.backbone_name = backbone_name
        setattr(self, backbone_name, _UNetBase(nd, cin, c))
        conv = nn.Conv3d if nd == 3 else nn.Conv2d
        self.deformer = nn.Sequential(_Shallow(nd, 2 * c[-1], dc), conv(dc[-1], nd, 3, padding=1))
        self.res_conv = _res_conv(nd, c[-1], cout)
        _randomise(self)

    def features(self, x):
        return getattr(self, self.backbone_name)(x)[1]

    def flow(self, fa, fb):
        return self.deformer(torch.cat([fa, fb], 1))


class AuthorsGVSL(nn.Module):
    def __init__(self, cin, cout, c, ca):
        super().__init__()
        self.unet = _UNetBase(3, cin, c)
        self.f_conv = _Double(3, 2 * c[4], ca)
        self.sp_conv = _Double(3, 2 * c[-1], 16)
        self.res_conv = _res_conv(3, c[-1], cout)
        self.out_flow = nn.Conv3d(16, 3, 3, padding=1)
        self.fc_rot, self.fc_scl, self.fc_trans = nn.Linear(ca, 3), nn.Linear(ca, 3), nn.Linear(ca, 3)
        self.fc_shear = nn.Linear(ca, 6)
        _randomise(self)

    def affine_parameters(self, gm, gf):
        x = self.f_conv.double_conv(torch.cat([gm, gf], 1)).mean(dim=(2, 3, 4))
        return (
            torch.clamp(self.fc_rot(x), -1, 1) * (math.pi / 9),
            torch.clamp(self.fc_scl(x), -1, 1) * 0.25 + 1,
            self.fc_trans(x),
            torch.clamp(self.fc_shear(x), -1, 1) * (math.pi / 18),
        )

    def spatial(self, fm, ff):
        return self.out_flow(self.sp_conv.double_conv(torch.cat([fm, ff], 1)))


def _randomise(module: nn.Module) -> None:
    """Non-trivial GroupNorm affine too, so a wrong group count or order shows."""
    g = torch.Generator().manual_seed(torch.randint(0, 2**31, ()).item())
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() == 1 else 0.1))


# --- tests ---------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gemini_round_trip_matches_authors_layout(tmp_path, spatial_dims, legacy):
    authors = AuthorsGEMINI(spatial_dims, 2, 3, CH, DEF).eval()
    src, dst = tmp_path / "GEMINI_epoch_1000.pth", tmp_path / "converted.pt"
    torch.save(authors.state_dict(), src, _use_new_zipfile_serialization=not legacy)
    variant = f"gemini{spatial_dims}d"
    assert main([str(src), str(dst), "--variant", variant]) == 0

    checkpoint = torch.load(dst, weights_only=True)
    assert checkpoint["config"] == {
        "network": "GEMINI",
        "spatial_dims": spatial_dims,
        "in_channels": 2,
        "out_channels": 3,
        "channels": list(CH),
        "deformer_channels": list(DEF),
        "integration_steps": 0,
    }
    ours = GEMINI(**{k: v for k, v in checkpoint["config"].items() if k != "network"}).eval()
    ours.load_state_dict(checkpoint["state_dict"], strict=True)

    a, b = torch.randn(2, 2, *SHAPES[spatial_dims]), torch.randn(2, 2, *SHAPES[spatial_dims])
    with torch.no_grad():
        fa, fb = authors.features(a), authors.features(b)
        torch.testing.assert_close(ours.features(a), fa, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.velocity(fa, fb), authors.flow(fa, fb), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.flow(fa, fb), authors.flow(fa, fb), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.head(fa), authors.res_conv(fa), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(network_from_checkpoint(dst).eval()(a), authors.res_conv(fa), rtol=1e-5, atol=1e-5)


def test_gvsl_round_trip_matches_authors_layout(tmp_path):
    authors = AuthorsGVSL(1, 1, CH, 16).eval()
    src = tmp_path / "GVSL_epoch_1000.pth"
    torch.save(authors.state_dict(), src)
    checkpoint = convert_checkpoint(src, tmp_path / "gvsl.pt", variant="gvsl3d")
    assert checkpoint["config"]["affine_channels"] == 16
    ours = network_from_checkpoint(tmp_path / "gvsl.pt").eval()
    assert isinstance(ours, GVSL)
    m, f = torch.randn(1, 1, 16, 12, 20), torch.randn(1, 1, 16, 12, 20)
    with torch.no_grad():
        (gm, fm), (gf, ff) = authors.unet(m), authors.unet(f)
        for mine, theirs in zip(ours.encode(m), (gm, fm)):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        for mine, theirs in zip(ours.affine_parameters(gm, gf), authors.affine_parameters(gm, gf)):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.deformable(fm, ff), authors.spatial(fm, ff), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.head(ff), authors.res_conv(ff), rtol=1e-5, atol=1e-5)


def test_ddp_prefix_backbone_alias_and_given_widths(tmp_path):
    authors = AuthorsGEMINI(3, 1, 1, CH, DEF, backbone_name="backbone").eval()
    state = {"module." + k: v for k, v in authors.state_dict().items()}
    checkpoint = convert_checkpoint(state, variant="gemini3d", channels=CH, deformer_channels=DEF, integration_steps=7)
    assert all(k.startswith(("unet.", "deformer.", "res_conv.")) for k in checkpoint["state_dict"])
    assert checkpoint["config"]["integration_steps"] == 7
    ours = network_from_checkpoint(checkpoint).eval()
    x = torch.randn(1, 1, 9, 16, 11)
    with torch.no_grad():
        torch.testing.assert_close(ours.features(x), authors.features(x), rtol=1e-5, atol=1e-5)


def test_converter_errors_name_the_problem(tmp_path, capsys):
    state = AuthorsGEMINI(3, 1, 1, CH, DEF).state_dict()
    with pytest.raises(ValueError, match="unknown variant 'gemini4d'"):
        convert_checkpoint(state, variant="gemini4d")
    with pytest.raises(SystemExit):
        main(["a.pth", "b.pt", "--variant", "gemini4d"])
    assert "invalid choice: 'gemini4d'" in capsys.readouterr().err

    extra = dict(state, **{"unet.extra.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unknown keys \['unet.extra.weight'\]"):
        convert_checkpoint(extra, variant="gemini3d")
    missing = {k: v for k, v in state.items() if k != "deformer.1.bias"}
    with pytest.raises(ValueError, match=r"missing keys \['deformer.1.bias'\]"):
        convert_checkpoint(missing, variant="gemini3d")
    bad = dict(state, **{"deformer.1.weight": torch.zeros(3, 8, 3, 3, 1)})
    with pytest.raises(ValueError, match=r"deformer.1.weight has shape \[3, 8, 3, 3, 1\], expected \[3, 8, 3, 3, 3\]"):
        convert_checkpoint(bad, variant="gemini3d")
    with pytest.raises(ValueError, match=r"unet.down1.maxpool_conv.1.double_conv.0.weight has shape"):
        convert_checkpoint(state, variant="gemini3d", channels=(8, 24, 16, 16, 16, 16, 16, 8, 8))
    with pytest.raises(ValueError, match="a 3D convolution, but variant 'gemini2d' is 2D"):
        convert_checkpoint(state, variant="gemini2d")
    with pytest.raises(ValueError, match="'f_conv.double_conv.0.weight' is missing.*holds GEMINI deformer"):
        convert_checkpoint(state, variant="gvsl3d")

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt.pth"):
        convert_checkpoint(corrupt, variant="gemini3d")
    assert main([str(corrupt), str(tmp_path / "o.pt"), "--variant", "gemini3d"]) == 2
    assert "corrupt.pth" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        convert_checkpoint(tmp_path / "nowhere.pth", variant="gemini3d")


def test_load_pretrained_backbone_from_our_and_authors_checkpoints(tmp_path):
    authors = AuthorsGEMINI(3, 1, 1, CH, DEF)
    src = tmp_path / "authors.pth"
    torch.save(authors.state_dict(), src, _use_new_zipfile_serialization=False)
    net = GVSL(channels=CH, affine_channels=8)
    report = load_pretrained_backbone(src, net)
    assert len(report.loaded) == 72 and not report.missing and not report.unexpected
    assert all(k.startswith(("deformer.", "res_conv.")) for k in report.skipped) and len(report.skipped) == 28
    for k, v in authors.unet.state_dict().items():
        torch.testing.assert_close(net.unet.state_dict()[k], v)

    # MONAI-style checkpoint of our network, saved from a DDP wrapper.
    trained = GEMINI(3, channels=CH, deformer_channels=DEF)
    ckpt = {"network": {"module." + k: v for k, v in trained.state_dict().items()}, "optimizer": {"state": {}}}
    torch.save(ckpt, tmp_path / "ours.pt")
    fresh = GEMINI(3, channels=CH, deformer_channels=DEF)
    before = fresh.deformer[1].weight.clone()
    load_pretrained_backbone(tmp_path / "ours.pt", fresh)
    x = torch.randn(1, 1, 8, 8, 8)
    torch.testing.assert_close(fresh.features(x), trained.features(x))
    torch.testing.assert_close(fresh.deformer[1].weight, before)  # only the backbone changes

    # A bare backbone state dict, with one tensor missing.
    partial = {k: v for k, v in trained.unet.state_dict().items() if not k.startswith("up4.")}
    report = load_pretrained_backbone(partial, GEMINI(3, channels=CH, deformer_channels=DEF))
    assert len(report.missing) == 8 and all(k.startswith("unet.up4.") for k in report.missing)
    with pytest.raises(ValueError, match="missing backbone keys"):
        load_pretrained_backbone(partial, GEMINI(3, channels=CH, deformer_channels=DEF), strict=True)


def test_load_pretrained_backbone_errors(tmp_path):
    net = GEMINI(3, channels=CH, deformer_channels=DEF)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_pretrained_backbone(tmp_path / "missing.pt", net)
    (tmp_path / "broken.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match="broken.pt"):
        load_pretrained_backbone(tmp_path / "broken.pt", net)
    wide = GEMINI(3, channels=(16,) * 9, deformer_channels=DEF).state_dict()
    with pytest.raises(ValueError, match=r"unet.inc.double_conv.0.weight: checkpoint \[16, 1, 3, 3, 3\] vs network"):
        load_pretrained_backbone(wide, net)
    with pytest.raises(ValueError, match="no backbone weights match"):
        load_pretrained_backbone({"something.weight": torch.zeros(1)}, net)
    with pytest.raises(TypeError, match="network must be a GEMINI, GVSL or UNetBase"):
        load_pretrained_backbone(wide, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not tensors"):
        load_pretrained_backbone({"unet.inc.double_conv.0.weight": "text"}, net)
