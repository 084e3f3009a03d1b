"""Shared fixtures: paths to the real data under ../shared/data, and the Slicer-side helpers on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
SHARED_DATA = REPOSITORY.parent / "shared" / "data"

# SegMoTELib lives beside the Slicer module, outside the pip package.
sys.path.insert(0, str(REPOSITORY / "SegMoTESlicer"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of the real test images; the tests need it beside the repository."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}: clone the repository next to the shared/ folder")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bare_engine():
    """The LiteMedSAM backbone without adapters, on the CPU, fp32: the reference path of the tests."""
    from segmote.engine.predictor import Engine

    return Engine.load("lite-medsam", adapters="none", device="cpu")
