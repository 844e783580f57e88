"""The mosaic index: a VRT over tile COGs opens as the assembled raster, wherever its folder is copied."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from tasks.core.scene import NODATA
from tasks.products.cog import COUNT_DESCRIPTION, MOSAIC_BANDS, REFLECTANCE_SCALE_FACTOR
from tasks.products.mosaic_index import IndexTile
from tests.product_arrays import ProductArrays, make_product_arrays, write_indexed_tiles


@pytest.fixture(scope="module")
def arrays() -> ProductArrays:
    return make_product_arrays()


@pytest.fixture
def indexed(arrays: ProductArrays, tmp_path: Path) -> tuple[Path, Path, list[IndexTile]]:
    """The arrays in 2 x 2 tiles of 512 pixels (710 x 778 grid: tiles 512 x 512, 198 x 512, 512 x 266, 198 x 266)."""
    return write_indexed_tiles(arrays, tmp_path / "month")


def test_the_index_of_four_tiles_opens_as_the_assembled_mosaic(arrays: ProductArrays, indexed: tuple) -> None:
    mosaic_index, _, tiles = indexed
    assert len(tiles) == 4 and len({(tile.height, tile.width) for tile in tiles}) == 4, "tiles of four sizes"

    with rasterio.open(mosaic_index) as dataset:
        assert dataset.driver == "VRT"
        assert dataset.crs == CRS.from_wkt(arrays.grid.crs.to_wkt())
        assert dataset.transform.almost_equals(arrays.grid.affine)
        assert dataset.shape == arrays.grid.shape.yx
        assert dataset.count == 4 and set(dataset.dtypes) == {"uint16"}
        assert dataset.descriptions == tuple(band.description for band in MOSAIC_BANDS)
        assert dataset.nodatavals == (0,) * 4
        assert dataset.scales == (REFLECTANCE_SCALE_FACTOR,) * 4 and dataset.offsets == (0.0,) * 4
        assert np.array_equal(dataset.read(), arrays.mosaic)


def test_the_count_index_keeps_no_nodata(arrays: ProductArrays, indexed: tuple) -> None:
    _, count_index, _ = indexed

    with rasterio.open(count_index) as dataset:
        assert dataset.dtypes == ("uint8",) and dataset.nodata is None
        assert dataset.descriptions == (COUNT_DESCRIPTION,)
        assert np.array_equal(dataset.read(1), arrays.count)


def test_the_index_names_its_tiles_relative_to_itself(arrays: ProductArrays, indexed: tuple, tmp_path: Path) -> None:
    mosaic_index, count_index, _ = indexed
    assert str(mosaic_index.parent) not in mosaic_index.read_text()
    copy = tmp_path / "elsewhere" / "copied"
    shutil.copytree(mosaic_index.parent, copy)
    shutil.rmtree(mosaic_index.parent)

    with rasterio.open(copy / mosaic_index.name) as mosaic, rasterio.open(copy / count_index.name) as count:
        assert np.array_equal(mosaic.read(), arrays.mosaic)
        assert np.array_equal(count.read(1), arrays.count)


def test_a_downsampled_read_of_the_index_averages_the_mosaic(arrays: ProductArrays, indexed: tuple) -> None:
    mosaic_index, _, _ = indexed
    height, width = (side // 2 for side in arrays.grid.shape.yx)

    with rasterio.open(mosaic_index) as dataset:
        half = dataset.read(out_shape=(4, height, width), resampling=Resampling.average).astype(np.float64)

    blocks = arrays.mosaic[:, : 2 * height, : 2 * width].reshape(4, height, 2, width, 2).astype(np.float64)
    all_valid = (blocks != NODATA).all(axis=(0, 2, 4))
    all_empty = (blocks == NODATA).all(axis=(0, 2, 4))
    assert all_valid.sum() > 10_000 and all_empty.any()
    assert np.abs(half - blocks.mean(axis=(2, 4)))[:, all_valid].max() <= 0.5
    assert (half[:, all_empty] == NODATA).all()


def test_opening_the_index_opens_no_tile_and_a_read_only_those_beneath(arrays: ProductArrays, indexed: tuple) -> None:
    mosaic_index, _, tiles = indexed
    first, *_, last = tiles
    (mosaic_index.parent / first.path).unlink()

    with rasterio.open(mosaic_index) as dataset:
        window = Window(last.col_offset, last.row_offset, last.width, last.height)
        assert np.array_equal(dataset.read(window=window), arrays.mosaic[:, last.row_offset :, last.col_offset :])
        with pytest.raises(RasterioIOError):
            dataset.read(window=Window(first.col_offset, first.row_offset, first.width, first.height))
