"""Tests, named after the modules they test; their servers and synthetic months are in `tasks.testing`."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
