"""`basemap --help` and its commands' help answer without loading Prefect or the pipeline, and speak to users."""

import argparse
import json
import subprocess
import sys

import pytest

from flows.arguments import backfill_parser, run_parser
from tests import REPO_ROOT

HEAVY_MODULES = ("prefect", "torch", "rasterio", "geopandas", "tasks.masking.ocm")
"""What a help text must not import: the orchestrator, the model, the geospatial stack."""
HELP_TIMEOUT_S = 60.0
HELP_PROBE = """
import json, sys
from flows.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
print(json.dumps({{"status": status, "imported": [name for name in {heavy!r} if name in sys.modules]}}))
"""


def help_of(*command: str) -> tuple[str, dict]:
    """(the help text, {status, imported heavy modules}) of `basemap <command> --help`, in a fresh interpreter."""
    probe = HELP_PROBE.format(heavy=HEAVY_MODULES)
    done = subprocess.run(
        [sys.executable, "-c", probe, *command, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=HELP_TIMEOUT_S
    )
    text, _, outcome = done.stdout.rstrip().rpartition("\n")
    return text, json.loads(outcome)


@pytest.mark.parametrize("command", [(), ("run",), ("backfill",)], ids=["basemap", "run", "backfill"])
def test_help_answers_without_prefect_torch_or_the_geospatial_stack(command: tuple[str, ...]) -> None:
    text, outcome = help_of(*command)

    assert outcome == {"status": 0, "imported": []}, outcome
    assert f"usage: basemap {' '.join(command)}".rstrip() in text and "examples:\n  basemap " in text, text


@pytest.mark.parametrize("parser", [run_parser(), backfill_parser()], ids=["run", "backfill"])
def test_every_option_has_a_line_for_users(parser: argparse.ArgumentParser) -> None:
    options = [action for action in parser._actions if action.option_strings]
    assert all(action.help for action in options), [action.dest for action in options if not action.help]
    assert "Settings" not in parser.format_help(), "no class names in help"


def test_run_says_it_builds_one_month_and_backfill_a_range() -> None:
    assert "one month" in run_parser().description and "backfill" not in run_parser().description.lower()
    assert "range" in backfill_parser().description
