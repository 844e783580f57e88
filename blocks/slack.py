"""Slack notices of a monthly mosaic run, sent to an Incoming Webhook.

What the flow uses:
- `RunReport` (with `FailedScene`): what a run tells Slack. The flow returns one, so the success
  notice can show its numbers.
- `SlackNotifier`, a Prefect block (type slug "slack-notifier") holding the webhook URL as a secret:
  `notify_started(report)`, `notify_succeeded(report)`, `notify_failed(reason, failed_scenes, report)`.
  Each returns True when Slack answered "ok"; a notice that cannot be sent is logged, never raised.
- `slack_state_hooks()`: the state hooks for `@flow(..., **slack_state_hooks())`. They read the
  block name from the run's `settings` parameter (`settings.slack_block`; None sends nothing) and
  the AOI and month from `settings.aoi` and `settings.month` (None: the month before the run's
  scheduled start, as the flow does). On completion they send the returned
  `RunReport`; on failure the state message, plus the failed scenes when the exception
  carries a `failed_scenes` attribute (a sequence of (item id, reason)).
- `started_message`, `succeeded_message`, `failed_message`: pure builders of the Block Kit
  `blocks` and fallback `text` of each notice.
- `BackfillReport` (with `MonthOutcome`) and `backfill_message`: the one notice a backfill
  (`flows.backfill`) sends when it ends, listing every month with its state and valid share.
"""

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http.client import HTTPException
from typing import Any, TypedDict

from prefect.blocks.core import Block
from prefect.client.schemas.objects import FlowRun, State
from prefect.exceptions import MissingResult
from prefect.flows import Flow, FlowStateHook
from prefect.utilities.urls import url_for
from pydantic import BaseModel, Field, SecretStr
from slack_sdk.errors import SlackRequestError
from slack_sdk.webhook import WebhookClient

from tasks.core.errors import InvalidAOI
from tasks.core.logs import stage_logger
from tasks.core.month import Month
from tasks.core.scene import FailedScene
from tasks.geometry.aoi import aoi_label, aoi_name, load_aoi

__all__ = [
    "BUILT",
    "FAILED",
    "MONTH_STATES",
    "REFILLED",
    "SKIPPED",
    "BackfillReport",
    "HEADER_MAX_CHARS",
    "LISTED_SCENES_MAX",
    "LISTED_MONTHS_MAX",
    "MonthOutcome",
    "RunReport",
    "SlackNotifier",
    "backfill_message",
    "failed_message",
    "load_notifier",
    "slack_state_hooks",
    "started_message",
    "succeeded_message",
]

SETTINGS_PARAMETER = "settings"
SLACK_OK_BODY = "ok"
HEADER_MAX_CHARS = 150
SECTION_MAX_CHARS = 3000
LISTED_SCENES_MAX = 10
LISTED_MONTHS_MAX = 40
"""Months listed in a backfill notice (a section holds at most 3000 characters); the rest are counted."""
REASON_MAX_CHARS = 2000


# slack-sdk logs the webhook URL at DEBUG; its client gets a logger that drops everything and this
# module logs each failure itself, without the URL.
_SDK_LOGGER = logging.getLogger(f"{__name__}.sdk")
_SDK_LOGGER.setLevel(logging.CRITICAL + 1)
_SDK_LOGGER.propagate = False

SEND_ERRORS = (OSError, HTTPException, SlackRequestError, ValueError)

StateHook = FlowStateHook[..., Any]


class FlowStateHooks(TypedDict):
    """The `@flow` keyword arguments that `slack_state_hooks` gives."""

    on_running: list[StateHook]
    on_completion: list[StateHook]
    on_failure: list[StateHook]


@dataclass(frozen=True)
class RunReport:
    """What one monthly run reports; the counts stay None until they are known."""

    aoi: str
    month: str
    scenes_found: int | None = None
    scenes_used: int | None = None
    failed_scenes: Sequence[tuple[str, str]] = ()
    """(item id, reason) of each skipped scene; `FailedScene` records or plain pairs."""
    valid_share: float | None = None
    """Share of the AOI's pixels that have a clear observation this month, 0..1."""
    filled_share: float | None = None
    """Share of the AOI's pixels that took a value from another month (gap fill), 0..1; None: no fill."""
    product_urls: dict[str, str] = field(default_factory=dict)
    """Product name -> URL (s3:// or https://) or local path."""
    flow_run_name: str | None = None
    flow_run_url: str | None = None


