"""Time gemini_ops against MONAI and the plain PyTorch composition, side by side.

    python benchmarks/bench_ops.py [--device cpu|cuda] [--sizes 64 96 128 | --size D H W] [--threads 2 1]
                                   [--paths avx2 avx512] [--cases integrate warp gss ncc step]
                                   [--channels C] [--repeats N] [--min-time S] [--composition]
                                   [--busy-core] [--finite-checks] [--json out.json]

For each size, thread count and case it prints one table: the forward and
forward+backward time (min over the samples after a warm-up; median in
brackets), the peak extra memory of forward+backward (inputs excluded: CPU
from VmHWM - VmRSS after resetting the peak and emptying our host-page
cache, CUDA from max_memory_allocated), the memory our ops keep for the next
call once it returns ("kept", gemini_ops.cached_bytes()),
and MONAI / this row, computed from the min times of this run. ``--paths``
measures our CPU kernels on each forced instruction set (see
GEMINI_CPU_CAPABILITY in csrc/cpu/capability.h) next to the same MONAI rows.
Displacements and velocities are smooth random fields (max |u| 4 voxels).
A table's rows are timed in rounds that call each row once in turn, at least
``--repeats`` rounds and ``--min-time`` seconds of them, so every row has as
many samples and a burst of other work slows all rows alike.

``--cases step`` prints one squaring step's forward against the memory
floor (reading and writing the field once at the bandwidth of a 256 MiB copy,
same thread count; target <= 4x).

``--busy-core`` keeps one core busy with a spinning process during the
measurements (a shared workstation or CI runner), and also times ours on one
thread with no busy process, printing "busy ÷ idle 1 thread" for each of our
rows: the robustness target is <= 1.5.

The ops are timed without the NaN/Inf check of displacements that users get
by default (gemini_ops.set_finite_checks); ``--finite-checks`` keeps it on.

The OpenMP runtime is started with OMP_WAIT_POLICY=PASSIVE unless the
environment sets it: waiting threads sleep instead of spinning, so they give
a shared core back (see benchmarks/RESULTS.md, "Shared cores").
"""

from __future__ import annotations

import os

# before torch loads the OpenMP runtime, which reads it once
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import gemini_ops  # noqa: E402
from gemini_ops import reference  # noqa: E402

CASES = ("integrate", "warp", "gss", "ncc", "step")
PATHS = ("default", "avx2", "avx512")


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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    if hasattr(torch.ops.gemini, "empty_cache"):
        torch.ops.gemini.empty_cache()  # its pages count as this call's
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _rss_kib("VmRSS")
    fn()
    return (_rss_kib("VmHWM") - base) / 1024


def side_by_side(fns: dict, device: str, repeats: int, min_time: float) -> dict:
    """{label: (min, median) wall time in ms} of each callable after one
    warm-up call each, timed in rounds that call every one in turn: at least
    `repeats` rounds and at least `min_time` seconds of rounds. A burst of
    other work on a shared machine then slows every row of a table alike,
    and every row has the same number of samples to take its min from. Each
    round starts one further along: whichever runs right after another pays
    for the memory that one freed (at 128^3, the row after MONAI's took 1.7x
    as long), and each row does so equally often."""
    for fn in fns.values():
        fn()
    times = {label: [] for label in fns}
    order = list(fns.items())
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < repeats or time.perf_counter() - start < min_time:
        shift = len(times[order[0][0]]) % len(order)
        for label, fn in order[shift:] + order[:shift]:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[label].append((time.perf_counter() - t0) * 1e3)
    return {label: (min(t), statistics.median(t)) for label, t in times.items()}


def measure(impls: dict, device: str, repeats: int, min_time: float) -> dict:
    """{label: row} for impls {label: (select, forward returning a scalar,
    leaf inputs)}, select() run before each call (our instruction-set path):
    the forward and forward+backward times side by side, then each one's
    peak extra memory."""

    def fwd(select, forward, inputs) -> Callable[[], None]:
        def run() -> None:
            select()
            with torch.no_grad():
                forward()

        return run

    def fwd_bwd(select, forward, inputs) -> Callable[[], None]:
        def run() -> None:
            select()
            for t in inputs:
                t.grad = None
            forward().backward()

        return run

    f = side_by_side({label: fwd(*impl) for label, impl in impls.items()}, device, repeats, min_time)
    fb = side_by_side({label: fwd_bwd(*impl) for label, impl in impls.items()}, device, repeats, min_time)
    rows = {}
    for label, impl in impls.items():
        rows[label] = {"fwd_ms": f[label][0], "fwd_med_ms": f[label][1], "fwd_bwd_ms": fb[label][0]}
        rows[label].update(fwd_bwd_med_ms=fb[label][1], peak_mib=peak_extra_mib(fwd_bwd(*impl), device))
        rows[label]["kept_mib"] = gemini_ops.cached_bytes() / 2**20
        for t in impl[2]:
            t.grad = None
    return rows


def monai_blocks():
    from monai.losses import LocalNormalizedCrossCorrelationLoss
    from monai.networks.blocks import DVF2DDF, Warp

    return Warp, DVF2DDF, LocalNormalizedCrossCorrelationLoss


