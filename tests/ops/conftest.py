"""Shared settings of the gemini_ops tests: Hypothesis profiles.

``HYPOTHESIS_PROFILE=ci`` (the default) runs the fuzz tests with enough
examples to reach >= 200 per run in total; ``dev`` is quicker, ``thorough``
runs many more.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings
from opsutil import CPU_PATHS, supported_cpu_paths

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=False,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("dev", max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread():
    """Run a test with one intra-op thread. For tests that call an op hundreds
    of times on tiny inputs (gradcheck, fuzzing): on a loaded 2-core machine
    every OpenMP barrier of a 2-thread launch can wait a scheduler slice.
    The comparisons against the reference run with the default thread count,
    so the parallel paths (per-thread accumulation, atomics) are tested there."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(params=CPU_PATHS)
def path(request):
    """The CPU kernels forced to one instruction set, if this CPU has it."""
    if request.param not in supported_cpu_paths():
        pytest.skip(f"this CPU lacks {request.param}")
    ops = torch.ops.gemini
    before = ops.cpu_capability()
    assert ops.set_cpu_capability(request.param) == request.param
    yield request.param
    ops.set_cpu_capability(before)


@pytest.fixture(params=[1, 2])
def threads(request):
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)