BUILT, REFILLED, SKIPPED, FAILED = "built", "refilled", "skipped", "failed"
"""A backfill month's states: built now; published before and filled again now from months built now;
published before and left as it was; failed."""
MONTH_STATES = (BUILT, REFILLED, SKIPPED, FAILED)


@dataclass(frozen=True)
class MonthOutcome:
    """How one month of a backfill ended: one of `MONTH_STATES`."""

    month: str
    state: str
    valid_share: float | None = None
    """Share of the AOI's pixels with a clear observation, 0..1; None when unknown (failed)."""
    filled_share: float | None = None
    """Share of the AOI's pixels filled from other months, 0..1; None when unknown or not filled."""
    reason: str | None = None
    """Why a failed month failed, one line."""
    item_url: str | None = None


@dataclass(frozen=True)
class BackfillReport:
    """What a backfill of one AOI reports: every month of its range, in order."""

    aoi: str
    first_month: str
    last_month: str
    months: tuple[MonthOutcome, ...]
    flow_run_name: str | None = None
    flow_run_url: str | None = None

    def count(self, state: str) -> int:
        """Months that ended in `state`."""
        return sum(outcome.state == state for outcome in self.months)


@dataclass(frozen=True)
class SlackMessage:
    """A webhook payload: Block Kit blocks and the plain text shown in notifications."""

    text: str
    blocks: list[dict[str, Any]]


def started_message(report: RunReport) -> SlackMessage:
    """The notice that a run began: AOI, month and a link to the flow run."""
    title = f"{_title(report)}: started"
    blocks = [_header(f":hourglass_flowing_sand: {title}")]
    blocks += _run_context(report)
    return SlackMessage(text=_with_run_name(title, report), blocks=blocks)


def succeeded_message(report: RunReport) -> SlackMessage:
    """The notice of a finished run: scene counts, valid-pixel share, product URLs, failed scenes."""
    title = f"{_title(report)}: done"
    numbers = {
        "Scenes found": _count(report.scenes_found),
        "Scenes used": _count(report.scenes_used),
        "Scenes failed": str(len(report.failed_scenes)),
        "Valid pixels": "?" if report.valid_share is None else f"{report.valid_share:.1%}",
        **({"Filled pixels": f"{report.filled_share:.1%}"} if report.filled_share is not None else {}),
    }
    blocks = [
        _header(f":white_check_mark: {title}"),
        {"type": "section", "fields": [_mrkdwn(f"*{name}*\n{value}") for name, value in numbers.items()]},
    ]
    if report.product_urls:
        lines = (f"• {_escape(name)}: {_link(url)}" for name, url in report.product_urls.items())
        blocks.append(_section("*Products*", lines))
    blocks += _failed_scenes_section(report.failed_scenes)
    blocks += _run_context(report)
    used, found, valid = numbers["Scenes used"], numbers["Scenes found"], numbers["Valid pixels"]
    filled = f", {report.filled_share:.1%} filled" if report.filled_share is not None else ""
    text = f"{title}, {used} of {found} scenes used, {valid} valid{filled}"
    return SlackMessage(text=_with_run_name(text, report), blocks=blocks)


def failed_message(
    reason: str, failed_scenes: Sequence[tuple[str, str]] = (), report: RunReport | None = None
) -> SlackMessage:
    """The notice of a failed or crashed run: the reason and the failed scenes (item id, reason)."""
    title = f"{_title(report)}: failed" if report else "Basemap run failed"
    blocks = [
        _header(f":x: {title}"),
        _section("*Reason*", [f"```{_escape(_truncated(reason, REASON_MAX_CHARS))}```"]),
    ]
    blocks += _failed_scenes_section(failed_scenes)
    if report:
        blocks += _run_context(report)
    text = f"{title}: {reason}"
    return SlackMessage(text=_with_run_name(text, report) if report else text, blocks=blocks)


def backfill_message(report: BackfillReport) -> SlackMessage:
    """The notice of a finished backfill: a line per month with its state, valid and filled shares, and why it failed."""
    failed = report.count(FAILED)
    title = f"Basemap backfill {report.aoi} {report.first_month}..{report.last_month}: " + (
        f"{failed} of {len(report.months)} months failed" if failed else "done"
    )
    summary = ", ".join(f"{report.count(state)} {state}" for state in MONTH_STATES)
    lines = [_month_line(outcome) for outcome in report.months[:LISTED_MONTHS_MAX]]
    if len(report.months) > LISTED_MONTHS_MAX:
        lines.append(f"… and {len(report.months) - LISTED_MONTHS_MAX} more")
    blocks = [
        _header(f"{':x:' if failed else ':white_check_mark:'} {title}"),
        _section(f"*Months* ({summary})", lines),
    ]
    blocks += _run_context(report)
    return SlackMessage(text=_with_run_name(f"{title} ({summary})", report), blocks=blocks)


