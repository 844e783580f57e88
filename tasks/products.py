"""A month's products from its committed tiles: merged scene outcomes, mosaic index, single COGs,
quicklook, metadata.json and the STAC Item, published with the Item last.

The tiles (`tasks.tile`) have already published their COGs into the month folder. This stage adds,
with `<aoi>_<YYYY-MM>` as the stem:

    _mosaic.vrt, _count.vrt   a tiled month's mosaic index over its tile COGs (`tasks.mosaic_index`)
    _mosaic.tif, _count.tif   single COGs: an AOI of one tile (a server-side copy of its tile), or
                              a tiled AOI of at most `single_cog_max_pixels`, copied from the index
    _quicklook.png            RGBA quicklook from the mosaic's overviews
    _metadata.json            scenes, settings, statistics, software, attribution, files
    _item.json                STAC Item listing every file, validated offline

Statistics come from the tiles' histograms, the quicklook from overviews: nothing here reads the
mosaic at full resolution. Products are read back where they were published, with the products
block's own credentials (`MonthDestination.gdal_location`). The Item is withdrawn before any
month-level file is replaced and put last, so an Item in the month folder means every file beside it
is complete; tiles live in `tiles/<inputs digest>/`, so a re-run with other inputs never touches the
tiles a published index points at, and once its Item is out the other inputs' tiles are removed.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.publish import ITEM_PRODUCT
from tasks.cog import (
    COUNT_DESCRIPTION,
    COUNT_DTYPE,
    COUNT_PROFILE,
    MOSAIC_BANDS,
    MOSAIC_DTYPE,
    MOSAIC_PROFILE,
    REFLECTANCE_SCALE_FACTOR,
    CogProfile,
    validate_cog,
    write_cog,
)
from tasks.errors import SceneOutsideAOI, portable_errors
from tasks.gdal_env import gdal_env
from tasks.metadata import TILES_FOLDER, ProductRun, metadata_json, statistics_from_histogram
from tasks.mosaic_index import IndexBand, IndexTile, mosaic_index_xml
from tasks.quicklook import write_quicklook
from tasks.retry import io_task_retries
from tasks.scene import NODATA, FailedScene, SceneItem, SkippedScene, UsedScene
from tasks.stac_collection import collection_id
from tasks.stac_item import build_item, item_json
from tasks.tile import MonthPlan, TileHistograms, TileRecord, scratch_folder
from tasks.tiles import tile_layout

__all__ = [
    "NO_CLEAR_PIXEL",
    "MonthTiles",
    "merge_tiles",
    "month_histograms",
    "write_month_products",
    "write_month_products_task",
]

NO_CLEAR_PIXEL = "no clear pixel in the AOI (cloud, shadow or nodata everywhere it covers)"
COUNT_BAND_NAME = "count"
MONTH_SCRATCH_LABEL = "month"
"""Names the scratch folder of the month's own files (tiles' are named by their label)."""


@dataclass(frozen=True)
class MonthTiles:
    """What a month's tiles add up to. Every found scene is in exactly one of used, failed, skipped.

    A scene that failed in any tile is failed for the month, with the first reason recorded.
    """

    used: tuple[UsedScene, ...]
    failed: tuple[FailedScene, ...]
    skipped: tuple[SkippedScene, ...]
    aoi_pixels: int
    valid_pixels: int

    @property
    def unclear_scenes(self) -> int:
        """Skipped scenes that covered AOI pixels but gave no clear one (the rest cover no AOI pixel)."""
        return sum(skipped.reason == NO_CLEAR_PIXEL for skipped in self.skipped)

    @property
    def valid_share(self) -> float:
        """Share of AOI pixels with at least one usable observation, 0..1."""
        return self.valid_pixels / self.aoi_pixels if self.aoi_pixels else 0.0


def merge_tiles(records: Sequence[TileRecord], items: Sequence[SceneItem]) -> MonthTiles:
    """The month's scene outcomes and pixel counts from its tile records (scenes in `items` order)."""
    failed: dict[str, str] = {}
    contributing: set[str] = set()
    pixels: dict[str, list[int]] = {}
    for record in records:
        for item_id, reason in record.failed.items():
            failed.setdefault(item_id, reason)
        contributing.update(record.contributing_scenes)
        for item_id, (valid, aoi) in record.scene_pixels.items():
            totals = pixels.setdefault(item_id, [0, 0])
            totals[0] += valid
            totals[1] += aoi
    used, skipped = [], []
    for item in items:
        if item.item_id in failed:
            continue
        if item.item_id in contributing:
            valid, aoi = pixels[item.item_id]
            used.append(UsedScene(item.item_id, item.acquired, item.processing_baseline, valid / aoi if aoi else 0.0, item.href))
        elif item.item_id in pixels:
            skipped.append(SkippedScene(item.item_id, NO_CLEAR_PIXEL))
        else:
            skipped.append(SkippedScene(item.item_id, SceneOutsideAOI(item.item_id).scene_reason))
    return MonthTiles(
        used=tuple(used),
        failed=tuple(FailedScene(item.item_id, failed[item.item_id]) for item in items if item.item_id in failed),
        skipped=tuple(skipped),
        aoi_pixels=sum(record.aoi_pixels for record in records),
        valid_pixels=sum(record.valid_pixels for record in records),
    )


