"""COG products: a tile's mosaic and count as written from its arrays, copies to COG, and validation."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from tasks.core.errors import InvalidProduct
from tasks.geometry.tiles import OutputTile, tile_grid
from tasks.products.cog import (
    COUNT_DESCRIPTION,
    COUNT_PROFILE,
    MOSAIC_BANDS,
    MOSAIC_PROFILE,
    REFLECTANCE_SCALE_FACTOR,
    validate_cog,
    write_cog,
    write_count_cog,
    write_mosaic_cog,
)
from tests.product_arrays import ProductArrays, make_product_arrays

SMALLEST_TILE_PX = 128
"""`TileSettings.tile_size_px`'s lower bound: the grid's last row and column of tiles are 10 and 70 pixels."""


@pytest.fixture(scope="module")
def arrays() -> ProductArrays:
    return make_product_arrays()


@pytest.fixture(scope="module")
def mosaic_cog(arrays: ProductArrays, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cog") / "mosaic.tif"
    write_mosaic_cog(path, arrays.mosaic, arrays.grid, MOSAIC_PROFILE)
    return path


@pytest.fixture(scope="module")
def count_cog(arrays: ProductArrays, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cog") / "count.tif"
    write_count_cog(path, arrays.count, arrays.grid, COUNT_PROFILE)
    return path


def test_mosaic_is_a_valid_cog_on_the_grid(arrays: ProductArrays, mosaic_cog: Path) -> None:
    assert validate_cog(mosaic_cog, strict=True) == []
    with rasterio.open(mosaic_cog) as dataset:
        assert dataset.crs == CRS.from_wkt(arrays.grid.crs.to_wkt())
        assert dataset.transform.almost_equals(arrays.grid.affine)
        assert dataset.shape == arrays.grid.shape.yx
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
        assert np.array_equal(dataset.read(), arrays.mosaic)


def test_mosaic_overviews_average_the_full_resolution_pixels(arrays: ProductArrays, mosaic_cog: Path) -> None:
    with rasterio.open(mosaic_cog, overview_level=0) as overview:
        first_overview = overview.read(1).astype(np.float64)
    height, width = (side // 2 * 2 for side in arrays.grid.shape.yx)
    pairs = arrays.mosaic[0, :height, :width].reshape(height // 2, 2, width // 2, 2).astype(np.float64)
    all_valid = (pairs != 0).all(axis=(1, 3))
    expected = pairs.mean(axis=(1, 3))

    assert all_valid.sum() > 1000
    assert np.abs(first_overview[: height // 2, : width // 2][all_valid] - expected[all_valid]).max() <= 1.0


def test_count_is_a_uint8_cog_without_nodata(arrays: ProductArrays, count_cog: Path) -> None:
    assert validate_cog(count_cog, strict=True) == []
    with rasterio.open(count_cog) as dataset:
        assert dataset.count == 1 and dataset.dtypes == ("uint8",)
        assert dataset.nodata is None
        assert dataset.descriptions == (COUNT_DESCRIPTION,)
        assert dataset.transform.almost_equals(arrays.grid.affine)
        assert dataset.overviews(1)
        assert np.array_equal(dataset.read(1), arrays.count)
    assert (arrays.count[~arrays.inside_aoi] == 0).all() and (arrays.count[arrays.inside_aoi] == 0).any()


def test_count_overviews_pick_a_pixel_beneath_instead_of_averaging(arrays: ProductArrays, count_cog: Path) -> None:
    with rasterio.open(count_cog, overview_level=0) as overview:
        first_overview = overview.read(1)
    height, width = (side // 2 * 2 for side in arrays.grid.shape.yx)
    beneath = arrays.count[:height, :width].reshape(height // 2, 2, width // 2, 2).transpose(0, 2, 1, 3)
    picked = first_overview[: height // 2, : width // 2]

    assert (beneath == picked[:, :, None, None]).any(axis=(2, 3)).all()
    assert (beneath.min(axis=(2, 3)) != beneath.max(axis=(2, 3))).mean() > 0.5, "most blocks hold different counts"


@pytest.mark.parametrize("tile", [OutputTile(0, 0), OutputTile(6, 5)], ids=lambda tile: tile.label)
def test_tiles_of_the_smallest_size_and_cut_short_by_the_grid_are_valid_cogs_on_their_slice(
    arrays: ProductArrays, tile: OutputTile, tmp_path: Path
) -> None:
    tile_box = tile_grid(arrays.grid, SMALLEST_TILE_PX, tile)
    rows, cols = arrays.grid.overlap_roi(tile_box)

    write_mosaic_cog(
        tmp_path / "mosaic.tif", np.ascontiguousarray(arrays.mosaic[:, rows, cols]), tile_box, MOSAIC_PROFILE
    )
    write_count_cog(tmp_path / "count.tif", np.ascontiguousarray(arrays.count[rows, cols]), tile_box, COUNT_PROFILE)

    for name, expected in (("mosaic.tif", arrays.mosaic[:, rows, cols]), ("count.tif", arrays.count[None, rows, cols])):
        assert validate_cog(tmp_path / name, strict=True) == []
        with rasterio.open(tmp_path / name) as dataset:
            assert dataset.transform.almost_equals(tile_box.affine) and dataset.shape == tile_box.shape.yx
            assert np.array_equal(dataset.read(), expected)


def test_write_cog_copies_a_geotiff_with_its_band_metadata(arrays: ProductArrays, tmp_path: Path) -> None:
    source = tmp_path / "striped.tif"
    profile = {
        "driver": "GTiff", "count": 4, "dtype": "uint16", "nodata": 0, "height": arrays.grid.shape.y,
        "width": arrays.grid.shape.x, "crs": arrays.grid.crs.to_wkt(), "transform": arrays.grid.affine,
    }  # fmt: skip
    with rasterio.open(source, "w", **profile) as dataset:
        dataset.write(arrays.mosaic)
        dataset.descriptions = tuple(band.description for band in MOSAIC_BANDS)
        dataset.scales = (REFLECTANCE_SCALE_FACTOR,) * 4
    destination = tmp_path / "mosaic.tif"

    write_cog(source, destination, MOSAIC_PROFILE)

    assert validate_cog(destination, strict=True) == []
    with rasterio.open(destination) as dataset:
        assert dataset.nodata == 0 and dataset.scales == (REFLECTANCE_SCALE_FACTOR,) * 4
        assert dataset.descriptions == tuple(band.description for band in MOSAIC_BANDS)
        assert dataset.block_shapes[0] == (512, 512) and dataset.overviews(1)
        assert np.array_equal(dataset.read(), arrays.mosaic)


def test_a_plain_striped_tiff_fails_cog_validation(tmp_path: Path) -> None:
    path = tmp_path / "striped.tif"
    profile = {"driver": "GTiff", "count": 1, "height": 1200, "width": 1200, "dtype": "uint8", "tiled": False}
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.ones((1, 1200, 1200), dtype=np.uint8))

    with pytest.raises(InvalidProduct, match="not a valid Cloud Optimized GeoTIFF"):
        validate_cog(path)
