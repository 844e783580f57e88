"""Run one monthly mosaic, or a backfill of a range of months, from the command line, without a deployment.

    basemap run --aoi field.gpkg --month 2024-06               (or: python -m flows.run ...)
    basemap backfill --settings lake.yaml --start-month 2024-01 --end-month 2024-12

The options are `flows.arguments`'. `--settings` takes a YAML or JSON file of `MosaicSettings` fields
(the same shape as a deployment's `parameters.settings` in prefect.yaml); the other options override
it. Bad input ends with one line on stderr naming the problem, and exit status 2; a run that fails (no
scene, too many failed scenes, a products store that does not answer, failed months of a backfill, any
other error) ends with one line, its reason, and status 1. Tracebacks, in Prefect's logs too, only with
`--debug`.
"""

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from blocks.slack import RunReport
from flows.arguments import backfill_parser, run_parser
from flows.embedded_api import startup_failure, waiting_long_enough
from flows.parameters import MosaicSettings
from tasks.core.errors import MosaicError, first_line
from tasks.core.logs import errors_in_one_line
from tasks.core.month import Month

__all__ = ["backfill_main", "failure_line", "main", "print_report", "run_backfill", "run_month"]

INPUT_ERROR_STATUS = 2
RUN_FAILED_STATUS = 1


def settings_from_arguments(arguments: argparse.Namespace) -> MosaicSettings:
    """The settings file's fields, with the command-line options on top."""
    fields: dict[str, Any] = {}
    if arguments.settings:
        text = Path(arguments.settings).read_text()
        fields = json.loads(text) if arguments.settings.endswith(".json") else yaml.safe_load(text) or {}
        if not isinstance(fields, dict):
            raise ValueError("it holds no mapping of settings")
    overrides = {
        "aoi": arguments.aoi,
        "month": getattr(arguments, "month", None),  # a backfill has a range instead
        "output_dir": arguments.output_dir,
        "workspace": arguments.workspace,
    }
    fields.update({name: value for name, value in overrides.items() if value is not None})
    if arguments.masker:
        fields["mask"] = {**(fields.get("mask") or {}), "masker": arguments.masker}
    return MosaicSettings.model_validate(fields)


def first_validation_problem(error: ValidationError) -> str:
    """'field.path: message' of the first problem pydantic found."""
    problem = error.errors()[0]
    location = ".".join(str(part) for part in problem["loc"]) or "settings"
    return f"{location}: {problem['msg']}"


def print_report(report: RunReport) -> None:
    """The run's figures and where each product is."""
    valid = f"{report.valid_share:.1%}" if report.valid_share is not None else "n/a"
    filled = f", {report.filled_share:.1%} filled from other months" if report.filled_share is not None else ""
    skipped = (report.scenes_found or 0) - (report.scenes_used or 0) - len(report.failed_scenes)
    left_out = f" ({skipped} skipped: metadata.json says why)" if skipped > 0 else ""
    print(f"\nBasemap {report.aoi} {report.month}: {report.scenes_used} of {report.scenes_found} scenes used{left_out}, "
          f"{valid} of the AOI has a clear value{filled}.")
    for scene_id, reason in report.failed_scenes:
        print(f"  failed     {scene_id}: {reason}")
    for product, location in report.product_urls.items():
        print(f"  {product:10s} {location}")


def checked_settings(arguments: argparse.Namespace) -> MosaicSettings | None:
    """The settings the arguments give, or None after printing the one-line problem."""
    try:
        settings = settings_from_arguments(arguments)
    except ValidationError as error:
        print(f"error: {first_validation_problem(error)}", file=sys.stderr)
        return None
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"error: settings file {arguments.settings} cannot be read ({error})", file=sys.stderr)
        return None
    from flows.monthly_mosaic import checked_inputs

    try:
        checked_inputs(settings)  # input problems end here, in one line, before a run starts
    except MosaicError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    return settings


def failure_line(error: BaseException) -> str:
    """Any failure in one line: the project's errors say what failed and what to do themselves; the
    embedded API's start names its setting; another error gives its type, its first line and how to see more."""
    if isinstance(error, MosaicError):
        return str(error)
    return startup_failure(error) or (
        f"{type(error).__name__}: {first_line(error)} (unexpected: run again with --debug for the traceback, and report it)"
    )


def reporting_failures(command: Callable[[], int], verb: str, debug: bool) -> int:
    """`command()`'s exit status; a failure of any kind ends in one line '<verb> failed: ...' on stderr
    and status 1, with its traceback (and those of Prefect's logs) only when `debug`."""
    with errors_in_one_line(() if debug else (Exception,)), waiting_long_enough():
        try:
            return command()
        except Exception as error:
            if debug:
                traceback.print_exc()
            print(f"{verb} failed: {failure_line(error)}", file=sys.stderr)
            return RUN_FAILED_STATUS


def run_month(arguments: argparse.Namespace) -> int:
    """Run the month that parsed `run_parser` arguments describe; the exit status says how it ended."""

    def run() -> int:
        settings = checked_settings(arguments)
        if settings is None:
            return INPUT_ERROR_STATUS
        from flows.monthly_mosaic import monthly_mosaic

        print_report(monthly_mosaic(settings))
        return 0

    return reporting_failures(run, "run", arguments.debug)


def run_backfill(arguments: argparse.Namespace) -> int:
    """Run the backfill that parsed `backfill_parser` arguments describe (`flows.backfill`); the exit status
    says how it ended."""
    from flows.backfill import MAX_BACKFILL_MONTHS, MAX_CONCURRENT_MONTHS, backfill

    try:
        Month.range(arguments.start_month, arguments.end_month, MAX_BACKFILL_MONTHS)
    except MosaicError as error:
        print(f"error: {error}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    if not 1 <= arguments.max_concurrent_months <= MAX_CONCURRENT_MONTHS:
        print(f"error: --max-concurrent-months must be 1..{MAX_CONCURRENT_MONTHS}", file=sys.stderr)
        return INPUT_ERROR_STATUS

    def run() -> int:
        settings = checked_settings(arguments)
        if settings is None:
            return INPUT_ERROR_STATUS
        report = backfill(
            arguments.start_month, arguments.end_month, settings, arguments.overwrite, arguments.max_concurrent_months
        )
        print(f"\nBackfill {report.aoi} {report.first_month}..{report.last_month}:")
        for outcome in report.months:
            shares = "" if outcome.valid_share is None else f" {outcome.valid_share:.1%} valid"
            shares += "" if outcome.filled_share is None else f", {outcome.filled_share:.1%} filled"
            print(f"  {outcome.month} {outcome.state:9s}{shares}  {outcome.item_url or ''}")
        return 0

    return reporting_failures(run, "backfill", arguments.debug)


def main(argv: list[str] | None = None, prog: str = "python -m flows.run") -> int:
    """`python -m flows.run`: `basemap run` without the installed command."""
    return run_month(run_parser(prog).parse_args(argv))


def backfill_main(argv: list[str] | None = None, prog: str = "basemap backfill") -> int:
    """`basemap backfill`'s options in, its exit status out."""
    return run_backfill(backfill_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
