"""A month's products from its committed tiles: merged scene outcomes, mosaic index, single COGs,
quicklook, metadata.json and the STAC Item, published with the Item last.

The tiles (`tasks.tiling.tile`) have already published their COGs into the month folder. This stage adds,
with `<aoi>_<YYYY-MM>` as the stem:

    _mosaic.vrt, _count.vrt   a tiled month's mosaic index over its tile COGs (`tasks.products.mosaic_index`)
    _mosaic.tif, _count.tif   single COGs: an AOI of one tile (a server-side copy of its tile), or
                              a tiled AOI of at most `single_cog_max_pixels`, copied from the index
    _ndvi.vrt, _ndvi.tif      the same for each spectral index of `CompositeSettings.indices`
    _quicklook.png            RGBA quicklook from the mosaic's overviews
    _metadata.json            scenes, settings, statistics, software, attribution, files
    _item.json                STAC Item listing every file, validated offline

Statistics come from the tiles' histograms, the quicklook from overviews: nothing here reads the
mosaic at full resolution. The tiles are read where they were published, with the products block's
own credentials (`MonthDestination.gdal_location`). Every month-level file is built in the month's
scratch folder before any is published; then they are published in one put that withdraws an
earlier Item before the first lands and puts the new Item last, so an Item in the month folder means
every file beside it is complete, and a month that fails while building leaves the folder as it was.
Tiles live in `tiles/<inputs digest>/`, so a re-run with other inputs never touches the tiles a
published index points at, and once its Item is out the other inputs' tiles are removed.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.publish import ITEM_PRODUCT, MonthDestination, Published
from tasks.compositing.indices import INDEX_DTYPE, INDEX_NODATA, INDEX_SCALE_FACTOR, SPECTRAL_INDICES, SpectralIndex
from tasks.core.errors import MosaicError, PublishError, SceneOutsideAOI, portable_errors
from tasks.core.retry import io_task_retries
from tasks.core.scene import NODATA, FailedScene, SceneItem, SkippedScene, UsedScene
from tasks.geometry.tiles import tile_layout
from tasks.products.cog import (
    COUNT_DESCRIPTION,
    COUNT_DTYPE,
    COUNT_PROFILE,
    FILL_DESCRIPTION,
    FILL_DTYPE,
    FILL_NODATA,
    FILL_PROFILE,
    INDEX_PROFILE,
    MOSAIC_BANDS,
    MOSAIC_DTYPE,
    MOSAIC_PROFILE,
    REFLECTANCE_SCALE_FACTOR,
    CogProfile,
    validate_cog,
    write_cog,
)
from tasks.products.metadata import (
    COUNT_LAYER,
    FILL_LAYER,
    MOSAIC_LAYER,
    TILES_FOLDER,
    MonthStatistics,
    ProductRun,
    metadata_json,
    statistics_from_histogram,
)
from tasks.products.mosaic_index import IndexBand, IndexTile, mosaic_index_xml
from tasks.products.quicklook import write_quicklook
from tasks.stac.collection import collection_id
from tasks.stac.item import build_item, item_json
from tasks.storage.disk_space import named_disk_full
from tasks.storage.gdal_env import gdal_env
from tasks.tiling.tile import MonthPlan, TileHistograms, TileRecord, scratch_folder, unpublished_files

__all__ = [
    "NO_CLEAR_PIXEL",
    "MonthLayer",
    "MonthTiles",
    "merge_tiles",
    "month_histograms",
    "month_layers",
    "write_month_products",
    "write_month_products_task",
]

NO_CLEAR_PIXEL = "no clear pixel in the AOI (cloud, shadow or nodata everywhere it covers)"
COUNT_BAND_NAME = "count"
MONTH_SCRATCH_LABEL = "month"
"""Names the scratch folder of the month's own files (tiles' are named by their label)."""
ABSOLUTE_INDEX_FOLDER = "absolute"
"""Holds, in the month's scratch folder, its indexes naming the published tiles by absolute path."""
MISSING_TILES_NAMED = 3
"""How many missing tile files a month's error names (the count says how many there are)."""
GdalLocation = tuple[str, dict[str, str]]
"""A path GDAL opens, and the GDAL options that reach it (`MonthDestination.gdal_location`)."""


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
    filled_pixels: int = 0
    fill_months: tuple[str, ...] = ()
    """Months ('YYYY-MM') that gave a filled pixel its value in any tile, in month order."""

    @property
    def filled_share(self) -> float:
        """Share of AOI pixels with no observation that took a value from another month, 0..1."""
        return self.filled_pixels / self.aoi_pixels if self.aoi_pixels else 0.0

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
        filled_pixels=sum(record.filled_pixels for record in records),
        fill_months=tuple(sorted({month for record in records for month in record.fill_months})),
    )