def _month_line(outcome: MonthOutcome) -> str:
    valid = "" if outcome.valid_share is None else f", {outcome.valid_share:.1%} valid"
    valid += "" if outcome.filled_share is None else f", {outcome.filled_share:.1%} filled"
    reason = f": {_escape(_truncated(outcome.reason, 200))}" if outcome.reason else ""
    return f"• `{outcome.month}` {outcome.state}{valid}{reason}"


class SlackNotifier(Block):
    """Posts the start, success and failure of basemap runs to a Slack channel through an Incoming
    Webhook. The webhook URL is stored encrypted and never logged."""

    _block_type_name = "Slack Notifier"
    _block_type_slug = "slack-notifier"

    webhook_url: SecretStr = Field(
        description="Slack Incoming Webhook URL (https://hooks.slack.com/services/...); it is a secret."
    )
    channel: str | None = Field(
        None, description="Channel to post in, e.g. '#basemaps'; None: the webhook's own channel."
    )
    username: str | None = Field(None, description="Name shown as the sender; None: the webhook's default.")
    icon_emoji: str | None = Field(None, description="Emoji shown as the sender's icon, e.g. ':satellite:'.")
    timeout_s: int = Field(10, ge=1, le=120, description="Seconds to wait for Slack before giving up.")

    def notify_started(self, report: RunReport) -> bool:
        return self.send(started_message(report))

    def notify_succeeded(self, report: RunReport) -> bool:
        return self.send(succeeded_message(report))

    def notify_failed(
        self, reason: str, failed_scenes: Sequence[tuple[str, str]] = (), report: RunReport | None = None
    ) -> bool:
        return self.send(failed_message(reason, failed_scenes, report))

    def notify_backfill(self, report: BackfillReport) -> bool:
        return self.send(backfill_message(report))

    def send(self, message: SlackMessage) -> bool:
        """Post `message`; True when Slack accepted it. Failures are logged, not raised."""
        logger = stage_logger(__name__)
        webhook_url = self.webhook_url.get_secret_value()
        client = WebhookClient(webhook_url, timeout=self.timeout_s, logger=_SDK_LOGGER)
        body = {"text": message.text, "blocks": message.blocks} | self._sender_fields()
        try:
            response = client.send_dict(body)
        except SEND_ERRORS as error:
            logger.warning("Slack notice %r not sent: %s", message.text, _redacted(str(error), webhook_url))
            return False
        if response.status_code != 200 or response.body != SLACK_OK_BODY:
            answer = _redacted(str(response.body)[:200], webhook_url)
            logger.warning("Slack notice %r refused: HTTP %d %s", message.text, response.status_code, answer)
            return False
        return True

    def _sender_fields(self) -> dict[str, str]:
        fields = {"channel": self.channel, "username": self.username, "icon_emoji": self.icon_emoji}
        return {name: value for name, value in fields.items() if value}


def slack_state_hooks() -> FlowStateHooks:
    """Keyword arguments for `@flow` that send a notice when a run starts, completes or fails.

    No on_crashed hook: a crash is posted by the server's crash-notice automation
    (`blocks.crash_detection`, set up by `python -m blocks.register`), which also sees the crashes
    no hook can run for (a killed process with no worker left), so each crash is posted once.
    """
    return {
        "on_running": [announce_start],
        "on_completion": [announce_success],
        "on_failure": [announce_failure],
    }


