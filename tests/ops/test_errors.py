"""Bad input raises a clear error that names the argument, on every backend;
the raw ops raise ValueError or TypeError naming the argument (never crash)
when called directly."""

from __future__ import annotations

import pytest
import torch

import gemini_ops

BACKENDS = ["compiled", "emulated", "reference"]


def f64(*shape):
    return torch.randn(*shape, dtype=torch.float64)


IMG, DDF = (1, 2, 5, 6), (1, 2, 5, 6)


def calls(backend):
    """One valid call per op; keyword overrides replace one argument."""

    def warp(**kw):
        args = {"image": f64(*IMG), "ddf": f64(*DDF), **kw}
        return gemini_ops.warp(args.pop("image"), args.pop("ddf"), backend=backend, **args)

    def integrate(**kw):
        args = {"velocity": f64(*DDF), **kw}
        return gemini_ops.integrate_velocity(args.pop("velocity"), backend=backend, **args)

    def gss(**kw):
        args = {"feat_moving": f64(*IMG), "feat_fixed": f64(*IMG), "ddf": f64(*DDF), **kw}
        tensors = [args.pop(k) for k in ("feat_moving", "feat_fixed", "ddf")]
        return gemini_ops.gss_similarity(*tensors, backend=backend, **args)

    def ncc(**kw):
        args = {"a": f64(*IMG), "b": f64(*IMG), **kw}
        return gemini_ops.local_ncc(args.pop("a"), args.pop("b"), backend=backend, **args)

    return {"warp": warp, "integrate": integrate, "gss": gss, "ncc": ncc}


def test_valid_calls_run():
    for backend in BACKENDS:
        for fn in calls(backend).values():
            assert torch.isfinite(fn()).all()


