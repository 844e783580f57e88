"""A run whose local disk is too small, or fills up in the middle of the month, on real small filesystems
(tmpfs, `tasks.testing.disk_faults`) and real servers on 127.0.0.1 (moto S3, rustac STAC API, the Prefect
test API): one `DiskFull` line naming the folder, once, no retries, and no month-level file published
without its metadata and Item."""

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from prefect.states import State

from blocks.publish import month_folder
from flows.monthly_mosaic import monthly_mosaic, run_inputs
from flows.parameters import MosaicSettings
from tasks.core.errors import DiskFull
from tasks.products.metadata import TILES_FOLDER
from tasks.testing.disk_faults import fill_disk_when
from tasks.testing.served_month import ServedMonth, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tests.prefect_runs import failed_run_error, flow_run_id, named, one_line, settled_task_runs, subflow_runs

TILE_PX = 128
"""Cuts the served month's AOI (216 x 216 pixels) into 2 x 2 tiles."""
LAST_TILE_RECORD = "**/r001c001.json"
"""The record of the last of the 4 tiles (they run in row order, one at a time here)."""
FIRST_TILE_RECORD = "**/r000c000.json"
FILL_TIMEOUT_S = 300.0
MONTH_STAGE_ROOM = 100_000
"""Bytes left free in staging_dir once the tiles are done: the month's indexes fit, its single COGs do not."""


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path)


def month_level_files(settings: MosaicSettings) -> dict[str, bytes]:
    """{name: content} of the month's own files in its local output folder (its tiles aside)."""
    folder = Path(settings.output_dir) / month_folder(run_inputs(settings).name, str(settings.month))
    return {path.name: path.read_bytes() for path in folder.glob("*") if path.is_file()} if folder.is_dir() else {}


def tile_records(settings: MosaicSettings) -> list[Path]:
    """The tile records committed in the run's workspace, of any inputs."""
    return list(Path(run_inputs(settings).workspace.uri(TILES_FOLDER)).glob("**/r*.json"))


def disk_full_line(error: BaseException) -> str:
    """The run's error, checked to be one `DiskFull` line saying it once, with more needed than free."""
    assert isinstance(error, DiskFull), f"{type(error).__name__}: {error}"
    message = one_line(error)
    assert message.count("no space left on device") == 1, message
    sizes = re.search(r"needs about ([\d.,]+) MB, ([\d.,]+) MB free", message)
    assert sizes and float(sizes[1].replace(",", "")) > float(sizes[2].replace(",", "")), message
    return message


def tile_run_counts(state: State) -> list[int]:
    """How many times each tile task of the run ran."""
    tile_runs = named(settled_task_runs([run.id for run in subflow_runs(flow_run_id(state))]), "tile")
    return [run.run_count for run in tile_runs]


@pytest.mark.parametrize("small_folder", ["workspace", "output_dir"])
def test_a_disk_too_small_fails_before_any_scene_is_read(
    served: ServedMonth,
    prefect_harness: None,
    s3_server: S3Server,
    small_disk_at: Callable[[Path, str], Path],
    tmp_path: Path,
    small_folder: str,
) -> None:
    small = small_disk_at(tmp_path / "small", "160k")
    roomy = tmp_path / "roomy"
    workspace, output_dir = (small / "ws", roomy / "output") if small_folder == "workspace" else (roomy / "ws", small / "output")
    settings = flow_settings(served, workspace, output_dir=str(output_dir), tiles={"tile_size_px": TILE_PX})
    s3_server.reset_counters()

    state = monthly_mosaic(settings, return_state=True)

    message = disk_full_line(failed_run_error(state))
    if small_folder == "workspace":  # the staging folder lies in the workspace: both are named
        assert f"{workspace / '.staging'} (staging_dir), {workspace} (workspace):" in message, message
    else:
        assert f"in {output_dir} (output_dir):" in message, message
    assert s3_server.requests_for(f"/{served.bucket}/") == 0, "scenes were read"
    assert month_level_files(settings) == {}


@pytest.mark.parametrize("small_folder", ["workspace", "output_dir"])
def test_a_disk_filling_up_between_tiles_ends_the_run_in_one_line_without_retries(
    served: ServedMonth,
    prefect_harness: None,
    small_disk_at: Callable[[Path, str], Path],
    tmp_path: Path,
    small_folder: str,
) -> None:
    small = small_disk_at(tmp_path / "small", "3m")
    roomy = tmp_path / "roomy"
    workspace, output_dir = (small / "ws", roomy / "output") if small_folder == "workspace" else (roomy / "ws", small / "output")
    settings = flow_settings(
        served, workspace, output_dir=str(output_dir), tiles={"tile_size_px": TILE_PX}, runner={"max_concurrent_tiles": 1}
    )

    with fill_disk_when(FIRST_TILE_RECORD, workspace, small, FILL_TIMEOUT_S) as filled:
        state = monthly_mosaic(settings, return_state=True)

    assert filled.is_set(), "the disk was not filled"
    message = disk_full_line(failed_run_error(state))
    assert 0 < len(tile_records(settings)) < 4, "the disk should fill up between tiles"
    full_folder = f"{workspace / '.staging'} (staging_dir)" if small_folder == "workspace" else f"{output_dir} (output_dir)"
    assert full_folder in message, message
    assert message in str(state.message) and str(state.message).count("no space left on device") == 1, state.message
    assert tile_run_counts(state) and set(tile_run_counts(state)) == {1}, "a tile was retried"
    assert month_level_files(settings) == {}


def test_a_disk_filling_up_in_the_month_stage_publishes_no_month_file_and_keeps_the_previous_month(
    served: ServedMonth, prefect_harness: None, small_disk_at: Callable[[Path, str], Path], tmp_path: Path
) -> None:
    staging = small_disk_at(tmp_path / "staging", "3m")
    first = flow_settings(
        served,
        tmp_path / "ws",
        staging_dir=str(staging),
        tiles={"tile_size_px": TILE_PX},
        runner={"max_concurrent_tiles": 1},
    )
    records = Path(run_inputs(first).workspace.uri(TILES_FOLDER))
    with fill_disk_when(LAST_TILE_RECORD, records, staging, FILL_TIMEOUT_S, leave_bytes=MONTH_STAGE_ROOM) as filled:
        failed = monthly_mosaic(first, return_state=True)
    assert filled.is_set(), "the disk was not filled"
    assert len(tile_records(first)) == 4, "the disk should fill up once every tile is committed"
    assert month_level_files(first) == {}, "a month-level file was published"
    disk_full_line(failed_run_error(failed))

    (staging / "filler").unlink()
    assert monthly_mosaic(first, return_state=True).is_completed()
    published = month_level_files(first)
    assert any(name.endswith("_item.json") for name in published) and any(name.endswith(".vrt") for name in published)
    other_inputs = first.model_copy(update={"composite": first.composite.model_copy(update={"percentile": 50.0})})
    with fill_disk_when(LAST_TILE_RECORD, records, staging, FILL_TIMEOUT_S, leave_bytes=MONTH_STAGE_ROOM) as filled:
        failed_again = monthly_mosaic(other_inputs, return_state=True)

    assert filled.is_set(), "the disk was not filled"
    assert len(tile_records(other_inputs)) == 8, "the disk should fill up once every tile is committed"
    assert month_level_files(first) == published, "the complete month published before changed"
    disk_full_line(failed_run_error(failed_again))
