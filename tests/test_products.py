"""Assembling a run's products: names, content, atomicity, the Item last, local and S3 workspaces."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tasks.cog import validate_cog
from tasks.errors import InvalidProduct
from tasks.gdal_env import gdal_env
from tasks.metadata import ProductNames
from tasks.month import Month
from tasks.products import write_products
from tasks.stac_item import validate_item
from tasks.workspace import Workspace
from tests.servers import S3Server
from tests.staging_rasters import make_product_run, make_staging_rasters

EXPECTED_NAMES = [
    "l-shaped_2024-06_mosaic.tif",
    "l-shaped_2024-06_count.tif",
    "l-shaped_2024-06_quicklook.png",
    "l-shaped_2024-06_metadata.json",
    "l-shaped_2024-06_item.json",
]


def _record_commits(monkeypatch: pytest.MonkeyPatch, fail_on: str | None = None) -> list[str]:
    """Record the names Workspace commits, in order; raise OSError when committing `fail_on`."""
    committed: list[str] = []
    original_commit = Workspace._commit

    def commit(self: Workspace, staged_path: Path, name: str) -> None:
        if name == fail_on:
            raise OSError(f"connection reset while uploading {name}")
        original_commit(self, staged_path, name)
        committed.append(name)

    monkeypatch.setattr(Workspace, "_commit", commit)
    return committed


def test_products_land_with_deterministic_names_and_the_item_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = make_staging_rasters(tmp_path / "staging", data_outside_aoi=True)
    run = make_product_run(staging)
    output = tmp_path / "output"
    committed = _record_commits(monkeypatch)

    names = write_products(Workspace(str(output)), run, staging.mosaic_path, staging.count_path)

    assert committed == EXPECTED_NAMES
    assert sorted(path.name for path in output.iterdir()) == sorted(EXPECTED_NAMES), "no temporary file is left"
    assert names == ProductNames.for_run("l-shaped", Month(2024, 6))
    validate_cog(output / names.mosaic)
    validate_cog(output / names.count)
    with rasterio.open(output / names.mosaic) as dataset:
        assert (dataset.read()[:, ~staging.inside_aoi] == 0).all()
    item = json.loads((output / names.item).read_text())
    validate_item(item)
    for asset in item["assets"].values():
        assert (output / asset["href"]).is_file(), asset["href"]
    metadata = json.loads((output / names.metadata).read_text())
    assert metadata["attribution"] == "Contains modified Copernicus Sentinel data 2024"
    assert (output / ProductNames.for_run("l-shaped", Month(2024, 6)).item).is_file()


def test_a_failure_while_building_leaves_no_product_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = make_staging_rasters(tmp_path / "staging")
    run = make_product_run(staging)
    output = tmp_path / "output"

    def broken_quicklook(*args: object, **kwargs: object) -> None:
        raise InvalidProduct("quicklook failed")

    monkeypatch.setattr("tasks.products.write_quicklook", broken_quicklook)

    with pytest.raises(InvalidProduct, match="quicklook failed"):
        write_products(Workspace(str(output)), run, staging.mosaic_path, staging.count_path)

    assert list(output.iterdir()) == []
    assert not (output / ProductNames.for_run("l-shaped", Month(2024, 6)).item).exists()


def test_a_failed_commit_stops_before_the_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    staging = make_staging_rasters(tmp_path / "staging")
    run = make_product_run(staging)
    output = tmp_path / "output"
    committed = _record_commits(monkeypatch, fail_on="l-shaped_2024-06_metadata.json")

    with pytest.raises(OSError, match="connection reset"):
        write_products(Workspace(str(output)), run, staging.mosaic_path, staging.count_path)

    assert committed == EXPECTED_NAMES[:3]
    assert sorted(path.name for path in output.iterdir()) == sorted(EXPECTED_NAMES[:3])
    assert not (output / ProductNames.for_run("l-shaped", Month(2024, 6)).item).exists()


def test_an_off_grid_staging_raster_writes_nothing(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "staging")
    run = make_product_run(staging)
    output = tmp_path / "output"

    with pytest.raises(InvalidProduct, match="4 uint16"):
        write_products(Workspace(str(output)), run, staging.count_path, staging.count_path)

    assert not output.exists() or list(output.iterdir()) == []


def test_products_land_in_an_s3_workspace(tmp_path: Path, s3_server: S3Server) -> None:
    staging = make_staging_rasters(tmp_path / "staging")
    run = make_product_run(staging)
    bucket = s3_server.make_bucket("basemaps")
    workspace = Workspace(f"s3://{bucket}/monthly/l-shaped/2024/06")

    names = write_products(workspace, run, staging.mosaic_path, staging.count_path)

    assert all(workspace.exists(name) for name in EXPECTED_NAMES)
    item = json.loads(workspace.read_bytes(names.item))
    validate_item(item)
    assert item["assets"]["mosaic"]["href"] == f"./{names.mosaic}"
    with gdal_env():
        validate_cog(workspace.gdal_path(names.mosaic))
        with rasterio.open(workspace.gdal_path(names.mosaic)) as dataset:
            assert dataset.crs.to_epsg() == 32633
            assert dataset.transform.almost_equals(staging.grid.affine)
            assert np.array_equal(dataset.read(), staging.mosaic)
    assert workspace.exists(ProductNames.for_run(run.aoi_name, run.month).item)
