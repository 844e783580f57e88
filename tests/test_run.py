"""`python -m flows.run` and `basemap backfill`: settings from a file and options, one-line errors for bad input."""

import os
import subprocess
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
import yaml
from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from blocks.slack import RunReport
from flows.embedded_api import STARTUP_TIMEOUT_S, waiting_long_enough
from flows.monthly_mosaic import run_inputs
from flows.run import backfill_main, main, print_report
from tasks.testing.served_month import (
    ServedMonth,
    flow_settings,
    month_dates,
    save_products_block,
    serve_synthetic_month,
    serve_synthetic_series,
)
from tasks.testing.servers import S3Server
from tests import REPO_ROOT


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.run", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--aoi", "/nowhere/field.gpkg", "--month", "2024-06"], "AOI /nowhere/field.gpkg cannot be read"),
        (["--aoi", "9,47,10,48", "--month", "2024-13"], "month: Value error, month '2024-13' is not YYYY-MM"),
        (["--aoi", "POINT(9 47)", "--month", "2024-06"], "has no polygon"),
        (["--settings", "/nowhere/settings.yaml"], "settings file /nowhere/settings.yaml cannot be read"),
        (["--aoi=-10,30,40,60", "--month", "2024-06", "--masker", "scl"], "more than max_grid_pixels 2e+10"),
        (["--aoi", str(REPO_ROOT / "README.md"), "--month", "2024-06"], "cannot be read"),
    ],
    ids=["missing AOI file", "month 13", "point AOI", "missing settings file", "bbox typo", "not a vector file"],
)
def test_bad_input_ends_in_one_line_and_status_2(arguments: list[str], problem: str) -> None:
    finished = run_cli(*arguments)
    assert finished.returncode == 2
    assert problem in finished.stderr
    assert finished.stderr.strip().count("\n") == 0 and "Traceback" not in finished.stderr


def test_an_unknown_setting_in_the_file_is_named(tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({"aoi": "9,47,10,48", "grid": {"resolution": 10}}))
    finished = run_cli("--settings", str(settings_file))
    assert finished.returncode == 2 and "grid.resolution: Extra inputs are not permitted" in finished.stderr


def test_a_settings_file_without_a_mapping_is_named(tmp_path: Path) -> None:
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("- just\n- a list\n")
    finished = run_cli("--settings", str(settings_file), "--masker", "scl")
    assert finished.returncode == 2 and "holds no mapping of settings" in finished.stderr


def test_a_settings_file_with_overrides_runs_the_month(
    prefect_harness: None, s3_server: S3Server, stac_api_factory, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    served: ServedMonth = serve_synthetic_month(s3_server, stac_api_factory, tmp_path)
    settings = flow_settings(served, tmp_path / "ws").model_dump(mode="json")
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({**settings, "month": "2019-01"}))
    output_dir = tmp_path / "products"

    status = main(["--settings", str(settings_file), "--month", served.label, "--output-dir", str(output_dir)])

    assert status == 0
    name = run_inputs(flow_settings(served, tmp_path / "ws")).name
    item = output_dir / name / served.label[:4] / served.label[5:] / f"{name}_{served.label}_item.json"
    assert item.is_file()
    assert str(item) in capsys.readouterr().out


BASEMAP = Path(sys.executable).parent / "basemap"
"""The console script `make install` puts in the venv."""
SUBCOMMAND_TIMEOUT_S = 240
"""Bound on one `basemap run` or `basemap backfill` of a served synthetic month (about 30 s on 2 loaded cores)."""


def run_basemap(*arguments: str, api_url: str = "") -> subprocess.CompletedProcess:
    """The installed `basemap` command, as a user runs it; against the Prefect API `api_url` when given."""
    assert BASEMAP.is_file(), "install the package (make install) for the `basemap` command"
    environment = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    environment |= {"PREFECT_API_URL": api_url} if api_url else {}
    return subprocess.run(
        [str(BASEMAP), *arguments], capture_output=True, text=True, timeout=SUBCOMMAND_TIMEOUT_S, env=environment
    )


