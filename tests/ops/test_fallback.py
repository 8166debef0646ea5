"""Without the compiled library (none at the path given, or a file that
does not load), importing works, warns once saying why, and the reference
serves every op."""

import os
import subprocess
import sys

import pytest

SCRIPT = """
import sys
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import torch
    import gemini_ops
    info = gemini_ops.backend_info()
    image = torch.rand(1, 2, 5, 6, 7)
    ddf = torch.randn(1, 3, 5, 6, 7)
    out = gemini_ops.warp(image, ddf)
    ref = gemini_ops.reference.warp(image, ddf)
    gemini_ops.local_ncc(image, image, 3)
messages = [str(w.message) for w in caught if "reference runs instead" in str(w.message)]
assert len(messages) == 1, messages
assert sys.argv[1] in messages[0], messages[0]
assert info["compiled"] is False and info["emulated"] is False and info["reference"] is True, info
assert torch.equal(out, ref)
try:
    gemini_ops.warp(image, ddf, backend="compiled")
except RuntimeError as exc:
    assert "needs the compiled library" in str(exc)
else:
    raise AssertionError("backend='compiled' ran without the library")
print("ok")
"""


@pytest.mark.parametrize("broken", [False, True], ids=["missing", "not-a-library"])
def test_import_without_library_falls_back_to_reference(tmp_path, broken):
    path, why = str(tmp_path / "missing" / "_C.so"), "does not name a file"
    if broken:
        path, why = str(tmp_path / "_C.so"), "failed"
        (tmp_path / "_C.so").write_text("not a shared library")
    env = dict(os.environ, GEMINI_OPS_LIBRARY=path)
    done = subprocess.run([sys.executable, "-c", SCRIPT, why], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
