"""Synthetic Sentinel-2 months and real servers on 127.0.0.1, shipped for the demo, benchmarks and tests.

As odc-geo ships `testutils` and odc-stac a `testing` package: `synthetic` makes months of COGs and
Earth Search-style items with known truth; `servers` runs moto S3 and a rustac STAC API as child
processes; `prefect_server` a Prefect server with a worker; `served_month` puts a synthetic month
behind them; `fault_proxy` and `fault_scenarios` break its traffic on purpose, `disk_faults` its
own disk (a small or full filesystem, a corrupt tile record); `lock_faults` kills the holder of an
AOI-and-month lock or restarts the Prefect server under it.
"""

from pathlib import Path

__all__ = ["PROJECT_ROOT"]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout: the working directory of the child processes, so they import the project's modules."""
