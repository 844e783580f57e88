"""The local disk a run needs, on real small filesystems (tmpfs): estimates that hold real COGs, folders of one
filesystem adding up, and which failures a full disk is named for."""

import errno
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from odc.geo.geobox import GeoBox

from tasks.core.errors import DiskFull, portable
from tasks.products.cog import (
    COUNT_PROFILE,
    FILL_PROFILE,
    MOSAIC_PROFILE,
    validate_cog,
    write_count_cog,
    write_fill_cog,
    write_mosaic_cog,
)
from tasks.storage.disk_space import (
    OUTPUT_ROLE,
    STAGING_ROLE,
    WORKSPACE_ROLE,
    DiskNeeds,
    FolderNeed,
    MonthWrites,
    month_disk_needs,
    named_disk_full,
)
from tasks.testing.disk_faults import fill_disk

TILE_SIDE = 1024
MOSAIC_BYTES, COUNT_BYTES, FILL_BYTES = 8, 1, 1
"""Bytes a pixel of the mosaic (4 x uint16), count and fill layers takes."""
KIB = 1024


def tile_writes(tiles_in_flight: int = 1) -> MonthWrites:
    """A month of one tile of `TILE_SIDE` pixels a side with mosaic, count and fill layers."""
    return MonthWrites(
        grid_shape=(TILE_SIDE, TILE_SIDE),
        tile_pixels=TILE_SIDE * TILE_SIDE,
        layer_bytes=(MOSAIC_BYTES, COUNT_BYTES, FILL_BYTES),
        tiles=1,
        tiles_in_flight=tiles_in_flight,
        tiled=False,
        single_cogs=True,
    )


def utm_grid(side: int) -> GeoBox:
    return GeoBox.from_bbox((500_000, 5_000_000, 500_000 + 10 * side, 5_000_000 + 10 * side), "EPSG:32633", resolution=10)


def full_disk_gdal_error(folder: Path) -> BaseException:
    """What GDAL raises when a COG is written onto the full filesystem of `folder` (or fails its validation)."""
    fill_disk(folder, leave_bytes=64 * KIB)
    mosaic = np.random.default_rng(0).integers(1, 65_535, (4, 512, 512), dtype=np.uint16)
    try:
        write_mosaic_cog(folder / "mosaic.tif", mosaic, utm_grid(512), MOSAIC_PROFILE)
        validate_cog(folder / "mosaic.tif")
    except Exception as error:
        return error
    raise AssertionError("a COG of 2 MB was written into 64 KB")


def test_a_tiles_staging_share_holds_its_cogs_even_for_incompressible_pixels(
    small_disk_at: Callable[[Path, str], Path], tmp_path: Path
) -> None:
    (staging,) = [need for need in month_disk_needs(tile_writes(), tmp_path, None, None).folders if need.role == STAGING_ROLE]
    scratch = small_disk_at(tmp_path / "scratch", f"{math.ceil(staging.tile_bytes / KIB)}k")
    noise = np.random.default_rng(1)
    grid = utm_grid(TILE_SIDE)

    write_mosaic_cog(scratch / "mosaic.tif", noise.integers(1, 65_535, (4, TILE_SIDE, TILE_SIDE), dtype=np.uint16), grid, MOSAIC_PROFILE)
    write_count_cog(scratch / "count.tif", noise.integers(0, 255, (TILE_SIDE, TILE_SIDE), dtype=np.uint8), grid, COUNT_PROFILE)
    write_fill_cog(scratch / "fill.tif", noise.integers(0, 255, (TILE_SIDE, TILE_SIDE), dtype=np.uint8), grid, FILL_PROFILE)

    for name in ("mosaic.tif", "count.tif", "fill.tif"):
        validate_cog(scratch / name)


def test_folders_on_one_filesystem_add_up_and_name_the_run_short_of_space(
    small_disk_at: Callable[[Path, str], Path], tmp_path: Path
) -> None:
    small = small_disk_at(tmp_path / "small", "160k")
    needs = month_disk_needs(tile_writes(tiles_in_flight=2), small / "staging", small / "ws", tmp_path / "output")
    on_small = [need for need in needs.folders if need.role in (STAGING_ROLE, WORKSPACE_ROLE)]

    with pytest.raises(DiskFull) as full:
        needs.check()

    assert full.value.folders == ((str(small / "staging"), STAGING_ROLE), (str(small / "ws"), WORKSPACE_ROLE))
    assert full.value.needed_bytes == sum(2 * need.tile_bytes + need.month_bytes for need in on_small)
    assert full.value.free_bytes == shutil.disk_usage(small).free
    message = str(full.value)
    assert message.startswith(f"no space left on device in {small / 'staging'} (staging_dir), {small / 'ws'} (workspace): ")
    assert "\n" not in message
    month_disk_needs(tile_writes(), tmp_path / "staging", tmp_path / "ws", tmp_path / "output").check()


def test_a_tile_checks_for_its_own_share_only(small_disk_at: Callable[[Path, str], Path], tmp_path: Path) -> None:
    small = small_disk_at(tmp_path / "small", "1m")
    free = shutil.disk_usage(small).free
    one_tile = DiskNeeds((FolderNeed(STAGING_ROLE, small, free // 2, free),), tiles_in_flight=4)

    one_tile.check_tile()
    with pytest.raises(DiskFull):
        one_tile.check()
    fill_disk(small, leave_bytes=free // 4)
    with pytest.raises(DiskFull):
        one_tile.check_tile()


def test_a_gdal_write_onto_a_full_disk_is_named_when_staging_lacks_the_stages_share(
    small_disk_at: Callable[[Path, str], Path], tmp_path: Path
) -> None:
    small = small_disk_at(tmp_path / "small", "1m")
    error = full_disk_gdal_error(small)
    short = DiskNeeds((FolderNeed(STAGING_ROLE, small, 512 * KIB, 0),))
    roomy = DiskNeeds((FolderNeed(STAGING_ROLE, tmp_path, 512 * KIB, 0),))

    for raised in (error, portable(error)):  # as raised, and as it comes back from a Dask worker
        assert isinstance(short.disk_full(raised, "tile"), DiskFull), repr(raised)
        assert roomy.disk_full(raised, "tile") is None, "a GDAL failure with room to spare is no full disk"
    assert short.disk_full(ValueError("a bug"), "tile") is None
    assert DiskNeeds().disk_full(error, "tile") is None, "a run that asks for no check names nothing"


def test_a_copy_onto_a_full_disk_names_the_filesystem_it_was_writing(
    small_disk_at: Callable[[Path, str], Path], tmp_path: Path
) -> None:
    output = small_disk_at(tmp_path / "output", "160k")
    source = tmp_path / "staging" / "tile.tif"
    source.parent.mkdir()
    source.write_bytes(b"\1" * 400_000)
    needs = DiskNeeds((FolderNeed(STAGING_ROLE, source.parent, 1, 0), FolderNeed(OUTPUT_ROLE, output, 1, 0)))

    with pytest.raises(DiskFull) as full, named_disk_full(needs, "tile"):
        shutil.copyfile(source, output / "tile.tif")

    assert full.value.folders == ((str(output), OUTPUT_ROLE),)
    assert isinstance(full.value.__cause__, OSError) and full.value.__cause__.errno == errno.ENOSPC
