"""The backfill flow: every month of a range for one AOI, a few at a time, skipping published months.

`backfill(start_month, end_month, settings)` checks the AOI and settings once, then runs the monthly
flow (`flows.monthly_mosaic.monthly_mosaic`) as a subflow for each month of the range, up to
`max_concurrent_months` at once (each also holds its own AOI-and-month lock, so a cron run of the
same month waits for it). A month whose STAC Item is already published is skipped unless
`overwrite`; a re-run therefore builds only the months that failed. Months built concurrently
cannot fill their gaps from each other, so once all are out, each published month of the range with
a month built now within `fill_max_months` runs again: its tiles are committed, so it only refills
them and republishes (`refilled`). The months send no Slack notice of their own: the backfill posts
one notice at the end, and one summary artifact, listing every month with its state and valid and
filled shares. It fails, naming them, when any month failed.
"""

from dataclasses import replace
from typing import Annotated

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from blocks.publish import ITEM_PRODUCT
from blocks.slack import (
    BUILT,
    FAILED,
    MONTH_STATES,
    REFILLED,
    SKIPPED,
    BackfillReport,
    MonthOutcome,
    RunReport,
    load_notifier,
)
from flows.arguments import DEFAULT_CONCURRENT_MONTHS
from flows.monthly_mosaic import StepProgress, checked_inputs, monthly_mosaic, products_destination
from flows.parameters import MosaicSettings
from tasks.core.errors import InvalidSettings, MonthsFailed, first_line
from tasks.core.month import MONTH_PATTERN, Month
from tasks.products.metadata import FILL_LAYER, OBSERVED_SHARE_FIELD, ProductNames

__all__ = ["MAX_BACKFILL_MONTHS", "MAX_CONCURRENT_MONTHS", "backfill", "backfill_summary_markdown", "published_outcome"]

MAX_BACKFILL_MONTHS = 240
"""Longest range one backfill takes: 20 years of months."""
MAX_CONCURRENT_MONTHS = 24
"""Most months a backfill builds at once."""
MonthLabel = Annotated[str, Field(pattern=MONTH_PATTERN.pattern, description="A month 'YYYY-MM'.")]


def published_outcome(settings: MosaicSettings, aoi_name: str, month: Month) -> MonthOutcome | None:
    """The month as already published (its Item exists), with the valid (observed) and filled shares from
    its metadata.json; else None. A month published before metadata.json recorded its observed share has none."""
    destination = products_destination(settings, aoi_name, month)
    names = ProductNames.for_run(aoi_name, month)
    if not destination.exists(names.item):
        return None
    metadata = destination.read_json(names.metadata) or {}
    valid_share = metadata.get("count", {}).get(OBSERVED_SHARE_FIELD)
    filled_share = metadata.get(FILL_LAYER, {}).get("filled_share_of_aoi")
    return MonthOutcome(month.label, SKIPPED, valid_share, filled_share, item_url=destination.url(names.item))


@task(task_run_name="month-{month.label}", cache_policy=NO_CACHE)
def build_month(settings: MosaicSettings, month: Month) -> MonthOutcome:
    """Run the monthly flow for `month` as a subflow, without its own Slack notices; its outcome.

    A task, so that months run at once stay apart: Prefect keys a subflow called from a task by a UUID,
    while subflows called straight from threads of one flow run share a call counter, and two of them
    drawing the same count would both attach to one month's flow run."""
    month_settings = settings.model_copy(update={"month": month.label, "slack_block": None})
    state = monthly_mosaic(month_settings, return_state=True)
    result = state.result(raise_on_failure=False)
    if not state.is_completed() or not isinstance(result, RunReport):
        reason = first_line(result) if isinstance(result, BaseException) else state.message or f"ended {state.name}"
        return MonthOutcome(month.label, FAILED, reason=reason)
    return MonthOutcome(month.label, BUILT, result.valid_share, result.filled_share, item_url=result.product_urls.get(ITEM_PRODUCT))


def run_months(months: list[Month], settings: MosaicSettings, max_concurrent: int, progress: StepProgress) -> dict[str, MonthOutcome]:
    """Run the monthly flow for each month, `max_concurrent` at once, as subflows of this run; their outcomes."""
    logger = get_run_logger()
    outcomes = {}
    with ThreadPoolTaskRunner[MonthOutcome](max_workers=max_concurrent) as runner:
        futures: list[PrefectFuture[MonthOutcome]] = [runner.submit(build_month, {"settings": settings, "month": month}) for month in months]
        for future in as_completed(futures):
            outcome = future.result()
            outcomes[outcome.month] = outcome
            progress.advance()
            logger.info("%s: %s%s", outcome.month, outcome.state, f" ({outcome.reason})" if outcome.reason else "")
    return outcomes


def months_to_refill(months: list[Month], outcomes: dict[str, MonthOutcome], settings: MosaicSettings) -> list[Month]:
    """The published months of the range whose gap fill may gain from a month built in this run: one
    within `fill_max_months` on a side the fill uses (earlier for `previous`, either for `interpolate`).
    Months built concurrently could not see each other, so each is filled again once all are out."""
    if settings.fill == "none":
        return []
    built = [Month.parse(label) for label, outcome in outcomes.items() if outcome.state == BUILT]

    def gains(month: Month) -> bool:
        for other in built:
            distance = month.months_since(other)  # > 0: `other` is earlier
            if other != month and abs(distance) <= settings.fill_max_months and (distance > 0 or settings.fill == "interpolate"):
                return True
        return False

    return [month for month in months if outcomes[month.label].state != FAILED and gains(month)]


def refilled_outcome(before: MonthOutcome, refill: MonthOutcome) -> MonthOutcome:
    """A month's outcome after its refill: the refill's shares, a failed refill's reason; built stays built."""
    if refill.state == FAILED:
        return refill
    return replace(refill, state=before.state if before.state == BUILT else REFILLED)


def backfill_summary_markdown(report: BackfillReport) -> str:
    """A markdown table of every month of the backfill, for the Prefect UI."""
    rows = []
    for outcome in report.months:
        valid = f"{outcome.valid_share:.1%}" if outcome.valid_share is not None else "n/a"
        filled = f"{outcome.filled_share:.1%}" if outcome.filled_share is not None else "n/a"
        detail = outcome.reason or (f"`{outcome.item_url}`" if outcome.item_url else "")
        rows.append(f"| {outcome.month} | {outcome.state} | {valid} | {filled} | {detail} |")
    counts = ", ".join(f"{report.count(state)} {state}" for state in MONTH_STATES)
    return (
        f"# Backfill {report.aoi} {report.first_month}..{report.last_month}\n\n{counts}\n\n"
        "| month | state | valid share | filled share | item or reason |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )


@flow(name="basemap-backfill")
def backfill(
    start_month: MonthLabel,
    end_month: MonthLabel,
    settings: MosaicSettings,
    overwrite: bool = False,
    max_concurrent_months: Annotated[int, Field(ge=1, le=MAX_CONCURRENT_MONTHS)] = DEFAULT_CONCURRENT_MONTHS,
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
    outcomes |= run_months(to_build, settings, max_concurrent_months, progress)
    to_refill = months_to_refill(months, outcomes, settings)
    if to_refill:
        logger.info("%s: refilling %d months from the months built since they were", aoi_name, len(to_refill))
        refilled = run_months(to_refill, settings, max_concurrent_months, StepProgress(len(to_refill), "Months refilled"))
        outcomes |= {label: refilled_outcome(outcomes[label], outcome) for label, outcome in refilled.items()}
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
