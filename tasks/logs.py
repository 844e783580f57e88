"""The logger a stage writes to: the Prefect run logger inside a flow or task run, so the line shows
on the run's page in the UI (from any worker, Dask included), else the module's standard logger."""

import logging

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

__all__ = ["stage_logger"]


def stage_logger(module_name: str) -> logging.Logger | logging.LoggerAdapter:
    """The current run's logger, or `logging.getLogger(module_name)` outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(module_name)
