"""Quicklook PNG: size, mode, stretch, transparency, and that it is read from an overview."""

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from tasks.cog import MOSAIC_PROFILE, finalise_mosaic, write_cog
from tasks.quicklook import overview_level_for, read_rgb_overview, stretch_to_rgba, write_quicklook
from tests.staging_rasters import StagingRasters, make_staging_rasters


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, StagingRasters]:
    out_dir = tmp_path_factory.mktemp("quicklook")
    staging = make_staging_rasters(out_dir)
    finalise_mosaic(staging.mosaic_path, staging.aoi, staging.grid)
    cog_path = out_dir / "mosaic.tif"
    write_cog(staging.mosaic_path, cog_path, MOSAIC_PROFILE)
    return cog_path, staging


def test_quicklook_is_an_rgba_png_that_fits(mosaic: tuple[Path, StagingRasters], tmp_path: Path) -> None:
    cog_path, staging = mosaic
    destination = tmp_path / "quicklook.png"

    height, width = write_quicklook(cog_path, destination)

    with Image.open(destination) as image:
        assert image.format == "PNG" and image.mode == "RGBA"
        assert image.size == (width, height) == (staging.grid.shape.x, staging.grid.shape.y)
        pixels = np.asarray(image)
    alpha = pixels[..., 3]
    assert (alpha[~staging.inside_aoi] == 0).all(), "outside the AOI is transparent"
    assert (alpha[staging.mosaic[0] != 0] == 255).all()
    assert (alpha[staging.inside_aoi & (staging.mosaic[0] == 0)] == 0).all(), "empty AOI pixels are transparent"
    visible = pixels[alpha == 255][:, :3]
    assert visible.min() == 0 and visible.max() == 255, "a 2-98 % stretch saturates both ends"
    assert 0.01 < (visible == 255).mean() < 0.05


def test_a_small_limit_reads_an_overview_not_the_full_raster(
    mosaic: tuple[Path, StagingRasters], tmp_path: Path
) -> None:
    cog_path, staging = mosaic
    with rasterio.open(cog_path) as dataset:
        first_factor = dataset.overviews(1)[0]
    max_side = max(staging.grid.shape.yx) // first_factor + 1

    rgb = read_rgb_overview(cog_path, max_side)
    height, width = write_quicklook(cog_path, tmp_path / "small.png", max_side)

    assert max(height, width) <= max_side
    assert rgb.shape[1:] == tuple(-(-side // first_factor) for side in staging.grid.shape.yx)
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


def test_a_large_raster_is_read_no_larger_than_the_limit(mosaic: tuple[Path, StagingRasters]) -> None:
    cog_path, _ = mosaic

    rgb = read_rgb_overview(cog_path, max_side=100)

    assert max(rgb.shape[1:]) <= 100


def test_all_nodata_is_fully_transparent() -> None:
    rgba = stretch_to_rgba(np.zeros((3, 8, 8), dtype=np.uint16))

    assert rgba.shape == (8, 8, 4) and not rgba.any()
