"""COG products: layout, georeferencing, AOI clipping, validation."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from tasks.cog import (
    COUNT_PROFILE,
    MOSAIC_BANDS,
    MOSAIC_PROFILE,
    REFLECTANCE_SCALE_FACTOR,
    finalise_count,
    finalise_mosaic,
    validate_cog,
    write_cog,
)
from tasks.errors import InvalidProduct
from tests.staging_rasters import StagingRasters, make_staging_rasters


def _mosaic_cog(staging: StagingRasters, out_dir: Path) -> Path:
    finalise_mosaic(staging.mosaic_path, staging.aoi, staging.grid)
    destination = out_dir / "mosaic.tif"
    write_cog(staging.mosaic_path, destination, MOSAIC_PROFILE)
    return destination


def test_mosaic_is_a_valid_cog_on_the_grid(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "staging")
    cog_path = _mosaic_cog(staging, tmp_path)

    assert validate_cog(cog_path, strict=True) == []
    with rasterio.open(cog_path) as dataset:
        assert dataset.crs == CRS.from_wkt(staging.grid.crs.to_wkt())
        assert dataset.transform.almost_equals(staging.grid.affine)
        assert dataset.shape == staging.grid.shape.yx
        assert dataset.count == 4 and set(dataset.dtypes) == {"uint16"}
        assert dataset.nodata == 0
        assert dataset.descriptions == tuple(band.description for band in MOSAIC_BANDS)
        assert dataset.descriptions[0] == "red (B04)"
        assert dataset.scales == (REFLECTANCE_SCALE_FACTOR,) * 4
        assert dataset.offsets == (0.0,) * 4
        assert dataset.overviews(1), "a raster larger than one block needs internal overviews"
        assert dataset.block_shapes[0] == (512, 512)
        assert dataset.compression.name.lower() == "deflate"
        assert dataset.tags(ns="IMAGE_STRUCTURE").get("PREDICTOR") == "2"
        assert np.array_equal(dataset.read(), staging.mosaic)


def test_mosaic_overviews_average_the_full_resolution_pixels(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "staging")
    cog_path = _mosaic_cog(staging, tmp_path)

    with rasterio.open(cog_path, overview_level=0) as overview:
        first_overview = overview.read(1).astype(np.float64)
    height, width = (side // 2 * 2 for side in staging.grid.shape.yx)
    pairs = staging.mosaic[0, :height, :width].reshape(height // 2, 2, width // 2, 2).astype(np.float64)
    all_valid = (pairs != 0).all(axis=(1, 3))
    expected = pairs.mean(axis=(1, 3))

    assert all_valid.sum() > 1000
    assert np.abs(first_overview[: height // 2, : width // 2][all_valid] - expected[all_valid]).max() <= 1.0


def test_pixels_outside_the_aoi_become_nodata(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "staging", data_outside_aoi=True)
    with rasterio.open(staging.mosaic_path) as dataset:
        assert (dataset.read()[:, ~staging.inside_aoi] != 0).all(), "the test input must have data outside"

    cog_path = _mosaic_cog(staging, tmp_path)

    with rasterio.open(cog_path) as dataset:
        pixels = dataset.read()
    assert (pixels[:, ~staging.inside_aoi] == 0).all()
    assert np.array_equal(pixels[:, staging.inside_aoi], staging.mosaic[:, staging.inside_aoi])
    assert (pixels[:, staging.inside_aoi] != 0).any()


def test_count_is_a_uint8_cog_without_nodata_and_zero_outside(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "staging", data_outside_aoi=True)

    emptied = finalise_count(staging.count_path, staging.aoi, staging.grid)
    destination = tmp_path / "count.tif"
    write_cog(staging.count_path, destination, COUNT_PROFILE)

    assert emptied == int((~staging.inside_aoi).sum())
    validate_cog(destination)
    with rasterio.open(destination) as dataset:
        assert dataset.dtypes == ("uint8",)
        assert dataset.nodata is None
        assert dataset.transform.almost_equals(staging.grid.affine)
        assert np.array_equal(dataset.read(), staging.count)


def test_a_raster_off_the_grid_is_refused(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "staging")
    shifted_grid = staging.grid.translate_pix(3, 0)

    with pytest.raises(InvalidProduct, match="not on the target grid"):
        finalise_mosaic(staging.mosaic_path, staging.aoi, shifted_grid)


def test_a_count_in_place_of_the_mosaic_is_refused(tmp_path: Path) -> None:
    staging = make_staging_rasters(tmp_path / "staging")

    with pytest.raises(InvalidProduct, match="4 uint16"):
        finalise_mosaic(staging.count_path, staging.aoi, staging.grid)


def test_a_plain_striped_tiff_fails_cog_validation(tmp_path: Path) -> None:
    path = tmp_path / "striped.tif"
    profile = {"driver": "GTiff", "count": 1, "height": 1200, "width": 1200, "dtype": "uint8", "tiled": False}
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.ones((1, 1200, 1200), dtype=np.uint8))

    with pytest.raises(InvalidProduct, match="not a valid Cloud Optimized GeoTIFF"):
        validate_cog(path)
