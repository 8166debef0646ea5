"""Loads the compiled library and registers, in Python, the fake (meta)
kernels and the autograd formulas of its ops.

The C++ library registers two namespaces with the same schemas:
``torch.ops.gemini`` (CPU kernels, and CUDA kernels when built with CUDA) and
``torch.ops.gemini_emulated`` (the CUDA kernel sources compiled as host C++,
CPU tensors only). Autograd and fake kernels are registered here for both, so
the ops trace under ``torch.compile(fullgraph=True)`` and a traced module
runs in a fresh process after ``import gemini_ops``. The raw ops do no dtype
casting: the precision policy (autocast, half types on the CPU) lives in
:func:`gemini_ops.functional._precision` only.
"""

from __future__ import annotations

import glob
import os
import warnings

import torch

NAMESPACES = ("gemini", "gemini_emulated")
_LOADED: str | None = None
_ERROR: str | None = None


def _library_path() -> str | None:
    override = os.environ.get("GEMINI_OPS_LIBRARY")
    if override:
        return override
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_C*.so")) + glob.glob(os.path.join(here, "_C*.pyd")))
    return found[0] if found else None


def load() -> bool:
    """Load the compiled library once; True when its ops are available."""
    global _LOADED, _ERROR
    if _LOADED is not None:
        return True
    if _ERROR is not None:
        return False
    path = _library_path()
    if path is None:
        _ERROR = "the compiled library gemini_ops/_C*.so was not found (build it with `pip install --no-build-isolation -e .`)"
    elif not os.path.isfile(path):
        _ERROR = f"GEMINI_OPS_LIBRARY={path!r} does not name a file"
    else:
        try:
            torch.ops.load_library(path)
        except OSError as exc:  # a stale build against another torch, a missing CUDA runtime, ...
            _ERROR = f"loading {path} failed: {exc}"
    if _ERROR is not None:
        warnings.warn(f"gemini_ops: {_ERROR}; the pure-PyTorch reference runs instead.", RuntimeWarning, stacklevel=3)
        return False
    _LOADED = path
    for ns in NAMESPACES:
        _register(ns)
    return True


def loaded_path() -> str | None:
    return _LOADED


