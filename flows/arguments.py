"""The command line's parsers: what `basemap run` and `basemap backfill` take, with a line of help for each
option and an example per command.

Nothing here imports Prefect, torch or the geospatial stack, so `--help` and a mistyped option answer at
once; `flows.run` builds and runs what the parsed arguments describe.
"""

import argparse

from tasks.masking.registry import masker_names

__all__ = ["DEFAULT_CONCURRENT_MONTHS", "backfill_parser", "run_parser"]

DEFAULT_CONCURRENT_MONTHS = 2
"""Months a backfill builds at once unless told otherwise: the flow's parameter and the option default to it."""
SETTINGS_HELP = (
    "YAML or JSON file of settings, shaped like a deployment's parameters.settings in prefect.yaml "
    "(the options below override it)"
)
RUN_EXAMPLES = """examples:
  basemap run --aoi field.gpkg --month 2024-06
  basemap run --settings lake.yaml --month 2024-07 --masker scl --output-dir /data/basemaps
  basemap run --aoi=-9.2,38.6,-9.0,38.8 --month 2024-05     (a bbox in degrees; '=' before a negative number)
"""
BACKFILL_EXAMPLES = """examples:
  basemap backfill --settings lake.yaml --start-month 2024-01 --end-month 2024-12
  basemap backfill --aoi field.gpkg --start-month 2023-06 --end-month 2023-08 --overwrite
"""


def settings_parser(prog: str, description: str, examples: str) -> argparse.ArgumentParser:
    """The options every command that builds months shares: the settings file and its overrides."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", help=SETTINGS_HELP)
    parser.add_argument(
        "--aoi", help="the area: a vector file in any CRS, WKT, or a bbox 'minx,miny,maxx,maxy' in degrees (EPSG:4326)"
    )
    parser.add_argument("--masker", choices=masker_names(), help="how clouds and shadows are found (default: ocm+scl)")
    parser.add_argument("--workspace", help="local folder or s3://bucket/prefix for intermediate files (tiles, records)")
    parser.add_argument("--output-dir", help="local folder the products are published to, when no S3 block is set")
    parser.add_argument("--debug", action="store_true", help="show the traceback of a failure, in the logs too")
    return parser


def run_parser(prog: str = "basemap run") -> argparse.ArgumentParser:
    """`basemap run`: one month."""
    parser = settings_parser(
        prog, "Build one month's cloud-free basemap of an AOI and publish its products.", RUN_EXAMPLES
    )
    parser.add_argument("--month", help="the month, YYYY-MM (default: the previous month)")
    return parser


def backfill_parser(prog: str = "basemap backfill") -> argparse.ArgumentParser:
    """`basemap backfill`: a range of months."""
    parser = settings_parser(
        prog, "Build every month of a range for one AOI; months already published are skipped.", BACKFILL_EXAMPLES
    )
    parser.add_argument("--start-month", required=True, help="the first month, YYYY-MM")
    parser.add_argument("--end-month", required=True, help="the last month, YYYY-MM (included)")
    parser.add_argument("--overwrite", action="store_true", help="build published months again")
    parser.add_argument(
        "--max-concurrent-months",
        type=int,
        default=DEFAULT_CONCURRENT_MONTHS,
        help=f"how many months are built at once (default {DEFAULT_CONCURRENT_MONTHS}; memory and disk grow with it)",
    )
    return parser
