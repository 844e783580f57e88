"""`basemap`, the project's command line (installed with the package; see pyproject.toml).

    basemap run --aoi field.gpkg --month 2024-06      # one monthly mosaic (flows.run)
    basemap backfill --aoi field.gpkg --start-month 2024-01 --end-month 2024-12   # a range (flows.backfill)
    basemap download-models --dir /data/ocm-weights   # OmniCloudMask weights (tasks.ocm_weights)
"""

import argparse
import sys

__all__ = ["main"]

COMMANDS = {
    "run": "run one monthly mosaic from the command line, without a deployment",
    "backfill": "build every month of a range for one AOI, skipping published months",
    "download-models": "fetch OmniCloudMask weights for offline runs",
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch `basemap <command> ...` to the command's own parser; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog="basemap",
        description=__doc__.splitlines()[0],
        epilog="; ".join(f"{name}: {help_text}" for name, help_text in COMMANDS.items()),
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the command's own options (--help lists them)")
    parsed = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if parsed.command == "run":
        from flows.run import main as run_main

        return run_main(parsed.arguments, prog="basemap run")
    if parsed.command == "backfill":
        from flows.run import backfill_main

        return backfill_main(parsed.arguments, prog="basemap backfill")
    from tasks.ocm_weights import main as weights_main

    return weights_main(["download-models", *parsed.arguments], prog="basemap")


if __name__ == "__main__":
    sys.exit(main())