def announce_start(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """on_running hook: the start notice."""
    notifier = _notifier_for(flow_run)
    if notifier:
        notifier.notify_started(_report_from_parameters(flow_run))


def announce_success(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """on_completion hook: the success notice, with the returned RunReport's numbers when there is one."""
    notifier = _notifier_for(flow_run)
    if not notifier:
        return
    run_report = _report_from_parameters(flow_run)
    returned = _state_result(state)
    if isinstance(returned, RunReport):
        run_report = replace(
            returned,
            flow_run_name=returned.flow_run_name or run_report.flow_run_name,
            flow_run_url=returned.flow_run_url or run_report.flow_run_url,
        )
    notifier.notify_succeeded(run_report)


def announce_failure(flow: Flow, flow_run: FlowRun, state: State) -> None:
    """on_failure hook: the failure notice with the state message and failed scenes."""
    notifier = _notifier_for(flow_run)
    if not notifier:
        return
    failed_scenes = getattr(_state_result(state), "failed_scenes", None) or ()
    reason = state.message or f"the run ended {state.name}"
    notifier.notify_failed(reason, failed_scenes, _report_from_parameters(flow_run))


def _notifier_for(flow_run: FlowRun) -> SlackNotifier | None:
    return load_notifier(_settings_of(flow_run).get("slack_block"))


def load_notifier(block_name: str | None) -> SlackNotifier | None:
    """The Slack notifier block named `block_name`; None when no name is given or it cannot be loaded (logged)."""
    if not block_name:
        return None
    try:
        return SlackNotifier.load(  # type: ignore[call-arg, return-value]  # _sync: async_dispatch
            block_name, _sync=True
        )
    except Exception as error:  # a missing block or an unreachable API: notifying must never fail the run
        stage_logger(__name__).warning(
            "Slack block %r could not be loaded (%s); create it with `python -m blocks.register`", block_name, error
        )
        return None


def _settings_of(flow_run: FlowRun) -> Mapping[str, Any]:
    settings = (flow_run.parameters or {}).get(SETTINGS_PARAMETER)
    if isinstance(settings, BaseModel):
        return settings.model_dump()
    return settings if isinstance(settings, Mapping) else {}


def _report_from_parameters(flow_run: FlowRun) -> RunReport:
    settings = _settings_of(flow_run)
    start = flow_run.expected_start_time or datetime.now(UTC)
    return RunReport(
        aoi=_aoi_name_of(settings),
        month=Month.for_run(settings.get("month"), start).label,
        flow_run_name=flow_run.name,
        flow_run_url=url_for(flow_run),
    )


def _aoi_name_of(settings: Mapping[str, Any]) -> str:
    """The AOI as its products name it (`aoi_name`, else the file's stem and the AOI's digest,
    `tasks.geometry.aoi.aoi_name`); the file's stem when the AOI cannot be read (the notice then says why)."""
    source = settings.get("aoi")
    if settings.get("aoi_name") or not source:
        return settings.get("aoi_name") or "AOI"
    try:
        return aoi_name(str(source), load_aoi(str(source)))
    except InvalidAOI:
        return aoi_label(str(source))


def _state_result(state: State) -> Any:
    """The run's return value or exception; None when it cannot be read (the notice goes without it)."""
    try:
        return state.result(  # type: ignore[call-overload]  # _sync: async_dispatch
            raise_on_failure=False, retry_result_failure=False, _sync=True
        )
    except MissingResult:
        return None
    except Exception as error:  # result storage may be gone after a crash; a plainer notice beats none
        stage_logger(__name__).warning("Slack notice sent without the run's result, which could not be read: %s", error)
        return None


def _redacted(text: str, secret: str) -> str:
    return text.replace(secret, "[webhook URL]")


def _title(report: RunReport) -> str:
    return f"Basemap {report.aoi} {report.month}"


def _with_run_name(text: str, report: RunReport | BackfillReport) -> str:
    return f"{text} (flow run {report.flow_run_name})" if report.flow_run_name else text


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def _escape(text: str) -> str:
    """Slack mrkdwn treats &, < and > as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str) -> str:
    if url.startswith(("https://", "http://")):
        return f"<{url}>"
    return f"`{_escape(url)}`"


def _truncated(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _truncated(text, SECTION_MAX_CHARS)}


def _header(text: str) -> dict[str, Any]:
    return {"type": "header", "text": {"type": "plain_text", "text": _truncated(text, HEADER_MAX_CHARS), "emoji": True}}


def _section(title: str, lines: Iterable[str]) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn("\n".join([title, *lines]))}


def _failed_scenes_section(failed_scenes: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    if not failed_scenes:
        return []
    listed = [FailedScene(*scene) for scene in failed_scenes[:LISTED_SCENES_MAX]]
    lines = [f"• `{_escape(scene.item_id)}`: {_escape(scene.reason)}" for scene in listed]
    if len(failed_scenes) > LISTED_SCENES_MAX:
        lines.append(f"… and {len(failed_scenes) - LISTED_SCENES_MAX} more")
    return [_section(f"*Failed scenes ({len(failed_scenes)})*", lines)]


def _run_context(report: RunReport | BackfillReport) -> list[dict[str, Any]]:
    if not report.flow_run_name:
        return []
    name = _escape(report.flow_run_name)
    run = f"<{report.flow_run_url}|{name}>" if report.flow_run_url else f"`{name}`"
    return [{"type": "context", "elements": [_mrkdwn(f"Flow run {run}")]}]