# (op, argument, bad value, exception, message pattern)
BAD = [
    # wrong ndim
    ("warp", "image", f64(2, 5, 6), ValueError, r"image must have shape .*3 dims"),
    ("warp", "ddf", f64(1, 2, 5, 6, 1, 1), ValueError, r"ddf must have shape .*6 dims"),
    ("integrate", "velocity", f64(2, 5), ValueError, r"velocity must have shape"),
    ("gss", "feat_moving", f64(2, 5, 6), ValueError, r"feat_moving must have shape"),
    ("gss", "feat_fixed", f64(2, 5, 6), ValueError, r"feat_fixed must have shape"),
    ("ncc", "a", f64(5, 6), ValueError, r"\ba must have shape"),
    ("ncc", "b", f64(1, 1, 1, 1, 5, 6), ValueError, r"\bb must have shape"),
    # mismatched spatial shapes
    ("warp", "ddf", f64(1, 2, 5, 7), ValueError, r"ddf must have shape .*\(1, 2, 5, 6\)"),
    ("gss", "ddf", f64(1, 2, 4, 6), ValueError, r"ddf must have shape"),
    ("gss", "feat_fixed", f64(1, 2, 5, 7), ValueError, r"feat_moving .* and feat_fixed .* same shape"),
    ("ncc", "b", f64(1, 2, 5, 7), ValueError, r"\ba .* and b .* same shape"),
    # batch mismatch
    ("warp", "ddf", f64(2, 2, 5, 6), ValueError, r"ddf must have shape"),
    # ddf channels != ndim
    ("warp", "ddf", f64(1, 3, 5, 6), ValueError, r"ddf must have shape \(B, ndim, \*spatial\)"),
    ("integrate", "velocity", f64(1, 3, 5, 6), ValueError, r"velocity must have shape \(B, ndim"),
    ("gss", "ddf", f64(1, 1, 5, 6), ValueError, r"ddf must have shape"),
    # integer / bool / complex dtypes
    ("warp", "image", torch.ones(IMG, dtype=torch.int64), TypeError, r"image must be a floating tensor"),
    ("warp", "ddf", torch.ones(DDF, dtype=torch.int32), TypeError, r"ddf must be a floating tensor"),
    ("integrate", "velocity", torch.ones(DDF, dtype=torch.int64), TypeError, r"velocity must be a floating"),
    ("gss", "feat_fixed", torch.ones(IMG, dtype=torch.bool), TypeError, r"feat_fixed must be a floating"),
    ("ncc", "a", torch.ones(IMG, dtype=torch.uint8), TypeError, r"\ba must be a floating"),
    ("warp", "image", torch.ones(IMG, dtype=torch.complex64), TypeError, r"image must be a floating tensor"),
    # mixed dtypes
    ("warp", "ddf", torch.zeros(DDF, dtype=torch.float32), TypeError, r"ddf has dtype torch.float32 but image"),
    ("gss", "feat_fixed", torch.zeros(IMG, dtype=torch.float32), TypeError, r"feat_fixed has dtype"),
    ("gss", "ddf", torch.zeros(DDF, dtype=torch.float32), TypeError, r"ddf has dtype"),
    ("ncc", "b", torch.zeros(IMG, dtype=torch.float32), TypeError, r"\bb has dtype"),
    # mixed devices
    (
        "warp",
        "ddf",
        torch.zeros(DDF, dtype=torch.float64, device="meta"),
        ValueError,
        r"ddf( is on|: the emulated backend runs CPU tensors only, got device) meta",
    ),
    (
        "gss",
        "ddf",
        torch.zeros(DDF, dtype=torch.float64, device="meta"),
        ValueError,
        r"ddf( is on|: the emulated backend runs CPU tensors only, got device) meta",
    ),
    (
        "gss",
        "feat_fixed",
        torch.zeros(IMG, dtype=torch.float64, device="meta"),
        ValueError,
        r"feat_fixed( is on|: the emulated backend runs CPU tensors only, got device) meta",
    ),
    (
        "ncc",
        "b",
        torch.zeros(IMG, dtype=torch.float64, device="meta"),
        ValueError,
        r"\bb( is on|: the emulated backend runs CPU tensors only, got device) meta",
    ),
    # empty tensors
    ("warp", "image", torch.zeros((1, 2, 0, 6), dtype=torch.float64), ValueError, r"image is empty"),
    ("integrate", "velocity", torch.zeros((0, 2, 5, 6), dtype=torch.float64), ValueError, r"velocity is empty"),
    ("gss", "feat_moving", torch.zeros((1, 0, 5, 6), dtype=torch.float64), ValueError, r"feat_moving is empty"),
    ("ncc", "a", torch.zeros((1, 2, 5, 0), dtype=torch.float64), ValueError, r"\ba is empty"),
    # not a tensor
    ("warp", "image", [[1.0]], TypeError, r"image must be a torch.Tensor"),
]


def _nonfinite(shape, value):
    t = torch.zeros(shape, dtype=torch.float64)
    t.view(-1)[3] = value
    return t


for _v in (float("nan"), float("inf"), -float("inf")):
    BAD += [
        ("warp", "ddf", _nonfinite(DDF, _v), RuntimeError, r"ddf contains NaN or Inf"),
        ("integrate", "velocity", _nonfinite(DDF, _v), RuntimeError, r"velocity contains NaN or Inf"),
        ("gss", "ddf", _nonfinite(DDF, _v), RuntimeError, r"ddf contains NaN or Inf"),
    ]


