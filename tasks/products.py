"""All products of one run, assembled into a workspace under deterministic names.

From the composite's staging mosaic and count (local plain GeoTIFFs on the target grid) this writes,
into one `Workspace` folder (local or `s3://`), with `<aoi>_<YYYY-MM>` as the stem:

    _mosaic.tif     4-band uint16 COG, surface reflectance x 10000, nodata 0
    _count.tif      1-band uint8 COG, clear observations per pixel (0 = none; no nodata value)
    _quicklook.png  RGBA quicklook, longest side <= 1024 px
    _metadata.json  scenes, settings, statistics, software versions, attribution
    _item.json      STAC Item with relative asset hrefs, validated offline

Everything is built on temporary names first; only when all five are made and validated are they
committed, in the order above, so the STAC Item appears last: an Item in the workspace means the
product is complete, and a failure at any point leaves no Item (and, before the commits, no file).
"""

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.cog import (
    COUNT_PROFILE,
    MOSAIC_BANDS,
    MOSAIC_PROFILE,
    finalise_count,
    finalise_mosaic,
    validate_cog,
    write_cog,
)
from tasks.errors import portable_errors
from tasks.metadata import ProductNames, ProductRun, band_statistics, metadata_json
from tasks.quicklook import write_quicklook
from tasks.retry import io_task_retries
from tasks.stac_item import build_item, item_json
from tasks.workspace import Workspace

COUNT_BAND_NAME = "count"


@contextmanager
def staged_in_order(workspace: Workspace, names: Sequence[str]) -> Iterator[dict[str, Path]]:
    """Temporary local paths for `names`; committed in the order of `names` when the block succeeds.

    When the block raises, nothing is committed; when a commit fails, the names after it are not
    committed. (Contexts unwind last-in first-out, so they are entered in reverse.)
    """
    with ExitStack() as stack:
        yield {name: stack.enter_context(workspace.staged(name)) for name in reversed(names)}


def write_products(workspace: Workspace, run: ProductRun, mosaic_staging: Path, count_staging: Path) -> ProductNames:
    """Write the five products of `run` into `workspace` from the composite's staging rasters.

    The staging rasters are finalised in place first (band metadata; pixels outside the AOI
    emptied). Raises `InvalidProduct` when a raster is off the grid, not a valid COG, or the Item
    does not validate; nothing is committed then.
    """
    names = ProductNames.for_run(run.aoi_name, run.month)
    finalise_mosaic(mosaic_staging, run.aoi, run.grid)
    finalise_count(count_staging, run.aoi, run.grid)
    order = (names.mosaic, names.count, names.quicklook, names.metadata, names.item)
    with staged_in_order(workspace, order) as staged:
        write_cog(mosaic_staging, staged[names.mosaic], MOSAIC_PROFILE)
        validate_cog(staged[names.mosaic])
        write_cog(count_staging, staged[names.count], COUNT_PROFILE)
        validate_cog(staged[names.count])
        band_names = tuple(band.common_name for band in MOSAIC_BANDS)
        mosaic_statistics = band_statistics(staged[names.mosaic], run.aoi, run.grid, band_names)
        (count_statistics,) = band_statistics(staged[names.count], run.aoi, run.grid, (COUNT_BAND_NAME,))
        write_quicklook(staged[names.mosaic], staged[names.quicklook])
        staged[names.metadata].write_bytes(metadata_json(run, names, mosaic_statistics, count_statistics))
        item = build_item(run, names, mosaic_statistics, count_statistics)
        staged[names.item].write_bytes(item_json(item))
    return names


@task(
    name="write-products",
    **io_task_retries(),
    cache_policy=NO_CACHE,
)
@portable_errors
def write_products_task(workspace: Workspace, run: ProductRun, mosaic_staging: Path, count_staging: Path) -> ProductNames:
    """Prefect task: `write_products`, retried on transient I/O errors."""
    return write_products(workspace, run, mosaic_staging, count_staging)
