"""Registration: the ops as torch custom ops under torch.compile(fullgraph=True),
torch.library.opcheck, torch.jit.trace + a fresh process, autocast, and
backend_info()."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from opsutil import assert_rel_close, randn, random_ddf

import gemini_ops

NAMESPACES = ["gemini", "gemini_emulated"]


def _inputs(dtype=torch.float64, seed=0):
    image = randn((2, 2, 6, 5, 7), dtype, seed)
    ddf = random_ddf(2, 3, (6, 5, 7), dtype, seed + 1, scale=1.5)
    velocity = randn((2, 3, 6, 5, 7), dtype, seed + 2, scale=1.5)
    other = randn((2, 2, 6, 5, 7), dtype, seed + 3)
    return image, ddf, velocity, other


# ---------------------------------------------------------------- opcheck
def _opcheck_cases(ns):
    ops = getattr(torch.ops, ns)
    x, d, v, y = (t.requires_grad_() for t in _inputs(seed=5))
    g = randn(x.shape, torch.float64, 9)
    g1 = randn((2, 1, 6, 5, 7), torch.float64, 10)
    ncc = (3, False, 1e-5)
    sums = ops.local_ncc(x.detach(), y.detach(), *ncc, True, False)[1]
    return [
        ("warp", ops.warp.default, (x, d, "bilinear", "zeros")),
        ("warp-nearest-border", ops.warp.default, (x, d, "nearest", "border")),
        ("integrate_velocity", ops.integrate_velocity.default, (v, 3, "border")),
        ("integrate_velocity_with_fields", ops.integrate_velocity_with_fields.default, (v, 5, 2, "zeros")),
        ("gss", ops.gss.default, (x, y, d, 1e-8, 0.1, 0.1, 1.0, False)),
        ("gss-mean", ops.gss.default, (x, y, d, 1e-8, 0.1, 0.1, 1.0, True)),
        ("local_ncc", ops.local_ncc.default, (x, y, 5, True, 1e-5, False, False)),
        ("local_ncc-keep_sums", ops.local_ncc.default, (x, y, 5, True, 1e-5, True, False)),
        ("local_ncc-mean", ops.local_ncc.default, (x, y, 5, False, 1e-5, True, True)),
        ("warp_backward", ops.warp_backward.default, (g, x.detach(), d.detach(), "bilinear", "zeros", True, True)),
        (
            "integrate_velocity_backward",
            ops.integrate_velocity_backward.default,
            (v.detach(), v.detach(), v.new_empty(0), 2, 1, "zeros"),
        ),
        (
            "integrate_velocity_backward-saved",
            ops.integrate_velocity_backward.default,
            (v.detach(), v.detach(), ops.integrate_velocity_with_fields(v.detach(), 5, 2, "zeros")[1], 5, 2, "zeros"),
        ),
        ("gss_backward", ops.gss_backward.default, (g1, x.detach(), y.detach(), d.detach(), 1e-8, 1.0, 0.0, 1.0)),
        (
            "gss_backward-mean",
            ops.gss_backward.default,
            (g1[0, 0, 0, 0, 0], x.detach(), y.detach(), d.detach(), 1e-8, 1.0, 0.0, 1.0),
        ),
        ("local_ncc_backward", ops.local_ncc_backward.default, (g, x.detach(), y.detach(), sums, *ncc, True, False)),
        (
            "local_ncc_backward-mean",
            ops.local_ncc_backward.default,
            (g[0, 0, 0, 0, 0], x.detach(), y.detach(), sums, *ncc, True, True),
        ),
    ]


@pytest.mark.parametrize("ns", NAMESPACES)
def test_opcheck(ns):
    """Schemas, fake kernels, autograd registration and AOT dispatch of every op."""
    for name, op, args in _opcheck_cases(ns):
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), (name, result)


# ---------------------------------------------------------------- torch.compile
def _pipeline(image, ddf, velocity, other):
    """Every op, forward and backward, in one function."""
    u = gemini_ops.integrate_velocity(velocity, 4) + ddf
    warped = gemini_ops.warp(image, u, "bilinear", "border")
    near = gemini_ops.warp(image, ddf, "nearest", "zeros", backend="emulated")
    ncc = gemini_ops.local_ncc(warped, other, 3)
    gss = gemini_ops.gss_similarity(image, other, u, grad_scales=(0.1, 0.1, 1.0))
    return ncc + gss + near.square().mean()


def test_torch_compile_fullgraph_no_graph_breaks():
    """aot_eager backend: dynamo + AOTAutograd (which traces the backward through
    the fake kernels); inductor's C++ compile would only add minutes on 2 cores."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    args = [t.requires_grad_() for t in _inputs(seed=20)]
    explanation = torch._dynamo.explain(_pipeline)(*args)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    ops_in_graph = {str(n.target) for g in explanation.graphs for n in g.graph.nodes if n.op == "call_function"}
    for op in ("gemini.integrate_velocity", "gemini.warp", "gemini_emulated.warp", "gemini.local_ncc", "gemini.gss"):
        assert any(op in t for t in ops_in_graph), (op, ops_in_graph)

    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_pipeline, backend=counter, fullgraph=True)
    eager_args = [t.detach().clone().requires_grad_() for t in args]
    comp_args = [t.detach().clone().requires_grad_() for t in args]
    eager = _pipeline(*eager_args)
    out = compiled(*comp_args)
    assert counter.frame_count == 1
    assert_rel_close(out, eager, torch.float64, floor=1.0, what="compiled value")
    eager_grads = torch.autograd.grad(eager, eager_args)
    comp_grads = torch.autograd.grad(out, comp_args)
    for name, a, b in zip(("image", "ddf", "velocity", "other"), comp_grads, eager_grads):
        assert_rel_close(a, b, torch.float64, what=f"compiled d/d {name}")
    # a second call with new values reuses the graph
    new = [t.detach().clone().requires_grad_() for t in _inputs(seed=21)]
    assert_rel_close(compiled(*new), _pipeline(*new), torch.float64, floor=1.0, what="second call")
    assert counter.frame_count == 1
    torch._dynamo.reset()