def month_histograms(plan: MonthPlan, records: Sequence[TileRecord]) -> TileHistograms:
    """The sum of the tiles' histograms."""
    total = None
    for record in records:
        histograms = TileHistograms.from_bytes(plan.workspace.read_bytes(plan.histograms_name(record.tile)))
        total = histograms if total is None else TileHistograms(total.mosaic + histograms.mosaic, total.count + histograms.count)
    if total is None:
        raise ValueError("a month has at least one tile")
    return total


MOSAIC_INDEX_BANDS = tuple(
    IndexBand(band.description, nodata=NODATA, scale=REFLECTANCE_SCALE_FACTOR, offset=0.0) for band in MOSAIC_BANDS
)
COUNT_INDEX_BANDS = (IndexBand(COUNT_DESCRIPTION),)


def index_tiles(plan: MonthPlan, records: Sequence[TileRecord], kind: str) -> list[IndexTile]:
    """The tiles' `kind` ('mosaic' or 'count') COGs placed on the grid, for the mosaic index."""
    layout = tile_layout(plan.grid, plan.tile_size_px)
    placed = []
    for record in sorted(records, key=lambda record: record.tile):
        rows, cols = layout.roi[record.row, record.col]
        placed.append(IndexTile(record.files[kind], rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start))
    return placed


def write_month_products(
    plan: MonthPlan, run: ProductRun, records: Sequence[TileRecord], histograms: TileHistograms
) -> dict[str, str]:
    """Write and publish the month's own files (Item last) beside its published tiles; returns
    {product: URL or local path} for mosaic, count, quicklook, metadata and item."""
    names, destination = plan.names, plan.destination
    destination.delete(names.item)  # before anything beside it is replaced
    with scratch_folder(plan, MONTH_SCRATCH_LABEL) as scratch:
        if not run.tiles:
            (record,) = records
            copies = {record.files["mosaic"]: names.mosaic, record.files["count"]: names.count}
            destination.copy(copies)
        else:
            indexes = {
                names.mosaic_index: mosaic_index_xml(plan.grid, MOSAIC_DTYPE, MOSAIC_INDEX_BANDS, index_tiles(plan, records, "mosaic")),
                names.count_index: mosaic_index_xml(plan.grid, COUNT_DTYPE, COUNT_INDEX_BANDS, index_tiles(plan, records, "count")),
            }
            for name, xml in indexes.items():
                (scratch / name).write_text(xml)
            destination.put({name: scratch / name for name in indexes})
            if run.single_cogs:
                for index_name, cog_name, profile in (
                    (names.mosaic_index, names.mosaic, MOSAIC_PROFILE),
                    (names.count_index, names.count, COUNT_PROFILE),
                ):
                    destination.put({cog_name: single_cog(destination.gdal_location(index_name), scratch / cog_name, profile)})
        mosaic_path, mosaic_options = destination.gdal_location(run.mosaic_file)
        with gdal_env(**mosaic_options):
            write_quicklook(mosaic_path, scratch / names.quicklook)
        grid_pixels = plan.grid.shape.x * plan.grid.shape.y
        aoi_pixels = sum(record.aoi_pixels for record in records)
        band_names = tuple(band.common_name for band in MOSAIC_BANDS)
        mosaic_statistics = tuple(
            statistics_from_histogram(name, histogram, aoi_pixels, grid_pixels)
            for name, histogram in zip(band_names, histograms.mosaic, strict=True)
        )
        count_statistics = statistics_from_histogram(COUNT_BAND_NAME, histograms.count, aoi_pixels, grid_pixels)
        (scratch / names.metadata).write_bytes(metadata_json(run, names, mosaic_statistics, count_statistics))
        item = build_item(
            run, names, mosaic_statistics, count_statistics, destination.url(names.item), collection_id(run.aoi_name)
        )
        (scratch / names.item).write_bytes(item_json(item))
        destination.put({names.quicklook: scratch / names.quicklook, names.metadata: scratch / names.metadata})
        destination.put({names.item: scratch / names.item})
    # Tiles of other inputs are listed by no Item any more. This input's stay: a re-run reuses them.
    destination.remove_below(TILES_FOLDER, keep=plan.tiles_digest)
    return {
        "mosaic": destination.url(run.mosaic_file),
        "count": destination.url(run.count_file),
        "quicklook": destination.url(names.quicklook),
        "metadata": destination.url(names.metadata),
        ITEM_PRODUCT: destination.url(names.item),
    }


def single_cog(index: tuple[str, dict[str, str]], destination: Path, profile: CogProfile) -> Path:
    """Copy a published mosaic index (GDAL path, options) to one validated COG at `destination`."""
    index_path, options = index
    with gdal_env(**options):
        write_cog(index_path, destination, profile)
    validate_cog(destination)
    return destination


write_month_products_task = task(
    name="write-month-products",
    **io_task_retries(),
    cache_policy=NO_CACHE,
)(portable_errors(write_month_products))
