"""Scene windows and their masks as the read and mask stages hand them to compositing, for the composite
and index tests."""

import numpy as np
from odc.geo.geobox import GeoBox

from tasks.compositing.composite import MaskedWindow
from tasks.core.scene import SceneWindow
from tasks.testing.synthetic import SCL_VEGETATION


def masked_window(item_id: str, sub_grid: GeoBox, reflectance: np.ndarray, mask: np.ndarray) -> MaskedWindow:
    """A scene window (red, green, blue, nir, SCL) on `sub_grid` and its mask, as the read and mask steps make them."""
    scl = np.where((reflectance > 0).all(axis=0), SCL_VEGETATION, 0).astype(np.uint16)
    bands = np.concatenate([reflectance, scl[None]]).astype(np.uint16)
    return MaskedWindow(SceneWindow(item_id, sub_grid, bands), mask.astype(np.uint8))
