"""Tests, named after the modules they test, and the synthetic-month generator shared with the demo."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
