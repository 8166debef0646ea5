"""Fixtures of the gemini_semi bundle tests: a tiny generated data set and
one tiny trained bundle, both made once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from gemini_semi_support import bundle_command, run


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16^3 sample set: 1 labelled, 3 unlabelled, 1 validation, 2 test subjects."""
    from gemini_dcl.sample_data import make_sample_dataset

    out = tmp_path_factory.mktemp("tiny_data")
    return make_sample_dataset(out, subjects=7, size=(16, 16, 16), seed=1, labeled=1, validation=1, test=2)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """A bundle root after 2 training iterations through the MONAI CLI."""
    root = tmp_path_factory.mktemp("trained")
    run(
        bundle_command(
            "run",
            ["train"],
            root,
            "--max_epochs",
            "1",
            "--epoch_length",
            "2",
            "--save_interval",
            "1",
            datalist=tiny_data,
        )
    )
    return root
