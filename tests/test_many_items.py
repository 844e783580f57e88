"""A month of thousands of items runs, and nothing the size of its search result is a flow or task parameter.

Issue 9: Prefect refuses a flow run whose JSON-encoded parameters exceed 524,288 bytes, so the found
items must travel through the workspace, never as parameters. Here a month of more than 2000 items
is served by rustac and the real flow runs it over a 2 x 2-tile AOI on the Prefect API; then every
flow run and task run the API recorded for it is read back and must be small.

What is real: the STAC API (rustac, paged like Earth Search), Earth Search v1 item dicts
(`tasks.testing.synthetic.stac_item`: five assets with `raster:bands` and `proj:*`, MGRS and sky properties,
densified EPSG:4326 footprints; 2.5 KB each), COGs in moto S3 read through GDAL `/vsis3/`, the search
filters (every item is in the AOI and month, has all bands, is under the cloud limit, and is its own
acquisition: a distinct MGRS tile code at one of six dates), the tiles' reads, SCL masks and
composites, and the month's products. What is reduced, to run in about two minutes on 2 cores: the
"MGRS tiles" are 240 m squares (12 px of 20 m), each inside one output tile so that each item is read
exactly once; each is seen on the six dates of one synthetic month, whose items share that date's
COGs (each item reads only its square of them); and the skies are clear, so that every item gives the
mosaic clear pixels and is counted as used.
"""

import json
import math
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from odc.geo.geom import Geometry, polygon
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun

from flows.monthly_mosaic import SEARCH_FOLDER, RunInputs, monthly_mosaic, run_inputs
from tasks.geometry.aoi import aoi_in_crs
from tasks.geometry.tiles import tile_grid, tiles_over_aoi
from tasks.products.metadata import TILES_FOLDER
from tasks.testing.served_month import ServedMonth, assert_every_scene_accounted, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tasks.testing.synthetic import SyntheticMonth, stac_collection, stac_item
from tasks.tiling.tile import RECORD_SUFFIX, TileRecord
from tests.prefect_runs import MONTH_PRODUCTS_TASK, TILE_TASK, named, settled_task_runs, subflow_runs

PARAMETER_LIMIT_BYTES = 524_288
"""Prefect's ceiling on one flow run's JSON-encoded parameters (HTTP 422 above it)."""
RECORD_LIMIT_BYTES = 16 * 1024
"""What a flow run's parameters, or a task run's whole record, may take here: settings, never items."""
MIN_ITEMS = 2000
TILE_SIZE_PX = 128
"""Output tiles of 128 px cut the 216 x 216 px grid of the served AOI into 2 x 2."""
EXPECTED_TILES = 4
SCENE_READS_PER_TILE = 1
"""Reads of these tiny windows are CPU-bound Python (opening five COGs, AWS sessions): more reads at
once in a tile only contend for the GIL (measured: the tiles took 112 s with 4, 91 s with 1)."""
SQUARE_PX = 12
"""Edge of each item's footprint, in grid pixels (20 m)."""
SQUARE_STEP_PX = 10
"""Distance between neighbouring footprints in a tile, in pixels: neighbours overlap by 2 px."""
FOOTPRINT_SEGMENT_M = 60.0
"""Footprint edges are cut into pieces this long before going to EPSG:4326 (Earth Search footprints
have tens of vertices)."""
MGRS_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"
"""The letters of an MGRS 100 km square code."""


def mgrs_code(index: int) -> str:
    """A distinct MGRS-shaped tile code for each index below 576 (UTM zone 33, latitude band T)."""
    return f"33T{MGRS_LETTERS[index // len(MGRS_LETTERS)]}{MGRS_LETTERS[index % len(MGRS_LETTERS)]}"


def square_footprints(inputs: RunInputs, count: int) -> list[Geometry]:
    """`count` footprints in EPSG:4326: squares of `SQUARE_PX` inside the AOI, each at least a pixel
    inside one output tile, tile by tile and row by row."""
    aoi = aoi_in_crs(inputs.aoi, inputs.grid.crs)
    squares = []
    for tile in tiles_over_aoi(inputs.grid, inputs.aoi, TILE_SIZE_PX):
        tile_box = tile_grid(inputs.grid, TILE_SIZE_PX, tile)
        height, width = tile_box.shape.yx
        for row in range(1, height - SQUARE_PX, SQUARE_STEP_PX):
            for col in range(1, width - SQUARE_PX, SQUARE_STEP_PX):
                corners = [
                    (col, row),
                    (col + SQUARE_PX, row),
                    (col + SQUARE_PX, row + SQUARE_PX),
                    (col, row + SQUARE_PX),
                ]
                world = [tile_box.affine @ corner for corner in corners]
                square = polygon([*world, world[0]], crs=inputs.grid.crs)
                if aoi.contains(square):
                    squares.append(square.to_crs("EPSG:4326", resolution=FOOTPRINT_SEGMENT_M))
    assert len(squares) >= count, f"only {len(squares)} squares fit the AOI's tiles"
    return squares[:count]