def load_error() -> str | None:
    return _ERROR


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulation type: float for the half types."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _register(ns: str) -> None:
    ops = getattr(torch.ops, ns)
    lib = f"{ns}::"

    # ---- fake kernels: shapes and dtypes only -------------------------------------------
    @torch.library.register_fake(lib + "warp")
    def _(image, ddf, mode, padding_mode):
        return image.new_empty(image.shape)

    @torch.library.register_fake(lib + "warp_backward")
    def _(grad, image, ddf, mode, padding_mode, image_grad, ddf_grad):
        gi = image.new_empty(image.shape) if image_grad else _empty(image)
        gd = ddf.new_empty(ddf.shape) if ddf_grad else _empty(ddf)
        return gi, gd

    @torch.library.register_fake(lib + "integrate_velocity")
    def _(velocity, num_steps, padding_mode):
        return velocity.new_empty(velocity.shape)

    @torch.library.register_fake(lib + "integrate_velocity_with_fields")
    def _(velocity, num_steps, every, padding_mode):
        kept = max(num_steps - 1, 0) // max(every, 1)
        return velocity.new_empty(velocity.shape), velocity.new_empty(
            (kept, *velocity.shape), dtype=_acc_dtype(velocity.dtype)
        )

    @torch.library.register_fake(lib + "integrate_velocity_backward")
    def _(grad, velocity, fields, num_steps, every, padding_mode):
        return velocity.new_empty(velocity.shape)

    @torch.library.register_fake(lib + "gss")
    def _(feat_moving, feat_fixed, ddf, eps, scale_moving, scale_fixed, scale_ddf, mean):
        if mean:  # the masked mean, and the mask's sum
            return feat_fixed.new_empty(()), feat_fixed.new_empty((), dtype=_acc_dtype(feat_fixed.dtype))
        shape = (ddf.shape[0], 1, *ddf.shape[2:])
        return feat_fixed.new_empty(shape), feat_fixed.new_empty(shape)

    @torch.library.register_fake(lib + "gss_backward")
    def _(grad, feat_moving, feat_fixed, ddf, eps, scale_moving, scale_fixed, scale_ddf):
        return (
            feat_moving.new_empty(feat_moving.shape) if scale_moving != 0 else _empty(feat_moving),
            feat_fixed.new_empty(feat_fixed.shape) if scale_fixed != 0 else _empty(feat_fixed),
            ddf.new_empty(ddf.shape) if scale_ddf != 0 else _empty(ddf),
        )

    @torch.library.register_fake(lib + "local_ncc")
    def _(a, b, window, squared, eps, keep_sums, mean):
        sums = (5, *a.shape) if keep_sums else (0,)
        return a.new_empty(() if mean else a.shape), a.new_empty(sums, dtype=_acc_dtype(a.dtype))

    @torch.library.register_fake(lib + "local_ncc_backward")
    def _(grad, a, b, sums, window, squared, eps, a_grad, b_grad):
        return (a.new_empty(a.shape) if a_grad else _empty(a), b.new_empty(b.shape) if b_grad else _empty(b))

    # ---- autograd: each forward op's backward is another op of the same namespace ------
    def warp_setup(ctx, inputs, output):
        image, ddf, mode, padding_mode = inputs
        ctx.save_for_backward(image, ddf)
        ctx.mode, ctx.padding_mode = mode, padding_mode

    def warp_bwd(ctx, grad):
        image, ddf = ctx.saved_tensors
        need_i, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and ctx.mode != "nearest"
        gi = gd = None
        if need_i or need_d:
            gi, gd = ops.warp_backward(grad.contiguous(), image, ddf, ctx.mode, ctx.padding_mode, need_i, need_d)
        if ctx.needs_input_grad[1] and not need_d:  # nearest sampling: piecewise constant in ddf
            gd = torch.zeros_like(ddf)
        return (gi if need_i else None), gd, None, None

    torch.library.register_autograd(lib + "warp", warp_bwd, setup_context=warp_setup)

    # integrate_velocity's backward recomputes the fields; the forward of
    # integrate_velocity_with_fields returns checkpoints for its backward.
    # Second outputs take no gradient (checkpoints, the NCC's kept sums, GSS's
    # mask): they are non-differentiable, and set_materialize_grads(False)
    # spares autograd a zero fill of their size in every backward (5 MB per
    # call for the NCC's sums at 64^3). A backward may still be called with
    # no gradient for the first output (None: all zeros, as gradcheck's
    # check_undefined_grad does).
    def integrate_setup(ctx, inputs, output):
        velocity, num_steps, padding_mode = inputs
        ctx.save_for_backward(velocity, _empty(velocity))
        ctx.num_steps, ctx.every, ctx.padding_mode = num_steps, 1, padding_mode

    def integrate_with_fields_setup(ctx, inputs, output):
        velocity, num_steps, every, padding_mode = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(velocity, output[1])
        ctx.num_steps, ctx.every, ctx.padding_mode = num_steps, every, padding_mode

    def integrate_bwd(ctx, grad, *_fields_grad):
        if grad is None:
            return (None,) * len(ctx.needs_input_grad)
        velocity, fields = ctx.saved_tensors
        grad_v = ops.integrate_velocity_backward(
            grad.contiguous(), velocity, fields, ctx.num_steps, ctx.every, ctx.padding_mode
        )
        return (grad_v, *(None,) * (len(ctx.needs_input_grad) - 1))

    torch.library.register_autograd(lib + "integrate_velocity", integrate_bwd, setup_context=integrate_setup)
    torch.library.register_autograd(
        lib + "integrate_velocity_with_fields", integrate_bwd, setup_context=integrate_with_fields_setup
    )

    # With mean, the backward gives grad / the mask's sum to each voxel in
    # the mask (the mask's sum is piecewise constant in ddf).
    def gss_setup(ctx, inputs, output):
        feat_moving, feat_fixed, ddf, eps, s_m, s_f, s_d, mean = inputs
        ctx.mark_non_differentiable(output[1])  # the mask or its sum: piecewise constant in ddf
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(feat_moving, feat_fixed, ddf, output[1] if mean else _empty(ddf))
        ctx.eps = eps
        ctx.scales = (s_m, s_f, s_d)

    def gss_bwd(ctx, grad_cos, _mask_grad):
        if grad_cos is None:
            return (None,) * len(ctx.needs_input_grad)
        fm, ff, ddf, count = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        scales = [s if n else 0.0 for s, n in zip(ctx.scales, need)]
        if not any(scales):
            zeros = [torch.zeros_like(t) if n else None for t, n in zip((fm, ff, ddf), need)]
            return (*zeros, *(None,) * 5)
        if grad_cos.dim() == 0:
            grad_cos = (grad_cos / count.clamp_min(1e-6)).to(grad_cos.dtype)
        g = ops.gss_backward(grad_cos.contiguous(), fm, ff, ddf, ctx.eps, *scales)
        out = [
            gt if s != 0 else (torch.zeros_like(t) if n else None)
            for gt, s, t, n in zip(g, scales, (fm, ff, ddf), need)
        ]
        return (*out, *(None,) * 5)

    torch.library.register_autograd(lib + "gss", gss_bwd, setup_context=gss_setup)

    # The backward reads the box sums that a forward with keep_sums returned;
    # after one without (a direct call of the op), it sums them again.
    def ncc_setup(ctx, inputs, output):
        a, b, window, squared, eps, keep_sums, mean = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(a, b, output[1])
        ctx.args = (window, squared, eps)

    def ncc_bwd(ctx, grad, _sums_grad):
        a, b, sums = ctx.saved_tensors
        need_a, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad is None or not (need_a or need_b):
            return (None,) * 7
        if sums.numel() == 0:
            sums = ops.local_ncc(a, b, *ctx.args, True, False)[1]
        ga, gb = ops.local_ncc_backward(grad.contiguous(), a, b, sums, *ctx.args, need_a, need_b)
        return (ga if need_a else None), (gb if need_b else None), *(None,) * 5

    torch.library.register_autograd(lib + "local_ncc", ncc_bwd, setup_context=ncc_setup)


def compiled_with_cuda() -> bool:
    return bool(_LOADED) and bool(torch.ops.gemini.compiled_with_cuda())


def cpu_capability() -> str | None:
    """The instruction set of the CPU kernels in use ("default", "avx2" or
    "avx512"; the environment variable GEMINI_CPU_CAPABILITY caps it), or
    None without the compiled library."""
    return str(torch.ops.gemini.cpu_capability()) if _LOADED else None


def empty_cache() -> int:
    """Unmap the host memory that the CPU ops keep between calls and return its
    size in bytes (0 without the compiled library).

    Outputs and work buffers of 4 MiB and more live on huge pages that are
    kept for reuse once freed, up to ``GEMINI_CPU_CACHE_MB`` megabytes
    (default 1024; ``0`` keeps none), like torch's CUDA caching allocator:
    fresh pages every call cost page faults, and after other large frees the
    kernel's compaction for huge pages. This is what the cache holds between
    calls; :func:`cached_bytes` says how much."""
    return int(torch.ops.gemini.empty_cache()) if _LOADED else 0


def cached_bytes() -> int:
    """Bytes of host memory kept for reuse by the CPU ops (see :func:`empty_cache`)."""
    return int(torch.ops.gemini.cached_bytes()) if _LOADED else 0
