"""Gap fill of one output tile: its unobserved AOI pixels take values from neighbouring months.

A tile's layers (`TileLayers`: the mosaic, the count, each spectral index) are filled where the
count is 0 inside the AOI (`tasks.gap_fill.fill`): the mosaic from the neighbours' observed mosaic
pixels, each index from the neighbours' observed values of that index (a neighbour without the
index offers none). Gap pixels are reset to nodata first, so filling a tile again (a refill, once
more months are published) starts from its observations alone. Observed pixels and the count never
change. The distance layer (uint8, `tasks.gap_fill.fill.OBSERVED` / months / `NO_VALUE`) follows the
mosaic's plan. Neighbours are read only over tiles that have a gap.
"""

from dataclasses import dataclass, field

import numpy as np
from odc.geo.geobox import GeoBox

from tasks.compositing.indices import INDEX_NODATA
from tasks.core.scene import NODATA
from tasks.gap_fill.fill import NO_VALUE, OBSERVED, GapFill, apply_gap_fill, plan_gap_fill
from tasks.gap_fill.sources import MonthFill, NeighbourTile, read_neighbour_tile
from tasks.products.metadata import MOSAIC_LAYER

__all__ = ["FilledTile", "TileLayers", "fill_tile"]


@dataclass(frozen=True)
class TileLayers:
    """A tile's rasters on its grid: mosaic (4, y, x) uint16 (nodata 0), count (y, x) uint8, and
    {index name: (y, x) int16} (nodata -32768)."""

    mosaic: np.ndarray
    count: np.ndarray
    indices: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class FilledTile:
    """A tile after gap fill: its layers (count unchanged), the distance layer (y, x) uint8, the
    AOI pixels filled, and the months ('YYYY-MM') that gave at least one of them a value."""

    layers: TileLayers
    distance: np.ndarray
    filled_pixels: int
    months_used: tuple[str, ...]


def _fill_layer(
    gaps: np.ndarray, inside_aoi: np.ndarray, fill: MonthFill, neighbours: list[NeighbourTile], layer: str, values: np.ndarray, nodata: int
) -> tuple[np.ndarray, GapFill]:
    """`values` (band, y, x) with its gaps filled from the neighbours' `layer`, and the plan used."""
    observed = [
        tile.observed & (tile.layers[layer] != nodata).all(axis=0) if layer in tile.layers else np.zeros_like(gaps)
        for tile in neighbours
    ]
    plan = plan_gap_fill(gaps, inside_aoi, [tile.offset for tile in neighbours], observed, fill.method, fill.max_months)
    offered = [tile.layers.get(layer, np.zeros_like(values)) for tile in neighbours]
    return apply_gap_fill(plan, values, offered), plan


def fill_tile(fill: MonthFill, tile_box: GeoBox, inside_aoi: np.ndarray, layers: TileLayers) -> FilledTile:
    """Fill the tile's gaps from the month's neighbours (`fill.neighbours`), read over `tile_box`."""
    gaps = inside_aoi & (layers.count == 0)
    distance = np.where(inside_aoi & ~gaps, OBSERVED, NO_VALUE).astype(np.uint8)
    if not gaps.any():  # nothing to reset or fill: the layers stay as they are, uncopied
        return FilledTile(layers, distance, 0, ())
    mosaic = np.where(gaps, NODATA, layers.mosaic).astype(layers.mosaic.dtype)
    indices = {name: np.where(gaps, INDEX_NODATA, values).astype(values.dtype) for name, values in layers.indices.items()}
    if not fill.neighbours or not fill.enabled:
        return FilledTile(TileLayers(mosaic, layers.count, indices), distance, 0, ())
    neighbours = [
        read_neighbour_tile(neighbour, tile_box, tuple(layer for layer in (MOSAIC_LAYER, *indices) if layer in neighbour.files))
        for neighbour in fill.neighbours
    ]
    mosaic, plan = _fill_layer(gaps, inside_aoi, fill, neighbours, MOSAIC_LAYER, mosaic, NODATA)
    for name, values in indices.items():
        indices[name] = _fill_layer(gaps, inside_aoi, fill, neighbours, name, values[np.newaxis], INDEX_NODATA)[0][0]
    filled = plan.filled
    sources = set(np.unique(plan.before[filled])) | set(np.unique(plan.after[filled]))
    months_used = tuple(neighbour.month for index, neighbour in enumerate(fill.neighbours) if index in sources)
    return FilledTile(TileLayers(mosaic, layers.count, indices), plan.distance, int(filled.sum()), months_used)
