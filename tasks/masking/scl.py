"""The model-free masker `scl`: clouds and shadows from Sentinel-2's scene classification layer alone."""

import numpy as np

from tasks.core.scene import SCENE_BANDS, SCL_BAND
from tasks.core.settings import MaskSettings
from tasks.masking.registry import Masker, register_masker
from tasks.masking.rules import classes_from_scl

__all__ = ["SCL_MASKER"]


def scl_classes(bands: np.ndarray, grid_pixel_m: float, settings: MaskSettings) -> np.ndarray:
    """`Masker.cloud_classes` from the SCL band; `settings.scl_invalid_classes` name what is unusable."""
    return classes_from_scl(bands[SCENE_BANDS.index(SCL_BAND)], settings.scl_invalid_classes)


SCL_MASKER = register_masker(Masker("scl", "SCL alone (no model)", scl_classes, uses_scl_invalid=True))