def month_histograms(plan: MonthPlan, records: Sequence[TileRecord]) -> TileHistograms:
    """The sum of the tiles' histograms."""
    total = None
    for record in records:
        histograms = TileHistograms.from_bytes(plan.workspace.read_bytes(plan.histograms_name(record.tile)))
        total = histograms if total is None else total + histograms
    if total is None:
        raise ValueError("a month has at least one tile")
    return total


MOSAIC_INDEX_BANDS = tuple(
    IndexBand(band.description, nodata=NODATA, scale=REFLECTANCE_SCALE_FACTOR, offset=0.0) for band in MOSAIC_BANDS
)
COUNT_INDEX_BANDS = (IndexBand(COUNT_DESCRIPTION),)
FILL_INDEX_BANDS = (IndexBand(FILL_DESCRIPTION, nodata=FILL_NODATA),)
OPTIONAL_LAYERS = (*SPECTRAL_INDICES, FILL_LAYER)
"""Layers a month has only with some settings: an earlier run's are removed when a run has them no more."""


@dataclass(frozen=True)
class MonthLayer:
    """One raster layer of the month, tiled like the others: its name (as in `TileRecord.files` and
    `ProductNames`), its tiles' dtype and bands (for the mosaic index) and its single COG's profile."""

    name: str
    dtype: str
    bands: tuple[IndexBand, ...]
    profile: CogProfile

    @property
    def bytes_per_pixel(self) -> int:
        """Bytes a pixel of the layer takes uncompressed, all its bands."""
        return np.dtype(self.dtype).itemsize * len(self.bands)


def month_layers(indices: Sequence[SpectralIndex], filled: bool) -> tuple[MonthLayer, ...]:
    """The mosaic, the count, each of `indices`, then the fill layer when the month is `filled`."""
    index_layers = tuple(
        MonthLayer(
            index.name,
            INDEX_DTYPE,
            (IndexBand(index.description, nodata=INDEX_NODATA, scale=INDEX_SCALE_FACTOR, offset=0.0),),
            INDEX_PROFILE,
        )
        for index in indices
    )
    fill = (MonthLayer(FILL_LAYER, FILL_DTYPE, FILL_INDEX_BANDS, FILL_PROFILE),) if filled else ()
    return (
        MonthLayer(MOSAIC_LAYER, MOSAIC_DTYPE, MOSAIC_INDEX_BANDS, MOSAIC_PROFILE),
        MonthLayer(COUNT_LAYER, COUNT_DTYPE, COUNT_INDEX_BANDS, COUNT_PROFILE),
        *index_layers,
        *fill,
    )


def index_tiles(plan: MonthPlan, records: Sequence[TileRecord], kind: str) -> list[IndexTile]:
    """The tiles' `kind` (a `MonthLayer` name) COGs placed on the grid, for the mosaic index."""
    layout = tile_layout(plan.grid, plan.tile_size_px)
    placed = []
    for record in sorted(records, key=lambda record: record.tile):
        rows, cols = layout.roi[record.row, record.col]
        placed.append(IndexTile(record.files[kind], rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start))
    return placed


def month_rasters(
    plan: MonthPlan, run: ProductRun, records: Sequence[TileRecord], layers: Sequence[MonthLayer], scratch: Path
) -> tuple[dict[str, Path | Published], GdalLocation]:
    """The month's raster files, built in `scratch` from its published tiles, and where GDAL reads its mosaic.

    One tile: copies of its COGs. Tiled: each layer's mosaic index and, with `single_cogs`, its single COG,
    built from a copy of the index naming the published tiles by absolute path (in `ABSOLUTE_INDEX_FOLDER`),
    so nothing of the month is published before all of it is built.
    """
    names, destination = plan.names, plan.destination
    files: dict[str, Path | Published] = {}
    if not run.tiles:
        (record,) = records
        files.update({names.single_cog(layer.name): Published(record.files[layer.name]) for layer in layers})
        return files, destination.gdal_location(record.files[MOSAIC_LAYER])
    absolute_indexes = scratch / ABSOLUTE_INDEX_FOLDER
    absolute_indexes.mkdir()
    for layer in layers:
        index_name, tiles = names.layer_index(layer.name), index_tiles(plan, records, layer.name)
        absolute_tiles = [replace(tile, path=destination.gdal_location(tile.path)[0]) for tile in tiles]
        (scratch / index_name).write_text(mosaic_index_xml(plan.grid, layer.dtype, layer.bands, tiles))
        absolute_xml = mosaic_index_xml(plan.grid, layer.dtype, layer.bands, absolute_tiles)
        (absolute_indexes / index_name).write_text(absolute_xml)
        files[index_name] = scratch / index_name
    tile_options = destination.gdal_location(names.mosaic_index)[1]
    if not run.single_cogs:
        return files, (str(absolute_indexes / names.mosaic_index), tile_options)
    for layer in layers:
        cog_name = names.single_cog(layer.name)
        index = (str(absolute_indexes / names.layer_index(layer.name)), tile_options)
        files[cog_name] = single_cog(index, scratch / cog_name, layer.profile)
    return files, (str(scratch / names.mosaic), {})