@pytest.mark.slow
def test_the_installed_basemap_command_names_bad_input_and_lists_its_options() -> None:
    bad_month = run_basemap("run", "--aoi", "9,47,10,48", "--month", "2024-13")
    weights_help = run_basemap("download-models", "--help")
    unknown = run_basemap("deploy")
    assert bad_month.returncode == 2 and "month '2024-13' is not YYYY-MM" in bad_month.stderr
    assert weights_help.returncode == 0 and "usage: basemap download-models" in weights_help.stdout
    assert unknown.returncode == 2 and "invalid choice: 'deploy'" in unknown.stderr


def test_the_installed_basemap_command_runs_a_month_then_a_backfill_to_completion(
    prefect_harness: None, s3_server: S3Server, stac_api_factory, tmp_path: Path
) -> None:
    series = serve_synthetic_series(
        s3_server, stac_api_factory, tmp_path, [month_dates(date(2020, 7, 1)), month_dates(date(2020, 8, 1))]
    )
    first, second = series.labels
    settings = flow_settings(series.served_month(first), tmp_path / "ws", month=None)
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    name = run_inputs(settings.model_copy(update={"month": first})).name
    output_dir = Path(settings.output_dir)

    def item_of(label: str) -> Path:
        return output_dir / name / label[:4] / label[5:] / f"{name}_{label}_item.json"

    api_url = str(PREFECT_API_URL.value())
    month = run_basemap("run", "--settings", str(settings_file), "--month", first, api_url=api_url)
    assert month.returncode == 0, month.stderr
    assert item_of(first).is_file() and not item_of(second).exists()
    scenes = len(series.served_month(first).item_ids)
    used = series.served_month(first).acquisitions
    assert f"Basemap {name} {first}: {used} of {scenes} scenes used" in month.stdout, month.stdout
    assert f"  item       {item_of(first)}" in month.stdout, month.stdout

    backfill = run_basemap(
        "backfill", "--settings", str(settings_file), "--start-month", first, "--end-month", second, api_url=api_url
    )
    assert backfill.returncode == 0, backfill.stderr
    assert item_of(second).is_file()
    lines = backfill.stdout.splitlines()
    assert f"Backfill {name} {first}..{second}:" in lines, backfill.stdout
    assert any(line.startswith(f"  {first} refilled") for line in lines), backfill.stdout  # published: gaps refilled
    assert any(line.startswith(f"  {second} built") and str(item_of(second)) in line for line in lines), backfill.stdout


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [
        (["--aoi", "9,47,10,48", "--start-month", "2024-05", "--end-month", "2024-02"], "before start month 2024-05"),
        (["--aoi", "9,47,10,48", "--start-month", "2024-13", "--end-month", "2025-02"], "month '2024-13' is not YYYY-MM"),
        (["--aoi", "/nowhere/field.gpkg", "--start-month", "2024-01", "--end-month", "2024-02"], "cannot be read"),
        (
            ["--aoi", "9,47,10,48", "--start-month", "2024-01", "--end-month", "2024-02", "--max-concurrent-months", "0"],
            "--max-concurrent-months must be 1..",
        ),
    ],
    ids=["reversed range", "month 13", "missing AOI file", "no month at once"],
)
def test_a_bad_backfill_ends_in_one_line_and_status_2(
    arguments: list[str], problem: str, capsys: pytest.CaptureFixture
) -> None:
    assert backfill_main(arguments) == 2
    stderr = capsys.readouterr().err
    assert problem in stderr and stderr.strip().count("\n") == 0, stderr


