"""The Dask runner on a cluster as a user runs one: a `dask scheduler` and two `dask worker` programs on
127.0.0.1, reached by `runner.dask_address`, with an `s3://` workspace in moto. A worker is killed in
the middle of the tiles (`tasks.testing.worker_loss`); the month is still published complete, each
tile committed once, and its mosaic equals the threaded run's pixel for pixel.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from blocks.publish import ITEM_PRODUCT
from flows.monthly_mosaic import monthly_mosaic
from tasks.metadata import FILL_LAYER
from tasks.testing.served_month import ServedMonth, flow_settings, serve_synthetic_month
from tasks.testing.servers import S3Server
from tasks.testing.worker_loss import TILE_SIZE_PX, run_month_losing_a_worker

pytest.importorskip("prefect_dask")

PRODUCTS = ("mosaic", "count", FILL_LAYER, "quicklook", "metadata", ITEM_PRODUCT)


@pytest.fixture
def served(s3_server: S3Server, stac_api_factory, tmp_path: Path) -> ServedMonth:
    return serve_synthetic_month(s3_server, stac_api_factory, tmp_path, seed=11)


def read_raster(path: str) -> np.ndarray:
    with rasterio.open(path) as dataset:
        return dataset.read()


@pytest.mark.slow
def test_a_month_survives_a_killed_worker_and_commits_each_tile_once(
    prefect_harness: None, s3_server: S3Server, served: ServedMonth, tmp_path: Path
) -> None:
    outcome = run_month_losing_a_worker(served, s3_server, tmp_path / "worker-loss")

    assert outcome.loss is not None, f"no worker held a finished tile while running another:\n{outcome.cluster_logs}"
    assert 0 < outcome.loss.records_committed < outcome.tiles == 4, outcome.loss
    assert outcome.survived, f"{outcome.failure}\n{outcome.cluster_logs}"
    report = outcome.state.result()
    assert set(report.product_urls) == set(PRODUCTS)
    for url in report.product_urls.values():
        assert Path(url).is_file() and Path(url).stat().st_size > 0, url
    month_folder = Path(report.product_urls["metadata"]).parent
    tiles = json.loads(Path(report.product_urls["metadata"]).read_text())["files"]["tiles"]
    tile_cogs = [month_folder / name for tile in tiles for layer, name in tile.items() if layer != "tile"]
    assert len(tile_cogs) == 3 * len(tiles) and all(cog.is_file() for cog in tile_cogs), "mosaic, count and fill of each tile"

    threaded = flow_settings(
        served, tmp_path / "threads-ws", output_dir=str(tmp_path / "threads-output"), tiles={"tile_size_px": TILE_SIZE_PX}
    )
    threaded_report = monthly_mosaic(threaded)
    for product in ("mosaic", "count"):
        assert np.array_equal(read_raster(report.product_urls[product]), read_raster(threaded_report.product_urls[product])), product
