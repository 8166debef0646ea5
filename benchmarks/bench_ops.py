"""Time gemini_ops against MONAI and the plain PyTorch composition, side by side.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--size D H W] [--channels C]
                                   [--repeats N] [--threads T] [--json out.json]

For each case it prints the median (and min) forward and forward+backward
time, the peak extra memory of forward+backward (inputs excluded: CPU from
VmHWM - VmRSS after resetting the peak, CUDA from max_memory_allocated), and
the ratios MONAI / ours and composition / ours measured in this run.
Displacements and velocities are smooth random fields (max |u| 4 voxels).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import gemini_ops
from gemini_ops import reference


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_extra_mib(fn: Callable[[], None], device: str) -> float:
    """Peak memory above the level before the call, in MiB."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


def timings(fn: Callable[[], None], device: str, repeats: int) -> tuple[float, float]:
    """(median, min) wall time in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def measure(name: str, impl: str, forward: Callable[[], torch.Tensor], inputs: list, device: str, repeats: int):
    def fwd() -> None:
        with torch.no_grad():
            forward()

    def fwd_bwd() -> None:
        for t in inputs:
            t.grad = None
        forward().backward()

    fwd_med, fwd_min = timings(fwd, device, repeats)
    fb_med, fb_min = timings(fwd_bwd, device, repeats)
    mem = peak_extra_mib(fwd_bwd, device)
    for t in inputs:
        t.grad = None
    return {
        "case": name,
        "impl": impl,
        "fwd_ms": fwd_med,
        "fwd_min_ms": fwd_min,
        "fwd_bwd_ms": fb_med,
        "fwd_bwd_min_ms": fb_min,
        "peak_mib": mem,
    }


def monai_blocks():
    from monai.losses import LocalNormalizedCrossCorrelationLoss
    from monai.networks.blocks import DVF2DDF, Warp

    return Warp, DVF2DDF, LocalNormalizedCrossCorrelationLoss


def cases(size, channels: int, device: str):
    """(case, {impl: (forward returning a scalar, leaf inputs)})"""
    Warp, DVF2DDF, LNCC = monai_blocks()
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_()

    def smooth(*shape, max_abs=4.0):
        # displacements and velocities of a network are smooth: box-blurred
        # noise scaled to max |u| = max_abs voxels (noise would measure cache misses)
        x = torch.randn(*shape, generator=gen)
        for _ in range(3):
            x = F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
        return (x * (max_abs / x.abs().max())).to(device).requires_grad_()

    d, h, w = size
    image = rand(1, 1, d, h, w)
    velocity = smooth(1, 3, d, h, w)
    m_warp, m_int = Warp("bilinear", "zeros").to(device), DVF2DDF(7).to(device)
    yield (
        "integrate(7) + warp",
        {
            "ours": (
                lambda: gemini_ops.warp(image, gemini_ops.integrate_velocity(velocity, 7)).sum(),
                [image, velocity],
            ),
            "MONAI": (lambda: m_warp(image, m_int(velocity)).sum(), [image, velocity]),
            "composition": (
                lambda: reference.warp(image, reference.integrate_velocity(velocity, 7)).sum(),
                [image, velocity],
            ),
        },
    )
    ddf = smooth(1, 3, d, h, w)
    yield (
        "warp",
        {
            "ours": (lambda: gemini_ops.warp(image, ddf).sum(), [image, ddf]),
            "MONAI": (lambda: m_warp(image, ddf).sum(), [image, ddf]),
        },
    )
    fm, ff = rand(1, channels, d, h, w), rand(1, channels, d, h, w)
    m_near = Warp("nearest", "zeros").to(device)

    def gss_composition() -> torch.Tensor:
        warped = m_warp(fm, ddf)
        cos = F.cosine_similarity(warped, ff, dim=1).unsqueeze(1)
        mask = m_near(torch.ones_like(image), ddf.detach())
        return (cos * mask).sum() / mask.sum().clamp_min(1e-6)

    yield (
        f"GSS (C={channels})",
        {
            "ours": (lambda: gemini_ops.gss_similarity(fm, ff, ddf), [fm, ff, ddf]),
            "MONAI": (gss_composition, [fm, ff, ddf]),
        },
    )
    a, b = rand(1, 1, d, h, w), rand(1, 1, d, h, w)
    m_lncc = LNCC(spatial_dims=3, kernel_size=9, kernel_type="rectangular")
    yield (
        "local NCC (window 9)",
        {
            "ours": (lambda: gemini_ops.local_ncc(a, b, 9), [a, b]),
            "MONAI": (lambda: m_lncc(a, b), [a, b]),
            "composition": (lambda: reference.local_ncc_map(a, b, 9).mean(), [a, b]),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--size", type=int, nargs=3, default=(96, 96, 96), metavar=("D", "H", "W"))
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU")
    torch.set_num_threads(args.threads)
    gemini_ops.set_finite_checks(False)  # time the ops, not the input validation
    info = gemini_ops.backend_info()
    machine = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine()
    print(
        f"# {time.strftime('%Y-%m-%d')} {args.device} ({machine}), {args.threads} threads, torch {torch.__version__}, "
        f"size {tuple(args.size)}, float32, batch 1, compiled={info['compiled']}, load {os.getloadavg()[0]:.2f}"
    )
    rows = []
    print("| case | impl | fwd ms (min) | fwd+bwd ms (min) | peak MiB | fwd ÷ ours | fwd+bwd ÷ ours | peak ÷ ours |")
    print("|" + "---|" * 8)
    for name, impls in cases(tuple(args.size), args.channels, args.device):
        results = {
            impl: measure(name, impl, fn, inputs, args.device, args.repeats) for impl, (fn, inputs) in impls.items()
        }
        ours = results["ours"]
        for impl, r in results.items():
            r["fwd_ratio"] = r["fwd_ms"] / ours["fwd_ms"]
            r["fwd_bwd_ratio"] = r["fwd_bwd_ms"] / ours["fwd_bwd_ms"]
            r["peak_ratio"] = r["peak_mib"] / max(ours["peak_mib"], 1e-3)
            print(
                f"| {name} | {impl} | {r['fwd_ms']:.1f} ({r['fwd_min_ms']:.1f}) | {r['fwd_bwd_ms']:.1f} "
                f"({r['fwd_bwd_min_ms']:.1f}) | {r['peak_mib']:.1f} | {r['fwd_ratio']:.1f}x | {r['fwd_bwd_ratio']:.1f}x "
                f"| {r['peak_ratio']:.1f}x |"
            )
            rows.append(r)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "backend": info, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
