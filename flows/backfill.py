"""The backfill flow: every month of a range for one AOI, a few at a time, skipping published months.

`backfill(start_month, end_month, settings)` checks the AOI and settings once, then runs the monthly
flow (`flows.monthly_mosaic.monthly_mosaic`) as a subflow for each month of the range, up to
`max_concurrent_months` at once (each also holds its own AOI-and-month lock, so a cron run of the
same month waits for it). A month whose STAC Item is already published is skipped unless
`overwrite`; a re-run therefore builds only the months that failed. The months send no Slack notice
of their own: the backfill posts one notice at the end, and one summary artifact, listing every
month with its state and valid share. It fails, naming them, when any month failed.
"""

import contextvars
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Annotated

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from blocks.publish import ITEM_PRODUCT
from blocks.slack import BackfillReport, MonthOutcome, RunReport, load_notifier
from flows.monthly_mosaic import StepProgress, checked_inputs, monthly_mosaic, products_destination
from flows.parameters import MosaicSettings
from tasks.errors import InvalidSettings, MonthsFailed, first_line
from tasks.metadata import ProductNames
from tasks.month import MONTH_PATTERN, Month

__all__ = ["BUILT", "FAILED", "MAX_BACKFILL_MONTHS", "SKIPPED", "backfill", "backfill_summary_markdown", "published_outcome"]

BUILT, SKIPPED, FAILED = "built", "skipped", "failed"
MAX_BACKFILL_MONTHS = 240
"""Longest range one backfill takes: 20 years of months."""
MonthLabel = Annotated[str, Field(pattern=MONTH_PATTERN.pattern, description="A month 'YYYY-MM'.")]


def published_outcome(settings: MosaicSettings, aoi_name: str, month: Month) -> MonthOutcome | None:
    """The month as already published (its Item exists), with the valid share from its metadata.json; else None."""
    destination = products_destination(settings, aoi_name, month)
    names = ProductNames.for_run(aoi_name, month)
    if not destination.exists(names.item):
        return None
    metadata = destination.read_json(names.metadata) or {}
    valid_share = metadata.get("count", {}).get("statistics", {}).get("valid_share_of_aoi")
    return MonthOutcome(month.label, SKIPPED, valid_share, item_url=destination.url(names.item))


def build_month(settings: MosaicSettings, month: Month) -> MonthOutcome:
    """Run the monthly flow for `month` as a subflow, without its own Slack notices; its outcome."""
    month_settings = settings.model_copy(update={"month": month.label, "slack_block": None})
    state = monthly_mosaic(month_settings, return_state=True)
    result = state.result(raise_on_failure=False)
    if not state.is_completed() or not isinstance(result, RunReport):
        reason = first_line(result) if isinstance(result, BaseException) else state.message or f"ended {state.name}"
        return MonthOutcome(month.label, FAILED, reason=reason)
    return MonthOutcome(month.label, BUILT, result.valid_share, item_url=result.product_urls.get(ITEM_PRODUCT))


def backfill_summary_markdown(report: BackfillReport) -> str:
    """A markdown table of every month of the backfill, for the Prefect UI."""
    rows = []
    for outcome in report.months:
        valid = f"{outcome.valid_share:.1%}" if outcome.valid_share is not None else "n/a"
        detail = outcome.reason or (f"`{outcome.item_url}`" if outcome.item_url else "")
        rows.append(f"| {outcome.month} | {outcome.state} | {valid} | {detail} |")
    counts = ", ".join(f"{report.count(state)} {state}" for state in (BUILT, SKIPPED, FAILED))
    return (
        f"# Backfill {report.aoi} {report.first_month}..{report.last_month}\n\n{counts}\n\n"
        "| month | state | valid share | item or reason |\n|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


@flow(name="basemap-backfill")
def backfill(
    start_month: MonthLabel,
    end_month: MonthLabel,
    settings: MosaicSettings,
    overwrite: bool = False,
    max_concurrent_months: Annotated[int, Field(ge=1, le=24)] = 2,
) -> BackfillReport:
    """Build every month from `start_month` to `end_month` (both included) for the AOI of `settings`.

    Published months are skipped unless `overwrite`; `max_concurrent_months` months run at once
    (memory and scratch disk grow with it). `settings.month` must be empty: the range gives the months.
    """
    logger = get_run_logger()
    if settings.month is not None:
        raise InvalidSettings(f"settings.month is {settings.month} in a backfill; leave it empty, the range gives the months")
    months = Month.range(start_month, end_month, MAX_BACKFILL_MONTHS)
    aoi_name = checked_inputs(settings).name  # a bad AOI or masker fails here, once, before any month
    outcomes: dict[str, MonthOutcome] = {}
    to_build: list[Month] = []
    for month in months:
        published = None if overwrite else published_outcome(settings, aoi_name, month)
        if published is None:
            to_build.append(month)
        else:
            outcomes[month.label] = published
    logger.info("%s %s..%s: %d months, %d published already, %d to build", aoi_name, start_month, end_month,
                len(months), len(outcomes), len(to_build))
    progress = StepProgress(len(to_build), "Months built")
    with ThreadPoolExecutor(max_concurrent_months, thread_name_prefix="backfill-month") as pool:
        # Each month runs in its own copy of this flow's context, so it is a subflow of this run.
        futures: dict[Future[MonthOutcome], Month] = {
            pool.submit(contextvars.copy_context().run, build_month, settings, month): month for month in to_build
        }
        for future in as_completed(futures):
            outcome = future.result()
            outcomes[outcome.month] = outcome
            progress.advance()
            logger.info("%s %s: %s%s", aoi_name, outcome.month, outcome.state, f" ({outcome.reason})" if outcome.reason else "")
    report = BackfillReport(
        aoi=aoi_name,
        first_month=start_month,
        last_month=end_month,
        months=tuple(outcomes[month.label] for month in months),
        flow_run_name=runtime.flow_run.name,
        flow_run_url=runtime.flow_run.ui_url,
    )
    create_markdown_artifact(backfill_summary_markdown(report), key="backfill-summary", description="Backfill summary")
    notifier = load_notifier(settings.slack_block)
    if notifier:
        notifier.notify_backfill(report)
    failed = [(outcome.month, outcome.reason or FAILED) for outcome in report.months if outcome.state == FAILED]
    if failed:
        listing = "; ".join(f"{month}: {reason}" for month, reason in failed)
        raise MonthsFailed(
            f"{len(failed)} of {len(months)} months failed ({listing}); re-run the backfill: published months are skipped",
            failed,
        )
    return report
