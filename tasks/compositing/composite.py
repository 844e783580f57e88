"""The composite of one output tile: its scene windows and their masks become a mosaic and a count.

The tile's grid (`odc.geo.geobox.GeoBox`, a slice of the target grid) is cut into blocks of
`CompositeSettings.block_size` pixels (`GeoboxTiles`). For each block only the scene windows that
overlap it contribute. An observation is usable where its mask is `MaskClass.CLEAR`, none of its
reflectance bands is 0 (nodata) and the pixel centre lies inside the AOI polygon.
`tasks.compositing.percentile.percentile_composite` gives each pixel the percentile of its usable observations.
Scene windows may reach beyond the tile (the masker's halo); only their part over the tile counts.

The mosaic is (4, y, x) uint16, bands red, green, blue, nir (reflectance x 10000, nodata 0); the
count is (y, x) uint8, usable observations per pixel (0 where there is none and outside the AOI;
saturates at 255). Each index of `CompositeSettings.indices` is (y, x) int16, composited from the
same block's usable observations (`tasks.compositing.indices`). Pure: arrays in, arrays out, no I/O and no Prefect.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from odc.geo.geobox import GeoBox
from odc.geo.roi import roi_is_empty

from tasks.compositing.indices import INDEX_NODATA, SPECTRAL_INDICES, index_composite
from tasks.compositing.percentile import percentile_composite
from tasks.core.device import compute_device
from tasks.core.scene import NODATA, REFLECTANCE_BANDS, MaskClass, SceneWindow
from tasks.core.settings import CompositeSettings
from tasks.geometry.grid import grid_blocks, roi_slices

__all__ = ["MaskedWindow", "TileComposite", "block_observations", "composite_tile"]


@dataclass(frozen=True)
class MaskedWindow:
    """A scene window with its mask (uint8 `MaskClass`, y, x, on the window's grid)."""

    window: SceneWindow
    mask: np.ndarray


@dataclass(frozen=True)
class TileComposite:
    """The composite of one tile, with the figures the run reports."""

    mosaic: np.ndarray
    """(4, y, x) uint16 on the tile grid, `REFLECTANCE_BANDS`, nodata 0."""
    count: np.ndarray
    """(y, x) uint8 usable observations; 0 outside the AOI."""
    aoi_pixels: int
    valid_pixels: int
    """AOI pixels with at least one usable observation."""
    contributing_scenes: tuple[str, ...]
    """Item ids of the windows that gave at least one usable observation, in input order."""
    indices: dict[str, np.ndarray] = field(default_factory=dict)
    """{index name: (y, x) int16 index x 10000, `INDEX_NODATA` where none} for `CompositeSettings.indices`."""


def block_observations(observations: list[MaskedWindow], block_grid: GeoBox) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The observations of the windows that overlap `block_grid`.

    Returns `(stack, usable, item_ids)`: stack (obs, band, y, x) uint16 reflectance, usable (obs, y, x)
    bool (mask CLEAR and no band at 0; False where the window does not cover the block), and the item
    id of each observation.
    """
    overlapping = []
    for observation in observations:
        block_roi = block_grid.overlap_roi(observation.window.grid)
        if not roi_is_empty(block_roi):
            window_roi = observation.window.grid.overlap_roi(block_grid)
            overlapping.append((observation, roi_slices(block_roi), roi_slices(window_roi)))
    stack = np.zeros((len(overlapping), len(REFLECTANCE_BANDS), *block_grid.shape.yx), dtype=np.uint16)
    usable = np.zeros((len(overlapping), *block_grid.shape.yx), dtype=bool)
    for index, (observation, block_roi, window_roi) in enumerate(overlapping):
        reflectance = observation.window.bands[(slice(0, len(REFLECTANCE_BANDS)), *window_roi)]
        stack[(index, slice(None), *block_roi)] = reflectance
        usable[(index, *block_roi)] = (observation.mask[window_roi] == MaskClass.CLEAR) & (reflectance != NODATA).all(
            axis=0
        )
    return stack, usable, [observation.window.item_id for observation, _, _ in overlapping]


def composite_block(
    stack: np.ndarray, usable: np.ndarray, inside_aoi: np.ndarray, settings: CompositeSettings, device: torch.device
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Mosaic (band, y, x) uint16 and count (y, x) uint8 of one block's observations, 0 outside the AOI,
    and each of `settings.indices` (y, x) int16, `INDEX_NODATA` outside the AOI."""
    stack_on_device = torch.from_numpy(stack).to(device)
    usable_in_aoi = torch.from_numpy(usable & inside_aoi).to(device)
    mosaic, count = percentile_composite(stack_on_device, usable_in_aoi, settings.percentile)
    indices: dict[str, np.ndarray] = {
        name: index_composite(stack_on_device, usable_in_aoi, SPECTRAL_INDICES[name], settings.index_percentile).cpu().numpy()
        for name in settings.indices
    }
    return mosaic.cpu().numpy(), count.cpu().numpy(), indices


def composite_tile(
    observations: list[MaskedWindow],
    tile_grid: GeoBox,
    inside_aoi: np.ndarray,
    settings: CompositeSettings,
    refine_usable: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
) -> TileComposite:
    """Composite the masked windows onto `tile_grid`, block by block.

    `inside_aoi` is the (y, x) bool mask of the tile's pixels whose centre lies inside the AOI;
    pixels outside it are nodata (0) in the mosaic and 0 in the count. `refine_usable(stack, usable)`,
    when given, returns each block's usable observations after a check of all of a pixel's
    observations together (a masker's `stack_check`), before they are counted and composited.
    """
    device = compute_device(settings.device)
    mosaic = np.zeros((len(REFLECTANCE_BANDS), *tile_grid.shape.yx), dtype=np.uint16)
    count = np.zeros(tile_grid.shape.yx, dtype=np.uint8)
    indices: dict[str, np.ndarray] = {name: np.full(tile_grid.shape.yx, INDEX_NODATA, dtype=np.int16) for name in settings.indices}
    contributing: set[str] = set()
    for window, block_grid in grid_blocks(tile_grid, settings.block_size):
        roi = window.toslices()
        block_inside = inside_aoi[roi]
        # A block the AOI misses reads nothing: no observation gives an empty block.
        stack, usable, item_ids = block_observations(observations if block_inside.any() else [], block_grid)
        if refine_usable is not None:
            usable = refine_usable(stack, usable)
        mosaic[(slice(None), *roi)], count[roi], block_indices = composite_block(stack, usable, block_inside, settings, device)
        for name, values in block_indices.items():
            indices[name][roi] = values
        used = (usable & block_inside).any(axis=(1, 2))
        contributing.update(item_id for item_id, is_used in zip(item_ids, used, strict=True) if is_used)
    return TileComposite(
        mosaic=mosaic,
        count=count,
        aoi_pixels=int(inside_aoi.sum()),
        valid_pixels=int(np.count_nonzero(count)),
        contributing_scenes=tuple(o.window.item_id for o in observations if o.window.item_id in contributing),
        indices=indices,
    )
