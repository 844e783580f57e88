"""The logger a stage writes to, and how Prefect's run loggers show a failure.

`stage_logger` is the Prefect run logger inside a flow or task run, so the line shows on the run's
page in the UI (from any worker, Dask included), else the module's standard logger.

Prefect's engines log a failed flow or task run with its whole traceback. The project's own errors
(`MosaicError`) already say what failed and what to do in one line, so their records are shown as
that line (`OneLineErrors`); importing this module sets that up in every process that runs the
project's tasks. The command line widens it to every error unless asked for tracebacks (`errors_in_one_line`).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect import get_run_logger
from prefect.exceptions import MissingContextError

from tasks.core.errors import MosaicError, first_line

__all__ = ["OneLineErrors", "errors_in_one_line", "stage_logger"]

RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")
"""The loggers Prefect's flow and task engines log failures to."""


def stage_logger(module_name: str) -> logging.Logger | logging.LoggerAdapter:
    """The current run's logger, or `logging.getLogger(module_name)` outside a run."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(module_name)


class OneLineErrors(logging.Filter):
    """Shows a record carrying one of `errors` as one line, '<message>: <ErrorType>: <its first line>',
    without the traceback. Records of other errors pass unchanged."""

    def __init__(self, errors: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and isinstance(error, self.errors):
            message = record.getMessage().split(":", 1)[0]
            record.msg, record.args = "%s: %s: %s", (message, type(error).__name__, first_line(error))
            record.exc_info = record.exc_text = None
        return True


PROJECT_ERRORS_IN_ONE_LINE = OneLineErrors((MosaicError,))
"""The filter on Prefect's run loggers in every process that imports this module."""
for _name in RUN_LOGGERS:
    logging.getLogger(_name).addFilter(PROJECT_ERRORS_IN_ONE_LINE)


@contextmanager
def errors_in_one_line(errors: tuple[type[BaseException], ...]) -> Iterator[None]:
    """For the block, show failures of `errors` in Prefect's run logs as one line each (none: every
    traceback) instead of the project's own errors only."""
    previous, PROJECT_ERRORS_IN_ONE_LINE.errors = PROJECT_ERRORS_IN_ONE_LINE.errors, errors
    try:
        yield
    finally:
        PROJECT_ERRORS_IN_ONE_LINE.errors = previous
