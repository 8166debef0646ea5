"""One squaring step's forward on one thread: ours against lower bounds of
its design and the memory floor, side by side in rounds.

    python benchmarks/step_bounds.py [--size D H W] [--rounds 3] [--repeats 10] [--cxx c++]

The issue's target is a step within 4x of the memory floor (``bench_ops.py
--cases step``). This asks how close the design of our kernels can get: it
compiles ``benchmarks/step_bounds.cpp`` (AVX2 + FMA, no torch) and times
four stripped steps on the same levels as our integration's marginal steps
(u_1 ... u_6 of ``integrate_velocity(v, 7)``, v the benchmark's smooth
velocity): ``setup`` (sample points, offsets, fractions and one store a
voxel), ``half`` (plus 2 row loads, what a layout of twice the bytes would
need), ``loads`` (plus the 4 row loads a sample needs on interleaved
levels) and ``trilinear`` (plus the interpolation: the step without zero
padding), each on a level it has just read (in the caches, as a step's
input is). Each round also times our step on each instruction-set path as
``bench_ops.py`` does ((t(7 steps) - t(1 step)) / 6) with its floor, which
the bound rows share (the last path's, measured just before them). The
trilinear kernel's step is checked against the reference on the voxels
whose corners all lie inside; a mismatch stops the run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ops import cpu_name, smooth_field, squaring_step_vs_floor  # noqa: E402

import gemini_ops  # noqa: E402
from gemini_ops import reference  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_bounds.cpp")
LEVELS = 6  # the inputs of the marginal steps 2..7


def levels(size) -> torch.Tensor:
    """u_1 ... u_6 of the integration of the benchmark's velocity, (6, 1, 3, *size)."""
    v = smooth_field((1, 3, *size), torch.Generator().manual_seed(1))
    with torch.no_grad():
        # u_k = k squarings of v / 2^7 = integrate_velocity(v * 2^k / 2^7, k)
        return torch.stack([gemini_ops.integrate_velocity(v * 2.0**k / 128, k) for k in range(1, LEVELS + 1)])


def interleaved(fields: torch.Tensor) -> torch.Tensor:
    """(N, 1, 3, D, H, W) -> (N, D, H, W, 4) with a zero after each voxel's components."""
    out = torch.zeros(*fields.shape[:1], *fields.shape[3:], 4)
    out[..., :3] = fields[:, 0].permute(0, 2, 3, 4, 1)
    return out


def build(cxx: str, into: str) -> str:
    exe = os.path.join(into, "step_bounds")
    cmd = [cxx, "-O3", "-mavx2", "-mfma", "-std=c++17", "-o", exe, SOURCE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"step_bounds: `{' '.join(cmd)}` failed:\n{done.stderr}")
    return exe


def check(u1: torch.Tensor, path: str) -> float:
    """Largest |difference| of the trilinear kernel's step of u_1 from the
    reference's, over voxels whose corners all lie inside (the kernel clamps
    corners where ours pads with zeros)."""
    d, h, w = u1.shape[2:]
    got = torch.from_file(path, size=d * h * w * 4, dtype=torch.float32).view(d, h, w, 4)[..., :3]
    want = (u1 + reference.warp(u1, u1, "bilinear", "zeros"))[0].permute(1, 2, 3, 0)
    grid = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in (d, h, w)], indexing="ij")
    inside = torch.ones(d, h, w, dtype=torch.bool)
    for axis, n in enumerate((d, h, w)):
        lo = torch.floor(grid[axis] + u1[0, axis])
        inside &= (lo >= 0) & (lo + 1 <= n - 1)
    if inside.sum() < inside.numel() // 2:
        raise SystemExit("step_bounds: fewer than half the voxels have every corner inside; use a larger --size")
    return (got - want)[inside].abs().max().item()


def run_bounds(exe: str, level_file: str, size, repeats: int, out_file: str) -> dict:
    cmd = [exe, level_file, *map(str, size), str(LEVELS), str(repeats), out_file]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"step_bounds: {' '.join(cmd)} failed:\n{done.stderr}")
    return {name: float(ms) for name, ms in (line.split() for line in done.stdout.split("\n") if line)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, nargs=3, default=[96, 96, 96])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cxx", default=os.environ.get("CXX", "c++"))
    args = ap.parse_args(argv)
    if min(args.size) < 4 or args.rounds < 1 or args.repeats < 1:
        ap.error("--size needs 3 sizes >= 4; --rounds and --repeats must be >= 1")
    if shutil.which(args.cxx) is None:
        ap.error(f"--cxx {args.cxx!r}: no such compiler on PATH")
    paths = [p for p in ("avx2", "avx512") if torch.ops.gemini.set_cpu_capability(p) == p]
    if "avx2" not in paths:
        raise SystemExit("step_bounds: the bound kernels need AVX2 + FMA, which this CPU lacks")
    torch.set_num_threads(1)
    u = levels(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(args.cxx, tmp)
        level_file, out_file = os.path.join(tmp, "levels.bin"), os.path.join(tmp, "out.bin")
        interleaved(u).numpy().tofile(level_file)
        print(
            f"# one squaring step's forward, {'x'.join(map(str, args.size))}, 1 thread, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {cpu_name()}, "
            f"torch {torch.__version__}"
        )
        print("| round | kernel | step ms | floor ms | step ÷ floor |\n|---|---|---|---|---|")
        for r in range(1, args.rounds + 1):
            for p in paths:
                torch.ops.gemini.set_cpu_capability(p)
                step, floor = squaring_step_vs_floor(args.size, "cpu", args.repeats, 0.0)
                print(f"| {r} | ours ({p}) | {step:.2f} | {floor:.2f} | {step / floor:.1f}x |", flush=True)
            t = run_bounds(exe, level_file, args.size, args.repeats, out_file)
            for name in ("setup", "half", "loads", "trilinear"):
                print(f"| {r} | {name} | {t[name]:.2f} | {floor:.2f} | {t[name] / floor:.1f}x |", flush=True)
            err = check(u[0], out_file)
            if err > 1e-5:
                raise SystemExit(f"step_bounds: the trilinear kernel's step is off the reference by {err:.3g}")
    torch.ops.gemini.set_cpu_capability(paths[-1])


if __name__ == "__main__":
    main()
