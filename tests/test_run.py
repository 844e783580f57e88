"""`python -m flows.run` and `basemap backfill`: settings from a file and options, one-line errors for bad input."""

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest
import yaml

from flows.monthly_mosaic import run_inputs
from flows.run import backfill_main, main
from tasks.testing.served_month import (
    ServedMonth,
    flow_settings,
    month_dates,
    serve_synthetic_month,
    serve_synthetic_series,
)
from tasks.testing.servers import S3Server
from tests import REPO_ROOT


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.run", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


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


def test_the_installed_basemap_command_runs_the_subcommands() -> None:
    basemap = Path(sys.executable).parent / "basemap"  # the console script `make install` puts in the venv
    assert basemap.is_file(), "install the package (make install) for the `basemap` command"
    bad_month = subprocess.run(
        [str(basemap), "run", "--aoi", "9,47,10,48", "--month", "2024-13"], capture_output=True, text=True, timeout=120
    )
    weights_help = subprocess.run([str(basemap), "download-models", "--help"], capture_output=True, text=True, timeout=120)
    unknown = subprocess.run([str(basemap), "deploy"], capture_output=True, text=True, timeout=120)
    assert bad_month.returncode == 2 and "month '2024-13' is not YYYY-MM" in bad_month.stderr
    assert weights_help.returncode == 0 and "usage: basemap download-models" in weights_help.stdout
    assert unknown.returncode == 2 and "invalid choice: 'deploy'" in unknown.stderr


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
