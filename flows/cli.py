"""`basemap`, the project's command line (installed with the package; see pyproject.toml).

    basemap run --aoi field.gpkg --month 2024-06      # one monthly mosaic (flows.run)
    basemap backfill --aoi field.gpkg --start-month 2024-01 --end-month 2024-12   # a range (flows.backfill)
    basemap download-models --dir /data/ocm-weights   # OmniCloudMask weights (tasks.masking.ocm_weights)

A command's options are parsed before anything heavy is imported (`flows.arguments`): `--help` and a
mistyped option answer at once; Prefect and the pipeline load only to run.
"""

import argparse
import sys

from flows.arguments import backfill_parser, run_parser

__all__ = ["main"]

COMMANDS = {
    "run": "build one month's basemap of an AOI, without a deployment",
    "backfill": "build every month of a range for one AOI, skipping published months",
    "download-models": "fetch OmniCloudMask weights for offline runs",
}
EXAMPLES = """commands:
{commands}

examples:
  basemap run --aoi field.gpkg --month 2024-06
  basemap backfill --settings lake.yaml --start-month 2024-01 --end-month 2024-12
  basemap download-models --dir /data/ocm-weights
  basemap run --help        (each command's options)
"""


def main(argv: list[str] | None = None) -> int:
    """Dispatch `basemap <command> ...` to the command's own parser; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog="basemap",
        description="Monthly cloud-free Sentinel-2 basemaps of an AOI, built on Prefect.",
        epilog=EXAMPLES.format(commands="\n".join(f"  {name:16s}{text}" for name, text in COMMANDS.items())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=COMMANDS, help="what to do (see below)")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's own options (--help lists them)")
    parsed = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if parsed.command == "run":
        arguments = run_parser("basemap run").parse_args(parsed.arguments)
        from flows.run import run_month

        return run_month(arguments)
    if parsed.command == "backfill":
        arguments = backfill_parser("basemap backfill").parse_args(parsed.arguments)
        from flows.run import run_backfill

        return run_backfill(arguments)
    from tasks.masking.ocm_weights import main as weights_main

    return weights_main(["download-models", *parsed.arguments], prog="basemap")


if __name__ == "__main__":
    sys.exit(main())