def smooth_field(shape, gen: torch.Generator, max_abs: float = 4.0) -> torch.Tensor:
    """Displacements and velocities of a network are smooth: box-blurred
    noise scaled to max |u| = max_abs voxels (noise would measure cache misses)."""
    x = torch.randn(*shape, generator=gen)
    for _ in range(3):
        x = F.avg_pool3d(x, 5, stride=1, padding=2, count_include_pad=False)
    return x * (max_abs / x.abs().max())


def cases(size, channels: int, device: str, wanted: tuple, composition: bool):
    """(case, {impl: (forward returning a scalar, leaf inputs)}); impl "ours" is
    measured once per instruction-set path."""
    Warp, DVF2DDF, LNCC = monai_blocks()
    gen = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_()

    d, h, w = size
    image = rand(1, 1, d, h, w)
    velocity = smooth_field((1, 3, d, h, w), gen).to(device).requires_grad_()
    ddf = smooth_field((1, 3, d, h, w), gen).to(device).requires_grad_()
    m_warp, m_int = Warp("bilinear", "zeros").to(device), DVF2DDF(7).to(device)
    if "integrate" in wanted:
        impls = {
            "ours": (
                lambda: gemini_ops.warp(image, gemini_ops.integrate_velocity(velocity, 7)).sum(),
                [image, velocity],
            ),
            "MONAI": (lambda: m_warp(image, m_int(velocity)).sum(), [image, velocity]),
        }
        if composition:
            impls["composition"] = (
                lambda: reference.warp(image, reference.integrate_velocity(velocity, 7)).sum(),
                [image, velocity],
            )
        yield "integrate(7) + warp", impls
    if "warp" in wanted:
        yield (
            "warp",
            {
                "ours": (lambda: gemini_ops.warp(image, ddf).sum(), [image, ddf]),
                "MONAI": (lambda: m_warp(image, ddf).sum(), [image, ddf]),
            },
        )
    if "gss" in wanted:
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
    if "ncc" in wanted:
        a, b = rand(1, 1, d, h, w), rand(1, 1, d, h, w)
        m_lncc = LNCC(spatial_dims=3, kernel_size=9, kernel_type="rectangular")
        impls = {
            "ours": (lambda: gemini_ops.local_ncc(a, b, 9), [a, b]),
            "MONAI": (lambda: m_lncc(a, b), [a, b]),
        }
        if composition:
            impls["composition"] = (lambda: reference.local_ncc_map(a, b, 9).mean(), [a, b])
        yield "local NCC (window 9)", impls


def squaring_step_vs_floor(size, device: str, repeats: int, min_time: float) -> tuple[float, float]:
    """(ms of one squaring step's forward, ms of the memory floor): the step
    is the marginal cost (t(7 steps) - t(1 step)) / 6 of the integration
    forward; the floor is the time to move the bytes a step must move (read
    the field once, write one) at the main-memory bandwidth of a copy of a
    buffer larger than the caches, at the same thread count."""
    v = smooth_field((1, 3, *size), torch.Generator().manual_seed(1)).to(device)
    big = torch.empty(2**26, device=device)  # 256 MiB
    big_out = torch.empty_like(big)
    with torch.no_grad():
        t = side_by_side(
            {
                7: lambda: gemini_ops.integrate_velocity(v, 7),
                1: lambda: gemini_ops.integrate_velocity(v, 1),
                "copy": lambda: big_out.copy_(big),
            },
            device,
            repeats,
            min_time,
        )
    t7, t1, copy = t[7][0], t[1][0], t["copy"][0]
    bytes_per_ms = 2 * big.numel() * big.element_size() / copy
    return (t7 - t1) / 6, 2 * v.numel() * v.element_size() / bytes_per_ms


def _keep() -> None:
    """select() of rows that are not our forced instruction sets."""


def _spin() -> None:
    while True:
        pass


class BusyCore:
    """A process spinning on one core while the block runs."""

    def __init__(self, enabled: bool):
        self.proc = multiprocessing.get_context("spawn").Process(target=_spin, daemon=True) if enabled else None

    def __enter__(self):
        if self.proc is not None:
            self.proc.start()
            time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.join()


