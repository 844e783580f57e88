"""Quicklook PNG: size, mode, stretch, transparency, that it is read from an overview, and from a mosaic index."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from tasks.products.cog import MOSAIC_PROFILE, write_mosaic_cog
from tasks.products.quicklook import overview_level_for, read_rgb_overview, stretch_to_rgba, write_quicklook
from tests.product_arrays import ProductArrays, make_product_arrays, write_indexed_tiles


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ProductArrays]:
    arrays = make_product_arrays()
    cog_path = tmp_path_factory.mktemp("quicklook") / "mosaic.tif"
    write_mosaic_cog(cog_path, arrays.mosaic, arrays.grid, MOSAIC_PROFILE)
    return cog_path, arrays


def test_quicklook_is_an_rgba_png_that_fits(mosaic: tuple[Path, ProductArrays], tmp_path: Path) -> None:
    cog_path, arrays = mosaic
    destination = tmp_path / "quicklook.png"

    height, width = write_quicklook(cog_path, destination)

    with Image.open(destination) as image:
        assert image.format == "PNG" and image.mode == "RGBA"
        assert image.size == (width, height) == (arrays.grid.shape.x, arrays.grid.shape.y)
        pixels = np.asarray(image)
    alpha = pixels[..., 3]
    assert (alpha[~arrays.inside_aoi] == 0).all(), "outside the AOI is transparent"
    assert (alpha[arrays.mosaic[0] != 0] == 255).all()
    assert (alpha[arrays.inside_aoi & (arrays.mosaic[0] == 0)] == 0).all(), "empty AOI pixels are transparent"
    visible = pixels[alpha == 255][:, :3]
    assert visible.min() == 0 and visible.max() == 255, "a 2-98 % stretch saturates both ends"
    assert 0.01 < (visible == 255).mean() < 0.05


def test_a_small_limit_reads_an_overview_not_the_full_raster(
    mosaic: tuple[Path, ProductArrays], tmp_path: Path
) -> None:
    cog_path, arrays = mosaic
    with rasterio.open(cog_path) as dataset:
        first_factor = dataset.overviews(1)[0]
    max_side = max(arrays.grid.shape.yx) // first_factor + 1

    rgb = read_rgb_overview(cog_path, max_side)
    height, width = write_quicklook(cog_path, tmp_path / "small.png", max_side)

    assert max(height, width) <= max_side
    assert rgb.shape[1:] == tuple(-(-side // first_factor) for side in arrays.grid.shape.yx)
    with rasterio.open(cog_path, overview_level=0) as overview:
        assert np.array_equal(rgb, overview.read((1, 2, 3)))


@pytest.mark.parametrize(
    ("shape", "factors", "max_side", "level"),
    [
        ((900, 1000), [2, 4], 1024, None),
        ((3000, 2000), [2, 4, 8], 1024, 1),
        ((3000, 2000), [2, 4, 8], 700, 2),
        ((3000, 2000), [2, 4, 8], 1500, 0),
        ((40000, 20000), [2, 4, 8, 16], 1024, 3),
    ],
)
def test_overview_level_is_the_finest_that_fits(
    shape: tuple[int, int], factors: list[int], max_side: int, level: int | None
) -> None:
    assert overview_level_for(shape, factors, max_side) == level


def test_a_large_raster_is_read_no_larger_than_the_limit(mosaic: tuple[Path, ProductArrays]) -> None:
    cog_path, _ = mosaic

    rgb = read_rgb_overview(cog_path, max_side=100)

    assert max(rgb.shape[1:]) <= 100


def test_the_quicklook_of_a_mosaic_index_is_that_of_its_single_cog(
    mosaic: tuple[Path, ProductArrays], tmp_path: Path
) -> None:
    cog_path, arrays = mosaic
    mosaic_index, _, _ = write_indexed_tiles(arrays, tmp_path / "month")

    from_index = write_quicklook(mosaic_index, tmp_path / "index.png")
    from_cog = write_quicklook(cog_path, tmp_path / "cog.png")

    assert from_index == from_cog
    with Image.open(tmp_path / "index.png") as index_image, Image.open(tmp_path / "cog.png") as cog_image:
        assert np.array_equal(np.asarray(index_image), np.asarray(cog_image))


def test_a_small_quicklook_of_a_mosaic_index_fits_and_keeps_nodata_transparent(
    mosaic: tuple[Path, ProductArrays], tmp_path: Path
) -> None:
    _, arrays = mosaic
    mosaic_index, _, _ = write_indexed_tiles(arrays, tmp_path / "month")

    height, width = write_quicklook(mosaic_index, tmp_path / "small.png", max_side=100)

    assert max(height, width) == 100
    with Image.open(tmp_path / "small.png") as image:
        alpha = np.asarray(image)[..., 3]
    assert 0 < (alpha == 255).mean() < 1 and set(np.unique(alpha)) == {0, 255}


def test_all_nodata_is_fully_transparent() -> None:
    rgba = stretch_to_rgba(np.zeros((3, 8, 8), dtype=np.uint16))

    assert rgba.shape == (8, 8, 4) and not rgba.any()