def test_a_backfill_from_the_command_line_lists_every_month(
    prefect_harness: None, s3_server: S3Server, stac_api_factory, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    series = serve_synthetic_series(
        s3_server, stac_api_factory, tmp_path, [month_dates(date(2020, 3, 1)), month_dates(date(2020, 4, 1))]
    )
    settings = flow_settings(series.served_month(series.labels[0]), tmp_path / "ws", month=None)
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump(settings.model_dump(mode="json")))

    arguments = ["--settings", str(settings_file), "--start-month", series.labels[0], "--end-month", series.labels[-1]]
    assert backfill_main(arguments) == 0
    built = capsys.readouterr().out
    assert backfill_main(arguments) == 0
    skipped = capsys.readouterr().out

    assert all(f"{label} built" in built for label in series.labels), built
    assert all(f"{label} skipped" in skipped for label in series.labels), skipped


def run_cli_against(api_url: str, *arguments: str, **environment: str) -> subprocess.CompletedProcess:
    """`python -m flows.run` with `PREFECT_API_URL` (or, when empty, none: the embedded API) and `environment`."""
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    env |= {"PREFECT_API_URL": api_url} if api_url else {}
    return subprocess.run(
        [sys.executable, "-m", "flows.run", *arguments],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env={**env, **environment},
    )  # fmt: skip


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
def test_a_products_store_that_refuses_connections_ends_in_one_line(
    prefect_harness: None, tmp_path: Path, debug: bool, refused_endpoint: str
) -> None:
    save_products_block("refusing-store", "basemaps", "products", refused_endpoint)
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({"s3_block": "refusing-store", "workspace": str(tmp_path / "ws")}))

    finished = run_cli_against(
        str(PREFECT_API_URL.value()),
        "--settings", str(settings_file), "--aoi", "9.10,47.52,9.20,47.58", "--month", "2024-06", "--masker", "scl",
        *(["--debug"] if debug else []),
    )  # fmt: skip

    last_line = finished.stderr.strip().splitlines()[-1]
    assert finished.returncode == 1, finished.stderr
    assert last_line.startswith("run failed: the products store did not answer for s3://basemaps/products/"), last_line
    assert refused_endpoint in last_line and "check that it is up and the s3_block's endpoint_url" in last_line
    assert ("Traceback" in finished.stderr + finished.stdout) == debug, finished.stderr
    assert [line for line in finished.stderr.splitlines() if line.startswith("run failed:")] == [last_line]


@pytest.mark.slow
def test_an_embedded_api_that_does_not_start_in_time_is_named_in_one_line(tmp_path: Path) -> None:
    finished = run_cli_against(
        "",
        "--aoi", "9.10,47.52,9.20,47.58", "--month", "2024-06", "--masker", "scl", "--workspace", str(tmp_path / "ws"),
        PREFECT_HOME=str(tmp_path / "prefect-home"),  # a new database to migrate: no start is that quick
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="1",
    )  # fmt: skip

    (failure,) = [line for line in finished.stderr.splitlines() if line.startswith("run failed:")]
    assert finished.returncode == 1, finished.stderr
    assert failure.startswith("run failed: Prefect's embedded API did not start within 1 s"), failure
    assert "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in failure
    assert "Traceback" not in finished.stderr


def test_the_embedded_api_gets_a_generous_start_unless_the_user_chose_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    with temporary_settings(updates={PREFECT_API_URL: None}):
        with waiting_long_enough():
            assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == STARTUP_TIMEOUT_S
        with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 7}), waiting_long_enough():
            assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == 7


def test_the_summary_lists_failed_scenes_as_failed(capsys: pytest.CaptureFixture) -> None:
    report = RunReport(
        aoi="lake", month="2024-06", scenes_found=3, scenes_used=2, failed_scenes=[("S2B_1", "red: not found (HTTP 404)")]
    )
    print_report(report)
    printed = capsys.readouterr().out
    assert "  failed     S2B_1: red: not found (HTTP 404)" in printed and "skipped" not in printed
    print_report(replace(report, scenes_found=5))
    assert "2 of 5 scenes used (2 skipped: metadata.json says why)" in capsys.readouterr().out
