"""A synthetic month on local disk and the `MonthPlan` of its tiles, for the tile and month-product tests.

The scenes are COGs in a local folder (`tasks/testing/synthetic.py`), their items are in a local workspace as
the search stage writes them, and products are published below a local `output_dir` (`publish_layers`
publishes hand-made layers there as the tiles write them). The AOI is a
quadrilateral 20 pixels inside the 256 x 256 scene grid (20 m, EPSG:32633), so its own grid is about
216 x 216 pixels: one tile of 256 pixels, or 2 x 2 tiles of 128.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry

from blocks.publish import MonthDestination, month_destination
from tasks.acquisition.search import scene_from_item
from tasks.compositing.indices import SPECTRAL_INDICES
from tasks.core.month import Month
from tasks.core.scene import SceneAsset, SceneItem, scene_items_json
from tasks.core.settings import CompositeSettings, MaskSettings, ReadSettings
from tasks.geometry.aoi import aoi_digest, aoi_pixel_mask, load_aoi
from tasks.geometry.grid import grid_for_aoi
from tasks.geometry.tiles import tile_layout
from tasks.products.cog import (
    COUNT_PROFILE,
    FILL_PROFILE,
    INDEX_PROFILE,
    MOSAIC_PROFILE,
    write_count_cog,
    write_fill_cog,
    write_index_cog,
    write_mosaic_cog,
)
from tasks.products.metadata import COUNT_LAYER, FILL_LAYER, MOSAIC_LAYER, ProductNames, ProductRun, TileFiles
from tasks.products.month import MonthTiles
from tasks.storage.workspace import Workspace
from tasks.testing.synthetic import SyntheticMonth, make_synthetic_month, synthetic_grid, write_aoi
from tasks.tiling.tile import MonthPlan, TileRecord

SCENE_GRID = synthetic_grid(shape=(256, 256), resolution=20.0)
RESOLUTION_M = 20.0
AOI_INSET_PX = 20
AOI_NAME = "synthetic"
ONE_TILE_PX = 256
FOUR_TILES_PX = 128
MONTH_PLANS = [
    pytest.param(ONE_TILE_PX, True, id="one tile"),
    pytest.param(FOUR_TILES_PX, True, id="four tiles with single COGs"),
    pytest.param(FOUR_TILES_PX, False, id="four tiles index only"),
]
"""(tile_size_px, single_cogs) of the months a product test builds: one tile, 2 x 2 tiles with and without single COGs."""
ITEMS_NAME = "search/items.json"
INPUTS_DIGEST = "inputs0digest"
READ = ReadSettings(retry_base_delay_s=0.1)
MASK = MaskSettings(masker="scl")
COMPOSITE = CompositeSettings()


@dataclass(frozen=True)
class LocalMonth:
    """A synthetic month's items (in search order) in `workspace`, its AOI and the AOI's target grid."""

    synthetic: SyntheticMonth
    items: tuple[SceneItem, ...]
    aoi: Geometry
    grid: GeoBox
    workspace: Workspace
    work_dir: Path

    @property
    def month(self) -> Month:
        return Month.parse(f"{self.synthetic.dates[0]:%Y-%m}")

    @property
    def names(self) -> ProductNames:
        return ProductNames.for_run(AOI_NAME, self.month)

    @property
    def inside_aoi(self) -> np.ndarray:
        return aoi_pixel_mask(self.aoi, self.grid)

    @property
    def output_dir(self) -> Path:
        return self.work_dir / "output"

    @property
    def month_folder(self) -> Path:
        """Where the month's products are published below `output_dir`."""
        return self.output_dir / AOI_NAME / f"{self.month.year:04d}" / f"{self.month.month:02d}"


def make_local_month(work_dir: Path, items: tuple[SceneItem, ...] | None = None, **month_options: object) -> LocalMonth:
    """Write a synthetic month under `work_dir` (`month_options` go to `make_synthetic_month`) and its items
    to a workspace there; `items` replaces the found items (e.g. with a broken asset)."""
    synthetic = make_synthetic_month(work_dir / "scenes", grid=SCENE_GRID, **month_options)
    aoi = load_aoi(str(write_aoi(SCENE_GRID, work_dir / "aoi.geojson", inset_px=AOI_INSET_PX)))
    found = items if items is not None else tuple(map(scene_from_item, synthetic.items))
    workspace = Workspace(str(work_dir / "workspace"))
    workspace.write_bytes(ITEMS_NAME, scene_items_json(found))
    return LocalMonth(synthetic, found, aoi, grid_for_aoi(aoi, None, RESOLUTION_M), workspace, work_dir)


