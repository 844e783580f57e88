"""Run one monthly mosaic from the command line, without a deployment.

    python -m flows.run --aoi field.gpkg --month 2024-06
    python -m flows.run --settings lake.yaml --month 2024-07 --masker scl

`--settings` takes a YAML or JSON file of `MosaicSettings` fields (the same shape as a deployment's
`parameters.settings` in prefect.yaml); the other options override it. Bad input ends with one line
on stderr naming the problem, and exit status 2; a run that fails (no scene, too many failed
scenes) ends with its reason and status 1.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from blocks.slack import RunReport
from flows.parameters import MosaicSettings
from tasks.errors import MosaicError
from tasks.maskers import masker_names

__all__ = ["main", "print_report"]

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
    overrides = {"aoi": arguments.aoi, "month": arguments.month, "output_dir": arguments.output_dir, "workspace": arguments.workspace}
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
    print(f"\nBasemap {report.aoi} {report.month}: {report.scenes_used} of {report.scenes_found} scenes used, "
          f"{valid} of the AOI has a clear value{filled}.")
    for scene_id, reason in report.failed_scenes:
        print(f"  skipped    {scene_id}: {reason}")
    for product, location in report.product_urls.items():
        print(f"  {product:10s} {location}")


def parse_arguments(argv: list[str] | None, prog: str = "python -m flows.run") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--settings", help="YAML or JSON file of MosaicSettings fields")
    parser.add_argument(
        "--aoi", help="vector file, WKT, or bbox 'minx,miny,maxx,maxy' in EPSG:4326 (a negative minx: --aoi=-10,30,-9,31)"
    )
    parser.add_argument("--month", help="YYYY-MM (default: the previous month)")
    parser.add_argument("--masker", choices=masker_names())
    parser.add_argument("--workspace", help="local directory or s3://bucket/prefix for intermediate files")
    parser.add_argument("--output-dir", help="local directory for the products")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str = "python -m flows.run") -> int:
    """Run the month the arguments describe; the exit status says how it ended."""
    arguments = parse_arguments(argv, prog)
    try:
        settings = settings_from_arguments(arguments)
    except ValidationError as error:
        print(f"error: {first_validation_problem(error)}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"error: settings file {arguments.settings} cannot be read ({error})", file=sys.stderr)
        return INPUT_ERROR_STATUS
    from flows.monthly_mosaic import checked_inputs, monthly_mosaic

    try:
        checked_inputs(settings)  # input problems end here, in one line, before a run starts
    except MosaicError as error:
        print(f"error: {error}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    try:
        report = monthly_mosaic(settings)
    except MosaicError as error:
        print(f"run failed: {error}", file=sys.stderr)
        return RUN_FAILED_STATUS
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