def month_statistics(
    plan: MonthPlan, run: ProductRun, records: Sequence[TileRecord], histograms: TileHistograms
) -> MonthStatistics:
    """Statistics of each layer over the AOI, from the tiles' merged histograms."""
    grid_pixels = plan.grid.shape.x * plan.grid.shape.y
    aoi_pixels = sum(record.aoi_pixels for record in records)
    band_names = tuple(band.common_name for band in MOSAIC_BANDS)
    mosaic_statistics = tuple(
        statistics_from_histogram(name, histogram, aoi_pixels, grid_pixels)
        for name, histogram in zip(band_names, histograms.mosaic, strict=True)
    )
    count_statistics = statistics_from_histogram(COUNT_BAND_NAME, histograms.count, aoi_pixels, grid_pixels)
    index_statistics = tuple(
        statistics_from_histogram(index.name, histograms.indices[index.name], aoi_pixels, grid_pixels, INDEX_NODATA)
        for index in run.indices
    )
    fill_statistics = (
        statistics_from_histogram(FILL_LAYER, histograms.fill, aoi_pixels, grid_pixels)
        if run.filled and histograms.fill is not None
        else None
    )
    return MonthStatistics(mosaic_statistics, count_statistics, index_statistics, fill_statistics)


@contextmanager
def named_missing_tiles(destination: MonthDestination, records: Sequence[TileRecord]) -> Iterator[None]:
    """A month stage that fails because published tile files went missing since their tiles were
    committed (removed by hand or by another process) ends in one `PublishError` naming them. Only a
    failure looks: the files are checked after an error, not before each month."""
    try:
        yield
    except MosaicError:
        raise
    except Exception:
        gone = [name for record in records for name in unpublished_files(destination, record)]
        if not gone:
            raise
        raise PublishError(
            f"{len(gone)} published tile files are gone from {destination.location} since their tiles were "
            f"committed ({', '.join(gone[:MISSING_TILES_NAMED])}{', ...' if len(gone) > MISSING_TILES_NAMED else ''}); "
            "re-run the month: a tile whose files are gone is built again"
        ) from None


def write_month_products(
    plan: MonthPlan, run: ProductRun, records: Sequence[TileRecord], histograms: TileHistograms
) -> dict[str, str]:
    """Build the month's own files beside its published tiles, then publish them at once, the Item last;
    returns {product: URL or local path} for mosaic, count, each index, the fill layer, quicklook, metadata
    and item.

    Everything is built in the month's scratch folder first; an earlier Item is withdrawn only as the
    new files land (`MonthDestination.put`), so a month that fails while building (a full disk, a tile
    that cannot be read) leaves the month folder as it was, an earlier complete month included. A full
    disk ends in one `DiskFull` line (`tasks.storage.disk_space`).
    """
    names, destination = plan.names, plan.destination
    layers = month_layers(run.indices, run.filled)
    with (
        named_missing_tiles(destination, records),
        named_disk_full(plan.disk, "month"),
        scratch_folder(plan, MONTH_SCRATCH_LABEL) as scratch,
    ):
        with destination.errors_named():  # the published tiles are read from the store
            files, (mosaic_path, mosaic_options) = month_rasters(plan, run, records, layers, scratch)
            with gdal_env(**mosaic_options):
                write_quicklook(mosaic_path, scratch / names.quicklook)
        statistics = month_statistics(plan, run, records, histograms)
        (scratch / names.metadata).write_bytes(metadata_json(run, names, statistics))
        item = build_item(run, names, statistics, destination.url(names.item), collection_id(run.aoi_name))
        (scratch / names.item).write_bytes(item_json(item))
        documents = {name: scratch / name for name in (names.quicklook, names.metadata, names.item)}
        destination.put(files | documents, replacing=names.item)
    for stale_layer in set(OPTIONAL_LAYERS) - {layer.name for layer in layers}:  # an earlier run's, other settings
        destination.delete(names.single_cog(stale_layer))
        destination.delete(names.layer_index(stale_layer))
    # Tiles of other inputs are listed by no Item any more. This input's stay: a re-run reuses them.
    destination.remove_below(TILES_FOLDER, keep=plan.tiles_digest)
    return {
        "mosaic": destination.url(run.mosaic_file),
        "count": destination.url(run.count_file),
        **{layer: destination.url(run.layer_file(layer)) for layer in run.further_layers},
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