def square_items(month: SyntheticMonth, footprints: list[Geometry]) -> list[dict[str, Any]]:
    """One item per square and date of `month`: the square's tile code and footprint, the date's time, COGs and sky."""
    items = []
    for square, footprint in enumerate(footprints):
        code = mgrs_code(square)
        for base in month.items:
            properties = base["properties"]
            day = date.fromisoformat(properties["datetime"][:10])
            item_id = f"{base['id'].split('_')[0]}_{code}_{day:%Y%m%d}_0_L2A"
            hrefs = {key: asset["href"] for key, asset in base["assets"].items()}
            sky = {key: value for key, value in properties.items() if key == "eo:cloud_cover" or key.startswith("s2:")}
            baseline = properties["s2:processing_baseline"]
            items.append(stac_item(item_id, day, baseline, hrefs, month.grid, footprint, code, sky))
    return items


def parameter_sizes(flow_runs: list[FlowRun]) -> dict[str, int]:
    """{flow run name: bytes of its JSON-encoded parameters, as the API holds them}."""
    return {run.name: len(json.dumps(run.parameters)) for run in flow_runs}


def run_records(flow_run_id: UUID) -> tuple[list[FlowRun], dict[str, int]]:
    """The flow run and its subflow runs, and {task run name: bytes of its JSON record} of all their task runs."""
    with get_client(sync_client=True) as client:
        flow_runs = [client.read_flow_run(flow_run_id), *subflow_runs(flow_run_id)]
    task_runs = settled_task_runs([run.id for run in flow_runs])
    assert len(named(task_runs, TILE_TASK)) == EXPECTED_TILES and len(named(task_runs, MONTH_PRODUCTS_TASK)) == 1
    return flow_runs, {run.name: len(run.model_dump_json()) for run in task_runs}


def scenes_read_by_tile(inputs: RunInputs) -> list[list[str]]:
    """The item ids each committed tile read (its record's scene pixels), one list per tile."""
    records = Path(inputs.workspace.uri(TILES_FOLDER)).glob(f"**/*{RECORD_SUFFIX}")
    return [list(TileRecord.from_json(path.read_bytes()).scene_pixels) for path in records]


@pytest.mark.slow
def test_a_month_of_thousands_of_items_runs_and_no_parameter_holds_them(
    s3_server: S3Server, stac_api_factory, prefect_harness: None, tmp_path: Path
) -> None:
    base = serve_synthetic_month(
        s3_server, stac_api_factory, tmp_path, duplicated_dates=(), cloud_cover=(0.0,), thin_cover=0.0
    )
    workspace = tmp_path / "ws"
    inputs = run_inputs(flow_settings(base, workspace))
    footprints = square_footprints(inputs, math.ceil(MIN_ITEMS / len(base.month.items)))
    items = square_items(base.month, footprints)
    served = ServedMonth(
        replace(base.month, items=items), stac_api_factory(stac_collection(items), items), base.bucket, base.aoi_path
    )
    settings = flow_settings(
        served, workspace, tiles={"tile_size_px": TILE_SIZE_PX}, runner={"max_concurrent_scenes": SCENE_READS_PER_TILE}
    )
    assert run_inputs(settings).grid == inputs.grid

    state = monthly_mosaic(settings, return_state=True)

    report = state.result()
    assert report.scenes_found == report.scenes_used == len(items) >= MIN_ITEMS and not report.failed_scenes
    metadata = json.loads(Path(report.product_urls["metadata"]).read_text())
    assert_every_scene_accounted(metadata, served)
    assert len(metadata["scenes_used"]) == metadata["scenes_found"] == len(items)
    assert len(metadata["files"]["tiles"]) == EXPECTED_TILES
    assert all(Path(path).stat().st_size > 0 for path in report.product_urls.values())
    read_by_tile = scenes_read_by_tile(inputs)
    assert len(read_by_tile) == EXPECTED_TILES and sorted(sum(read_by_tile, [])) == sorted(served.item_ids)
    (found_items,) = Path(inputs.workspace.uri(SEARCH_FOLDER)).glob("*.json")
    assert found_items.stat().st_size > PARAMETER_LIMIT_BYTES, "the month's items should not fit in a parameter"

    flow_runs, task_record_sizes = run_records(state.state_details.flow_run_id)
    assert len(flow_runs) == 2, [run.name for run in flow_runs]  # the month's run and its build-tiles subflow
    assert max(parameter_sizes(flow_runs).values()) < RECORD_LIMIT_BYTES, parameter_sizes(flow_runs)
    assert max(task_record_sizes.values()) < RECORD_LIMIT_BYTES, task_record_sizes
