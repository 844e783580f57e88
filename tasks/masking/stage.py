"""Cloud and shadow mask of each scene window, with whichever masker the settings name.

The mask of a scene window (`tasks.core.scene.SceneWindow`) is a (y, x) uint8 array of `MaskClass` values
on the window's sub-grid. The masker (`tasks.masking.registry`: `ocm+scl`, `ocm`, `scl`, or one registered by
the user) gives cloud and shadow classes; the rules that buffer them and combine them with SCL and
data coverage live in `tasks.masking.rules` (pure). `mask_halo_px` says how much context a tile must read
around itself for its mask not to depend on where tiles are cut.
"""

import math

import numpy as np

from tasks.core.scene import REFLECTANCE_BANDS, SCENE_BANDS, SCL_BAND, MaskClass
from tasks.core.settings import MaskSettings
from tasks.masking.registry import masker_named
from tasks.masking.rules import buffer_cloud_and_shadow, buffer_radius_px, combine_classes, has_data, scl_invalid

__all__ = ["mask_from_bands", "mask_halo_px"]


def mask_from_bands(bands: np.ndarray, grid_pixel_m: float, settings: MaskSettings) -> np.ndarray:
    """The scene mask (uint8 `MaskClass`, y, x) of a clipped scene's bands (`SCENE_BANDS`, y, x)."""
    reflectance = bands[: len(REFLECTANCE_BANDS)]  # SCENE_BANDS start with REFLECTANCE_BANDS: a view, no copy
    data = has_data(reflectance)
    if not data.any():
        return np.full(data.shape, MaskClass.NODATA, dtype=np.uint8)
    masker = masker_named(settings.masker)
    cloud_classes = masker.cloud_classes(bands, grid_pixel_m, settings)
    radius_px = buffer_radius_px(settings.buffer_m, grid_pixel_m)
    if radius_px > 0:
        cloud_classes = buffer_cloud_and_shadow(cloud_classes, radius_px)
    scl = bands[SCENE_BANDS.index(SCL_BAND)]
    invalid = scl_invalid(scl, settings.scl_invalid_classes) if masker.uses_scl_invalid else None
    return combine_classes(cloud_classes, invalid, data)


def mask_halo_px(settings: MaskSettings, grid_pixel_m: float) -> int:
    """Grid pixels of context the masker needs on each side of a tile for the tile's mask to be whole:
    the masker's own context (`Masker.context_px`; none for SCL), plus the cloud and shadow buffer's
    reach, `buffer_m`."""
    context_px = masker_named(settings.masker).context_px(settings, grid_pixel_m)
    return context_px + math.ceil(buffer_radius_px(settings.buffer_m, grid_pixel_m))
