"""The CPU kernels are compiled once per instruction set (csrc/cpu/isa_*.cpp).
An unoptimised build emits inline functions out of line in every object,
and the linker keeps one copy of each for all of them; a copy from the AVX2
or AVX-512 object would then run in the portable kernels and stop an older
CPU (illegal instruction). Our own code lives in a namespace per instruction
set (GEMINI_ISA_BEGIN), and the library headers are included before the
target pragmas (csrc/cpu/portable_includes.h), so every inline function the
objects share is portable code. Compiles the three objects at -O0 (seconds)
and reads them with nm and objdump."""

import os
import platform
import re
import shutil
import subprocess

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
TOOLS = ("g++", "nm", "objdump", "c++filt")

pytestmark = pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or not all(shutil.which(t) for t in TOOLS),
    reason="needs an x86-64 host with g++ and binutils",
)

# the sanitizer run preloads its runtimes into the tests; the compiler needs none
ENV = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


def _run(cmd, **kw):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True, **kw).stdout


def _object(tmp_path, name):
    out = str(tmp_path / f"{name}.o")
    flags = ["-O0", "-std=c++20", "-fopenmp", "-Icsrc/include", "-Icsrc", "-w"]
    _run(["g++", *flags, "-c", f"csrc/cpu/{name}.cpp", "-o", out], cwd=ROOT)
    return out


def _weak(obj):
    return {line.split()[-1] for line in _run(["nm", obj]).splitlines() if " W " in line}


def _vector_code(obj, symbol):
    """The AVX/AVX-512 (VEX/EVEX: mnemonics v...) instructions of `symbol`."""
    code = _run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={symbol}", obj])
    return re.findall(r"^\s+[0-9a-f]+:\s+(v[a-z0-9]+)", code, flags=re.M)


def test_inline_code_shared_between_objects_is_portable(tmp_path):
    objects = {n: _object(tmp_path, n) for n in ("isa_default", "isa_avx2", "isa_avx512")}
    portable = _weak(objects["isa_default"])
    for name in ("isa_avx2", "isa_avx512"):
        shared = _weak(objects[name]) & portable
        assert shared, "no shared inline functions: the check would see nothing"
        wide = {s: _vector_code(objects[name], s) for s in shared}
        wide = {s: v for s, v in wide.items() if v}
        names = _run(["c++filt", *wide]).splitlines() if wide else []
        assert not wide, f"{name}: shared inline functions with AVX code: {names}"