def with_missing_asset(item: SceneItem, band: str, work_dir: Path) -> SceneItem:
    """`item` with its `band` asset pointing at a file that does not exist."""
    asset: SceneAsset = item.assets[band]
    return replace(item, assets={**item.assets, band: replace(asset, href=str(work_dir / "gone" / f"{band}.tif"))})


def month_plan(month: LocalMonth, tile_size_px: int, tiles_digest: str = INPUTS_DIGEST) -> MonthPlan:
    """The plan of `month` cut into `tile_size_px` tiles, publishing below its `output_dir`; `tiles_digest`
    stands for the inputs' identity (`flows.caching.tiles_digest`)."""
    return MonthPlan(
        aoi=month.aoi,
        grid=month.grid,
        workspace=month.workspace,
        items_name=ITEMS_NAME,
        tiles_digest=tiles_digest,
        aoi_name=AOI_NAME,
        month_label=month.month.label,
        names=month.names,
        tile_size_px=tile_size_px,
        single_tile=tile_layout(month.grid, tile_size_px).shape.yx == (1, 1),
        read=READ,
        mask=MASK,
        composite=COMPOSITE,
        max_concurrent_scenes=2,
        scratch_dir=month.work_dir / "scratch",
        destination=month_destination(None, AOI_NAME, month.month.label, month.output_dir),
    )


def product_run(
    month: LocalMonth, plan: MonthPlan, month_tiles: MonthTiles, records: list[TileRecord], single_cogs: bool = True
) -> ProductRun:
    """What the flow hands the month stage: the merged scenes and, for a tiled plan, the tiles' files."""
    tiles = (
        () if plan.single_tile else tuple(TileFiles.of(r.tile.label, r.files) for r in records)
    )
    return ProductRun(
        aoi_name=AOI_NAME,
        aoi_source=str(month.work_dir / "aoi.geojson"),
        aoi=month.aoi,
        aoi_digest=aoi_digest(month.aoi),
        grid=month.grid,
        month=month.month,
        composite=COMPOSITE,
        mask=MASK,
        scenes_used=month_tiles.used,
        scenes_failed=month_tiles.failed,
        scenes_skipped=month_tiles.skipped,
        tiles=tiles,
        single_cogs=single_cogs or plan.single_tile,
    )


def publish_layers(
    destination: MonthDestination, files: Mapping[str, str], box: GeoBox, layers: Mapping[str, np.ndarray], scratch: Path
) -> None:
    """Write each of `layers` on `box` as the tiles write it ('mosaic' (4, y, x) uint16, 'count' and 'fill'
    (y, x) uint8, an index (y, x) int16) in `scratch`, and publish it in `destination` as `files[layer]`."""
    scratch.mkdir(parents=True, exist_ok=True)
    local = {name: scratch / Path(files[name]).name for name in layers}
    for name, values in layers.items():
        if name == MOSAIC_LAYER:
            write_mosaic_cog(local[name], values, box, MOSAIC_PROFILE)
        elif name == COUNT_LAYER:
            write_count_cog(local[name], values, box, COUNT_PROFILE)
        elif name == FILL_LAYER:
            write_fill_cog(local[name], values, box, FILL_PROFILE)
        else:
            write_index_cog(local[name], values, box, SPECTRAL_INDICES[name], INDEX_PROFILE)
    destination.put({files[name]: path for name, path in local.items()})


def assert_statistics_of(values: np.ndarray, statistics: dict, aoi_pixels: int) -> None:
    """metadata.json's statistics of a band are numpy's over `values`, its valid AOI pixels."""
    assert statistics["valid_pixels"] == values.size
    assert (statistics["min"], statistics["max"]) == (values.min(), values.max())
    assert statistics["mean"] == pytest.approx(values.mean()) and statistics["stddev"] == pytest.approx(values.std())
    assert statistics["p2"] == np.percentile(values, 2, method="inverted_cdf")
    assert statistics["p98"] == np.percentile(values, 98, method="inverted_cdf")
    assert statistics["valid_share_of_aoi"] == pytest.approx(values.size / aoi_pixels)
