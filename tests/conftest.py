"""Shared fixtures. Servers run on 127.0.0.1 only and are started and stopped here."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_S2 = Path(os.environ.get("S2_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "s2"))


@pytest.fixture(scope="session")
def shared_s2() -> Path:
    """The real Sentinel-2 reference data folder; the test is skipped when it is absent."""
    if not SHARED_S2.is_dir():
        pytest.skip(f"real Sentinel-2 data not found at {SHARED_S2} (set S2_SHARED_DATA to its folder)")
    return SHARED_S2
