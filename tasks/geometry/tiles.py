"""The output tiles of an AOI's grid: squares of `TileSettings.tile_size_px` pixels from its top-left corner.

The grid of an AOI is the same every month (`tasks.geometry.grid.grid_for_aoi`), so its tiles are too: a tile
is named by its row and column (`r002c013`) and is a pixel-aligned slice of the grid, in the grid's
CRS. Tiles along the right and bottom edges are cut short by the grid. Only tiles that overlap the
AOI polygon are worked on. A tile is read with a halo of context for the masker (`read_grid`), which
lies on the same pixel lattice and may reach past the grid.
"""

from dataclasses import dataclass

import numpy as np
from odc.geo.geobox import GeoBox, GeoboxTiles
from odc.geo.geom import Geometry

from tasks.geometry.aoi import aoi_in_crs

__all__ = ["OutputTile", "read_grid", "tile_grid", "tile_layout", "tiles_over_aoi"]


@dataclass(frozen=True, order=True)
class OutputTile:
    """One tile of the grid's tiling, by row and column (from the top-left, 0-based)."""

    row: int
    col: int

    @property
    def label(self) -> str:
        """'r<row>c<col>', zero-padded to 3 digits: file names sort in row-major order."""
        return f"r{self.row:03d}c{self.col:03d}"


def tile_layout(grid: GeoBox, tile_size_px: int) -> GeoboxTiles:
    """The grid cut into `tile_size_px` squares from its top-left corner."""
    return GeoboxTiles(grid, (tile_size_px, tile_size_px))


def tile_grid(grid: GeoBox, tile_size_px: int, tile: OutputTile) -> GeoBox:
    """The pixel-aligned slice of `grid` that `tile` covers."""
    return grid[tile_layout(grid, tile_size_px).roi[tile.row, tile.col]]


def read_grid(tile_box: GeoBox, halo_px: int) -> GeoBox:
    """The tile's grid grown by `halo_px` pixels on every side, on the same pixel lattice."""
    return tile_box.pad(halo_px) if halo_px else tile_box


def tiles_over_aoi(grid: GeoBox, aoi: Geometry, tile_size_px: int) -> list[OutputTile]:
    """The tiles whose area the AOI polygon overlaps, in row-major order."""
    layout = tile_layout(grid, tile_size_px)
    outline = aoi_in_crs(aoi, grid.crs)
    tiles = []
    for row, col in np.ndindex(*layout.shape.yx):
        overlap = layout[row, col].extent & outline
        if not overlap.is_empty and overlap.area > 0:
            tiles.append(OutputTile(row, col))
    return tiles