def _parse_size(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"a size is N or DxHxW with positive ints, got {text!r}")
    return tuple(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--sizes", type=_parse_size, nargs="+", default=[(64,) * 3, (96,) * 3, (128,) * 3])
    parser.add_argument("--size", type=int, nargs=3, metavar=("D", "H", "W"), help="one size instead of --sizes")
    parser.add_argument("--threads", type=int, nargs="+", default=[min(2, os.cpu_count() or 1)])
    parser.add_argument(
        "--paths", nargs="+", choices=PATHS, help="CPU instruction sets of ours (default: the active one)"
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="at least this many rounds of each table's rows")
    parser.add_argument(
        "--min-time", type=float, default=2.0, help="and at least this many seconds of rounds (per fwd / fwd+bwd)"
    )
    parser.add_argument("--composition", action="store_true", help="also time the plain PyTorch composition")
    parser.add_argument("--busy-core", action="store_true", help="keep one core busy with another process")
    parser.add_argument(
        "--finite-checks",
        action="store_true",
        help="keep the NaN/Inf check of displacements on, as users get it by default (off: the ops alone)",
    )
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.size:
        args.sizes = [tuple(args.size)]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU")
    gemini_ops.set_finite_checks(args.finite_checks)
    info = gemini_ops.backend_info()
    # our CPU kernels' instruction-set switch (absent from builds before it)
    ops = torch.ops.gemini if info["compiled"] and hasattr(torch.ops.gemini, "cpu_capability") else None
    active = str(ops.cpu_capability()) if ops is not None else "reference"
    paths = args.paths or [active]
    if args.device == "cpu" and ops is not None:
        for p in paths:
            if ops.set_cpu_capability(p) != p:
                parser.error(f"--paths {p}: this CPU lacks it (it supports up to {ops.set_cpu_capability('avx512')})")
        ops.set_cpu_capability(active)
    machine = torch.cuda.get_device_name() if args.device == "cuda" else cpu_name()
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} {args.device} ({machine}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, float32, batch 1, compiled={info['compiled']}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, busy core={args.busy_core}, finite checks={args.finite_checks}, "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    rows = []
    for size in args.sizes:
        for threads in args.threads:
            if "step" in args.cases:
                torch.set_num_threads(threads)
                print(
                    f"\n## one squaring step's forward vs the memory floor, {'x'.join(map(str, size))}, {threads} thread(s)"
                )
                print(
                    "| impl | step ms | floor ms (2 x field bytes at copy bandwidth) | step ÷ floor |\n|---|---|---|---|"
                )
                for p in paths:
                    if args.device == "cpu" and ops is not None:
                        ops.set_cpu_capability(p)
                    step, floor = squaring_step_vs_floor(size, args.device, args.repeats, args.min_time)
                    print(f"| ours ({p}) | {step:.2f} | {floor:.2f} | {step / floor:.1f}x |", flush=True)
                    rows.append(dict(case="step", impl=p, size=size, threads=threads, step_ms=step, floor_ms=floor))
                if ops is not None:
                    ops.set_cpu_capability(active)
            for name, impls in cases(size, args.channels, args.device, tuple(args.cases), args.composition):
                print(f"\n## {name}, {'x'.join(map(str, size))}, {threads} thread(s), load {os.getloadavg()[0]:.2f}")
                header = (
                    "| impl | fwd ms (median) | fwd+bwd ms (median) | peak MiB | kept MiB | MONAI ÷ this, fwd | fwd+bwd "
                    "| peak |"
                )
                if args.busy_core:
                    header += " busy ÷ idle 1 thread |"
                print(header)
                print("|" + "---|" * (header.count("|") - 1))
                entries = {}
                for impl, (fn, inputs) in impls.items():
                    for p in paths if impl == "ours" else [None]:
                        forced = p is not None and args.device == "cpu" and ops is not None
                        label = f"ours ({p})" if forced else impl
                        entries[label] = (functools.partial(ops.set_cpu_capability, p) if forced else _keep, fn, inputs)
                idle = {}
                if args.busy_core:
                    torch.set_num_threads(1)
                    idle = measure({k: v for k, v in entries.items() if k != "MONAI"}, args.device, args.repeats, 0.0)
                torch.set_num_threads(threads)
                with BusyCore(args.busy_core):
                    results = measure(entries, args.device, args.repeats, args.min_time)
                if ops is not None:
                    ops.set_cpu_capability(active)
                monai = results["MONAI"]
                for label, r in results.items():
                    r.update(case=name, impl=label, size=size, threads=threads, busy_core=args.busy_core)
                    r["monai_fwd_ratio"] = monai["fwd_ms"] / r["fwd_ms"]
                    r["monai_fwd_bwd_ratio"] = monai["fwd_bwd_ms"] / r["fwd_bwd_ms"]
                    r["monai_peak_ratio"] = monai["peak_mib"] / max(r["peak_mib"], 1e-3)
                    line = (
                        f"| {label} | {r['fwd_ms']:.1f} ({r['fwd_med_ms']:.1f}) | {r['fwd_bwd_ms']:.1f} "
                        f"({r['fwd_bwd_med_ms']:.1f}) | {r['peak_mib']:.1f} | {r['kept_mib']:.0f} | {r['monai_fwd_ratio']:.1f}x "
                        f"| {r['monai_fwd_bwd_ratio']:.1f}x | {r['monai_peak_ratio']:.2f}x |"
                    )
                    if args.busy_core:
                        if label in idle:
                            r["idle_1thread_fwd_bwd_ms"] = idle[label]["fwd_bwd_ms"]
                            r["busy_over_idle"] = r["fwd_bwd_ms"] / idle[label]["fwd_bwd_ms"]
                            line += f" {r['busy_over_idle']:.2f} ({idle[label]['fwd_bwd_ms']:.1f} ms idle) |"
                        else:
                            line += " |"
                    print(line, flush=True)
                    rows.append(r)
    print(f"\n# load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": {k: v for k, v in vars(args).items()}, "backend": info, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
