"""A tile record left unreadable in the workspace (truncated `.json` record or `.npz` histograms, local or
`s3://`), against real servers on 127.0.0.1 (moto S3, rustac STAC API, the Prefect test API): the re-run
warns once naming the file, rebuilds that tile alone, and publishes the month the clean run published."""

import json
import logging
import uuid
from pathlib import Path
from typing import Any
from uuid import UUID

import numpy as np
import pytest
import rasterio
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker

from blocks.publish import month_folder
from flows.monthly_mosaic import monthly_mosaic, run_inputs
from flows.parameters import MosaicSettings
from tasks.testing.disk_faults import corrupt_tile_record
from tasks.testing.served_month import ServedMonth, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tests.prefect_runs import flow_run_id, named, settled_task_runs, subflow_runs

TILE_PX = 128
"""Cuts the served month's AOI (216 x 216 pixels) into 2 x 2 tiles."""
CORRUPTED_TILE = "r000c001"
LOGS_LIMIT = 200


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path)


def published_month(settings: MosaicSettings) -> dict[str, Any]:
    """{file: its pixels} of every raster of the month folder (tiles included), and the statistics of metadata.json."""
    folder = Path(settings.output_dir) / month_folder(run_inputs(settings).name, str(settings.month))
    month: dict[str, Any] = {}
    for path in sorted(folder.rglob("*.tif")) + sorted(folder.glob("*.vrt")):
        with rasterio.open(path) as raster:
            month[str(path.relative_to(folder))] = raster.read()
    (metadata_file,) = folder.glob("*_metadata.json")
    month["statistics"] = statistics_in(json.loads(metadata_file.read_text()))
    return month


def statistics_in(document: Any, path: str = "") -> dict[str, Any]:
    """{where: value} of every "statistics" entry of a metadata document."""
    found: dict[str, Any] = {}
    items = document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    for key, value in items:
        where = f"{path}/{key}"
        if key == "statistics":
            found[where] = value
        else:
            found.update(statistics_in(value, where))
    return found


def warnings_of(flow_run: UUID) -> list[str]:
    APILogWorker.drain_all(timeout=5)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run])), limit=LOGS_LIMIT)
    return [log.message for log in logs if log.level == logging.WARNING]


@pytest.mark.parametrize(
    ("suffix", "workspace_kind"),
    [
        pytest.param(".json", "local", id="record-local"),
        pytest.param(".npz", "local", id="histograms-local"),
        pytest.param(".json", "s3", id="record-s3"),
    ],
)
def test_an_unreadable_tile_record_is_built_again_and_the_month_is_the_clean_runs(
    served: ServedMonth, prefect_harness: None, s3_server: S3Server, tmp_path: Path, suffix: str, workspace_kind: str
) -> None:
    workspace = tmp_path / "ws" if workspace_kind == "local" else f"s3://{s3_server.make_bucket(f'ws-{uuid.uuid4().hex[:12]}')}/ws"
    settings = flow_settings(served, workspace, output_dir=str(tmp_path / "output"), tiles={"tile_size_px": TILE_PX})
    assert monthly_mosaic(settings, return_state=True).is_completed()
    clean = published_month(settings)
    corrupted = corrupt_tile_record(run_inputs(settings).workspace, served.label, CORRUPTED_TILE, suffix)

    rerun = monthly_mosaic(settings, return_state=True)

    assert rerun.is_completed(), rerun.message
    (build,) = subflow_runs(flow_run_id(rerun))
    assert [run.name for run in named(settled_task_runs([build.id]), "tile")] == [f"tile-{CORRUPTED_TILE}"]
    naming = [message for message in warnings_of(build.id) if corrupted in message]
    assert len(naming) == 1 and CORRUPTED_TILE in naming[0], warnings_of(build.id)
    rebuilt = published_month(settings)
    assert rebuilt.keys() == clean.keys()
    for name, pixels in clean.items():
        if name != "statistics":
            assert np.array_equal(rebuilt[name], pixels), name
    assert rebuilt["statistics"] == clean["statistics"]