@pytest.mark.parametrize("op,arg,value,exc,pattern", BAD, ids=[f"{b[0]}-{b[1]}-{i}" for i, b in enumerate(BAD)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_tensor_argument(backend, op, arg, value, exc, pattern):
    with pytest.raises(exc, match=pattern):
        calls(backend)[op](**{arg: value})


# (op, keyword, bad value, exception, message pattern)
BAD_OPTIONS = [
    ("warp", "mode", "trilinear", ValueError, r"mode must be one of"),
    ("warp", "padding_mode", "wrap", ValueError, r"padding_mode must be one of"),
    ("integrate", "num_steps", -1, ValueError, r"num_steps must be >= 0, got -1"),
    ("integrate", "num_steps", 2.0, TypeError, r"num_steps must be an int"),
    ("integrate", "num_steps", True, TypeError, r"num_steps must be an int"),
    ("integrate", "padding_mode", "Zeros", ValueError, r"padding_mode must be one of"),
    ("gss", "reduction", "sum", ValueError, r"reduction must be one of"),
    ("gss", "grad_scales", (1.0, 1.0), ValueError, r"grad_scales must hold 3 numbers"),
    ("gss", "mask", torch.ones((1, 2, 5, 6), dtype=torch.float64), ValueError, r"mask must have shape"),
    ("gss", "mask", torch.ones((1, 1, 5, 6), device="meta"), ValueError, r"mask is on meta"),
    ("gss", "mask", [1.0], TypeError, r"mask must be a torch.Tensor"),
    ("ncc", "window", 4, ValueError, r"window must be an odd int >= 1, got 4"),
    ("ncc", "window", 0, ValueError, r"window must be an odd int >= 1, got 0"),
    ("ncc", "window", -3, ValueError, r"window must be an odd int >= 1, got -3"),
    ("ncc", "window", 3.0, TypeError, r"window must be an int"),
    ("ncc", "eps", -1e-3, ValueError, r"eps must be >= 0"),
    ("ncc", "eps", float("nan"), ValueError, r"eps must be >= 0"),
    ("ncc", "reduction", "sum", ValueError, r"reduction must be one of"),
    ("ncc", "denominator", "sqrt", ValueError, r"denominator must be one of"),
    ("ncc", "kernel_type", "box", ValueError, r"kernel_type must be one of"),
    ("ncc", "smooth_nr", 0.1, ValueError, r"smooth_nr applies to denominator='clamp'"),
    ("ncc", "mask", torch.ones((1, 1, 5, 7), dtype=torch.float64), ValueError, r"mask must have shape"),
]


@pytest.mark.parametrize(
    "op,kw,value,exc,pattern", BAD_OPTIONS, ids=[f"{b[0]}-{b[1]}-{i}" for i, b in enumerate(BAD_OPTIONS)]
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_option(backend, op, kw, value, exc, pattern):
    with pytest.raises(exc, match=pattern):
        calls(backend)[op](**{kw: value})


def test_bad_backend():
    with pytest.raises(ValueError, match=r"backend must be one of"):
        gemini_ops.warp(f64(*IMG), f64(*DDF), backend="cuda")


def test_finite_checks_can_be_disabled():
    """set_finite_checks(False) skips the NaN/Inf scan (documented); the default is on."""
    assert gemini_ops.functional._CHECK_FINITE
    ddf = _nonfinite(DDF, float("nan"))
    try:
        gemini_ops.set_finite_checks(False)
        out = gemini_ops.warp(f64(*IMG), ddf, backend="compiled")
        assert out.shape == IMG  # NaN coordinates are pulled outside: no crash
    finally:
        gemini_ops.set_finite_checks(True)
    with pytest.raises(RuntimeError, match="ddf contains NaN"):
        gemini_ops.warp(f64(*IMG), ddf, backend="compiled")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_finite_check_exact_at_extremes(dtype):
    """Only NaN/Inf raise: finite fields at the dtype's extremes pass (a
    check through a sum would overflow), and one Inf among them is caught."""
    top = torch.finfo(dtype).max
    ddf = torch.full(DDF, top, dtype=dtype)
    ddf[:, 0] = -top
    image = torch.rand(IMG).to(dtype)
    assert gemini_ops.warp(image, ddf, backend="compiled").shape == IMG
    ddf.view(-1)[torch.randint(ddf.numel(), ()).item()] = float("inf")
    with pytest.raises(RuntimeError, match="ddf contains NaN or Inf values"):
        gemini_ops.warp(image, ddf, backend="compiled")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_all_finite_matches_isfinite(dtype):
    t = torch.randn(2, 5, 7, 6).to(dtype)
    assert bool(gemini_ops.all_finite(t)) and bool(torch.isfinite(t).all())
    for bad in (float("nan"), float("inf"), -float("inf")):
        u = t.clone()
        u.view(-1)[torch.randint(u.numel(), ()).item()] = bad
        assert not bool(gemini_ops.all_finite(u)) and not bool(torch.isfinite(u).all())


def test_finite_check_same_under_compile():
    """The NaN/Inf check raises the same error in a fullgraph compiled function."""
    image, ddf = f64(*IMG), _nonfinite(DDF, float("nan"))
    compiled = torch.compile(lambda i, d: gemini_ops.warp(i, d, backend="compiled"), fullgraph=True, dynamic=False)
    assert compiled(image, torch.zeros(DDF, dtype=torch.float64)).shape == IMG
    with pytest.raises(RuntimeError, match="ddf contains NaN or Inf values"):
        compiled(image, ddf)


def test_deprecated_steps_keyword():
    v = f64(*DDF)
    with pytest.warns(DeprecationWarning, match="use num_steps"):
        old = gemini_ops.integrate_velocity(v, steps=3)
    assert torch.equal(old, gemini_ops.integrate_velocity(v, num_steps=3))


def test_jacobian_bad_input():
    with pytest.raises(ValueError, match=r"ddf must have ndim=2 channels"):
        gemini_ops.jacobian_determinant(f64(1, 3, 5, 6))
    with pytest.raises(ValueError, match=r"ddf spatial sizes must be >= 2"):
        gemini_ops.jacobian_determinant(f64(1, 2, 1, 6))
    with pytest.raises(ValueError, match=r"ddf must have shape"):
        gemini_ops.jacobian_determinant(f64(2, 5, 6))
    with pytest.raises(TypeError, match=r"ddf must be a floating"):
        gemini_ops.folding_fraction(torch.zeros((1, 2, 5, 6), dtype=torch.int64))
    with pytest.raises(ValueError, match=r"mask must have shape"):
        gemini_ops.folding_fraction(f64(1, 2, 5, 6), torch.ones(1, 1, 5, 5))


def test_module_arguments():
    with pytest.raises(ValueError, match="mode must be one of"):
        gemini_ops.Warp(mode="trilinear")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        gemini_ops.Warp(padding_mode="wrap")
    for code in (2, 3):  # MONAI's compiled B-splines
        with pytest.raises(ValueError, match="mode integer code must be one of"):
            gemini_ops.VelocityIntegrator(7, mode=code)
    with pytest.raises(ValueError, match=r"ddf must have shape \(B, ndim, \*spatial\) = \(1, 2, 5, 6\)"):
        gemini_ops.Warp()(f64(*IMG), f64(1, 2, 1, 5, 6))
    with pytest.raises(ValueError, match="padding_mode integer code must be one of"):
        gemini_ops.Warp(padding_mode=3)
    with pytest.raises(ValueError, match="mode='bicubic' needs a 2D image"):
        gemini_ops.Warp(mode="bicubic")(f64(1, 1, 4, 5, 6), f64(1, 3, 4, 5, 6))
    with pytest.raises(ValueError, match="num_steps must be >= 0"):
        gemini_ops.VelocityIntegrator(-1)
    with pytest.raises(ValueError, match="denominator must be one of"):
        gemini_ops.LocalNCCLoss(denominator="monai")
    for kw, pattern in [
        ({"spatial_dims": 4}, "spatial_dims must be one of"),
        ({"kernel_size": 4}, "kernel_size must be an odd int"),
        ({"kernel_type": None}, "kernel_type must be one of"),
        ({"reduction": "batch"}, "reduction must be one of"),
        ({"smooth_dr": -1.0}, "smooth_dr must be >= 0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            gemini_ops.LocalNormalizedCrossCorrelationLoss(**kw)
    with pytest.raises(ValueError, match="pred must have 3 spatial dimensions"):
        gemini_ops.LocalNormalizedCrossCorrelationLoss()(f64(*IMG), f64(*IMG))
    with pytest.raises(ValueError, match="weights must be >= 0"):
        gemini_ops.GSSLoss(feature_weight=-0.1)
    with pytest.raises(ValueError, match="window must be an odd int"):
        gemini_ops.LocalNCCLoss(window=4)(f64(*IMG), f64(*IMG))


# ---------------------------------------------------------------- raw ops
# (op, call, exception type, message): C++ raises ValueError for a bad value
# or shape and TypeError for a bad dtype, like the Python wrappers.
RAW = [
    (
        "warp",
        lambda ns: ns.warp(f64(1, 2, 5, 6), f64(1, 3, 5, 6), "bilinear", "zeros"),
        ValueError,
        r"ddf must be \(B, ndim",
    ),
    (
        "warp",
        lambda ns: ns.warp(f64(2, 5, 6), f64(1, 2, 5, 6), "bilinear", "zeros"),
        ValueError,
        r"image must be \(B, C, H, W\)",
    ),
    ("warp", lambda ns: ns.warp(f64(1, 2, 5, 6), f64(1, 2, 5, 6), "cubic", "zeros"), ValueError, r"mode must be"),
    (
        "warp",
        lambda ns: ns.warp(f64(1, 2, 5, 6), f64(1, 2, 5, 6), "bilinear", "wrap"),
        ValueError,
        r"padding_mode must be",
    ),
    (
        "warp",
        lambda ns: ns.warp(f64(1, 2, 5, 6), f64(1, 2, 5, 6).float(), "bilinear", "zeros"),
        TypeError,
        r"ddf has dtype",
    ),
    (
        "warp",
        lambda ns: ns.warp(
            torch.ones(1, 2, 5, 6, dtype=torch.int64), torch.ones(1, 2, 5, 6, dtype=torch.int64), "bilinear", "zeros"
        ),
        TypeError,
        r"floating",
    ),
    (
        "warp",
        lambda ns: ns.warp(torch.zeros(1, 2, 0, 6), torch.zeros(1, 2, 0, 6), "bilinear", "zeros"),
        ValueError,
        r"empty",
    ),
    (
        "warp_backward",
        lambda ns: ns.warp_backward(f64(1, 2, 5, 7), f64(1, 2, 5, 6), f64(1, 2, 5, 6), "bilinear", "zeros", True, True),
        ValueError,
        r"grad must have the image's shape",
    ),
    (
        "integrate_velocity",
        lambda ns: ns.integrate_velocity(f64(1, 3, 5, 6), 3, "zeros"),
        ValueError,
        r"velocity must be \(B, ndim",
    ),
    (
        "integrate_velocity",
        lambda ns: ns.integrate_velocity(f64(1, 2, 5, 6), -2, "zeros"),
        ValueError,
        r"num_steps must be >= 0",
    ),
    (
        "integrate_velocity_with_fields",
        lambda ns: ns.integrate_velocity_with_fields(f64(1, 2, 5, 6), 3, 1, "reflection"),
        ValueError,
        r"padding_mode must be",
    ),
    (
        "integrate_velocity_backward",
        lambda ns: ns.integrate_velocity_backward(f64(1, 2, 5, 5), f64(1, 2, 5, 6), f64(0), 3, 1, "zeros"),
        ValueError,
        r"grad must have the velocity's shape",
    ),
    (
        "integrate_velocity_backward",
        lambda ns: ns.integrate_velocity_backward(f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(0), 4, 0, "zeros"),
        ValueError,
        r"every must be >= 1, got 0",
    ),
    (
        "integrate_velocity_backward",
        lambda ns: ns.integrate_velocity_backward(f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(3, 1, 2, 5, 6), 3, 1, "zeros"),
        ValueError,
        r"fields must be empty or \(\(num_steps - 1\) // every, \*velocity.shape\)",
    ),
    (
        "integrate_velocity_backward",
        lambda ns: ns.integrate_velocity_backward(
            f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(2, 1, 2, 5, 6).float(), 3, 1, "zeros"
        ),
        TypeError,
        r"fields must have dtype",
    ),
    (
        "integrate_velocity_with_fields",
        lambda ns: ns.integrate_velocity_with_fields(f64(1, 2, 5, 6), 3, 0, "zeros"),
        ValueError,
        r"every must be >= 1",
    ),
    (
        "gss",
        lambda ns: ns.gss(f64(1, 2, 5, 6), f64(1, 3, 5, 6), f64(1, 2, 5, 6), 1e-8, 1.0, 1.0, 1.0, False),
        ValueError,
        r"same shape",
    ),
    (
        "gss",
        lambda ns: ns.gss(f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(1, 2, 5, 5), 1e-8, 1.0, 1.0, 1.0, True),
        ValueError,
        r"ddf must be",
    ),
    (
        "gss_backward",
        lambda ns: ns.gss_backward(
            f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(1, 2, 5, 6), 1e-8, 1.0, 1.0, 1.0
        ),
        ValueError,
        r"grad must be \(B, 1",
    ),
    (
        "local_ncc",
        lambda ns: ns.local_ncc(f64(1, 2, 5, 6), f64(1, 2, 5, 6), 4, True, 1e-5, False, False),
        ValueError,
        r"window must be an odd",
    ),
    (
        "local_ncc",
        lambda ns: ns.local_ncc(f64(1, 2, 5, 6), f64(1, 2, 6, 6), 3, True, 1e-5, True, False),
        ValueError,
        r"same shape",
    ),
    (
        "local_ncc_backward",
        lambda ns: ns.local_ncc_backward(
            f64(1, 2, 5, 5), f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(5, 1, 2, 5, 6), 3, True, 1e-5, True, True
        ),
        ValueError,
        r"grad must have the shape of a",
    ),
    (
        "local_ncc_backward",
        lambda ns: ns.local_ncc_backward(
            f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(0), 3, True, 1e-5, True, True
        ),
        ValueError,
        r"sums must be the forward's box sums, \(5, \*a.shape\)",
    ),
    (
        "local_ncc_backward",
        lambda ns: ns.local_ncc_backward(
            f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(1, 2, 5, 6), f64(5, 1, 2, 5, 6).float(), 3, True, 1e-5, True, True
        ),
        TypeError,
        r"sums must have dtype",
    ),
]


@pytest.mark.parametrize("namespace", ["gemini", "gemini_emulated"])
@pytest.mark.parametrize("case", RAW, ids=[f"{r[0]}-{i}" for i, r in enumerate(RAW)])
def test_raw_ops_raise_typed_errors(namespace, case):
    name, call, kind, pattern = case
    ns = getattr(torch.ops, namespace)
    with pytest.raises(kind, match=pattern):
        call(ns)


def _half_calls(ns, dtype):
    """Each host op whose first tensor is (B, C, *S), called with `dtype`."""

    def t(*shape):
        return torch.randn(*shape).to(dtype)

    return [
        ("image", lambda: ns.warp(t(1, 2, 5, 6), t(1, 2, 5, 6), "bilinear", "zeros")),
        (
            "image",
            lambda: ns.warp_backward(t(1, 2, 5, 6), t(1, 2, 5, 6), t(1, 2, 5, 6), "bilinear", "zeros", True, True),
        ),
        ("velocity", lambda: ns.integrate_velocity(t(1, 3, 4, 5, 6), 2, "zeros")),
        ("velocity", lambda: ns.integrate_velocity_with_fields(t(1, 3, 4, 5, 6), 2, 1, "zeros")),
        ("feat_moving", lambda: ns.gss(t(1, 2, 5, 6), t(1, 2, 5, 6), t(1, 2, 5, 6), 1e-8, 1.0, 1.0, 1.0, False)),
        ("a", lambda: ns.local_ncc(t(1, 2, 5, 6), t(1, 2, 5, 6), 3, True, 1e-5, False, False)),
    ]


@pytest.mark.parametrize("namespace", ["gemini", "gemini_emulated"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_raw_host_ops_reject_half_types(namespace, dtype):
    """The host kernels run float32/float64 only; half types are cast by the
    functions (one precision policy), so a raw op given one raises a
    TypeError naming its first tensor (integration used to cast them itself
    while the other ops raised NotImplementedError from the dispatch)."""
    for name, call in _half_calls(getattr(torch.ops, namespace), dtype):
        with pytest.raises(TypeError, match=rf"{name} has dtype .*take float32 or float64"):
            call()