# ---------------------------------------------------------------- TorchScript
class _Traced(torch.nn.Module):
    def forward(self, image, ddf, velocity, other):
        u = gemini_ops.integrate_velocity(velocity, 3) + ddf
        warped = gemini_ops.warp(image, u, "bilinear", "zeros")
        cc = gemini_ops.local_ncc(warped, other, 3, reduction="none")
        gss = gemini_ops.gss_similarity(image, other, u, reduction="none")
        return warped, cc, gss


_LOAD = textwrap.dedent(
    """
    import sys, torch
    if sys.argv[3] == "import":
        import gemini_ops  # registers the ops
    module = torch.jit.load(sys.argv[1])
    inputs = torch.load(sys.argv[2])
    torch.save(module(*inputs), sys.argv[2] + ".out")
    """
)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_trace_save_and_load_in_fresh_process(tmp_path):
    inputs = _inputs(torch.float32, seed=30)
    module = _Traced()
    with torch.no_grad():
        traced = torch.jit.trace(module, inputs, check_trace=False)
        expected = module(*inputs)
    graph = str(traced.graph)
    for op in ("gemini::integrate_velocity", "gemini::warp", "gemini::local_ncc", "gemini::gss"):
        assert op in graph
    path, data = tmp_path / "traced.pt", tmp_path / "inputs.pt"
    traced.save(str(path))
    torch.save(inputs, str(data))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run = [sys.executable, "-c", _LOAD, str(path), str(data)]
    ok = subprocess.run([*run, "import"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    outputs = torch.load(str(data) + ".out")
    for name, a, b in zip(("warped", "cc", "gss"), outputs, expected):
        assert torch.equal(a, b), name
    # without `import gemini_ops` the ops are unknown to the fresh process
    bad = subprocess.run([*run, "noimport"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "Unknown builtin op: gemini::" in bad.stderr, bad.stderr[-2000:]


# ---------------------------------------------------------------- autocast
def test_raw_ops_do_no_casting_under_autocast():
    """The precision policy lives in the functional API only: the raw ops
    under autocast compute exactly what they compute without it."""
    image, ddf, velocity, other = (t.float() for t in _inputs(seed=40))
    plain = (
        torch.ops.gemini.warp(image, ddf, "bilinear", "zeros"),
        torch.ops.gemini.local_ncc(image, other, 3, True, 1e-5, True, False)[0],
        torch.ops.gemini.integrate_velocity(velocity, 3, "zeros"),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (
            torch.ops.gemini.warp(image, ddf, "bilinear", "zeros"),
            torch.ops.gemini.local_ncc(image, other, 3, True, 1e-5, True, False)[0],
            torch.ops.gemini.integrate_velocity(velocity, 3, "zeros"),
        )
    for a, b in zip(auto, plain):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    # no autocast registration: bfloat16 reaches the CPU op, which refuses it
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="image has dtype BFloat16"):
        torch.ops.gemini.warp(image.bfloat16(), ddf.bfloat16(), "bilinear", "zeros")


@pytest.mark.parametrize("backend", ["compiled", "emulated"])
def test_functional_float32_under_autocast(backend):
    """float32 inputs under a bfloat16 autocast stay float32 and unchanged."""
    image, ddf, velocity, other = (t.float() for t in _inputs(seed=41))
    plain = (
        gemini_ops.warp(image, ddf, backend=backend),
        gemini_ops.integrate_velocity(velocity, 3, backend=backend),
        gemini_ops.gss_similarity(image, other, ddf, backend=backend),
        gemini_ops.local_ncc(image, other, 3, backend=backend),
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (
            gemini_ops.warp(image, ddf, backend=backend),
            gemini_ops.integrate_velocity(velocity, 3, backend=backend),
            gemini_ops.gss_similarity(image, other, ddf, backend=backend),
            gemini_ops.local_ncc(image, other, 3, backend=backend),
        )
    for a, b in zip(auto, plain):
        assert a.dtype == torch.float32 and torch.equal(a, b)


@pytest.mark.parametrize("backend", ["compiled", "emulated"])
def test_functional_mixed_bf16_under_autocast(backend):
    image, ddf, velocity, other = (t.float() for t in _inputs(seed=42))
    ib, ob, vb = image.bfloat16(), other.bfloat16(), velocity.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = (
            gemini_ops.warp(ib, ddf, backend=backend),
            gemini_ops.integrate_velocity(vb, 3, backend=backend),
            gemini_ops.gss_similarity(ib, other, ddf, backend=backend),
            gemini_ops.local_ncc(ib, ob, 3, backend=backend),
        )
    plain = (
        gemini_ops.warp(ib.float(), ddf, backend=backend),
        gemini_ops.integrate_velocity(vb.float(), 3, backend=backend),
        gemini_ops.gss_similarity(ib.float(), other, ddf, backend=backend),
        gemini_ops.local_ncc(ib.float(), ob.float(), 3, backend=backend),
    )
    for a, b in zip(auto, plain):
        assert a.dtype == torch.float32 and torch.equal(a, b)


# ---------------------------------------------------------------- backend_info
def test_backend_info():
    info = gemini_ops.backend_info()
    for key in ("compiled", "cuda", "emulated", "reference", "cuda_available"):
        assert isinstance(info[key], bool), key
    for key in ("gemini_ops_version", "torch_version"):
        assert isinstance(info[key], str) and info[key], key
    assert info["reference"] is True
    assert info["gemini_ops_version"] == gemini_ops.__version__
    assert info["torch_version"] == torch.__version__
    assert info["torch_cuda_version"] == torch.version.cuda
    assert info["cuda_available"] == torch.cuda.is_available()
    # the flags agree with what is registered
    assert info["compiled"] == hasattr(torch.ops.gemini, "warp")
    assert info["emulated"] == (info["compiled"] and hasattr(torch.ops.gemini_emulated, "warp"))
    if info["compiled"]:
        assert isinstance(info["library"], str) and os.path.isfile(info["library"])
        assert info["load_error"] is None
        assert info["cuda"] == bool(torch.ops.gemini.compiled_with_cuda())
    else:
        assert isinstance(info["load_error"], str)
    if info["cuda"]:
        assert torch.version.cuda is not None  # CUDA kernels need a CUDA build of torch
