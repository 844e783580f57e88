"""The OmniCloudMask maskers: `ocm+scl` (the model, plus SCL's invalid classes) and `ocm` (the model alone).

OmniCloudMask sees red, green and nir. It runs at `resolution_m`: where round(resolution_m / grid
pixel) is 2 or more (e.g. 20 m on a 10 m grid) its input is averaged down by that factor and its
classes are brought back to the grid by nearest; on a coarser grid (e.g. 20 m on a 30 m grid) it runs
on the grid itself. Inference runs on `settings.device` ('auto': CUDA when present, else CPU) in
`settings.inference_dtype` on CUDA and always in fp32 on CPU (bf16/fp16 are slower there, and the
library warns about it), through the process's `tasks.masking.ocm_inference.PatchBatcher`, which batches the
patches of all windows being masked at once (across tiles), holds the `gpu` concurrency slot on
CUDA, and halves its batch size on CUDA out-of-memory. Weights come from disk only
(`tasks.masking.ocm_weights`).
"""

from functools import cache
from pathlib import Path

import numpy as np
import torch

from tasks.core.device import compute_device
from tasks.core.errors import InvalidSettings
from tasks.core.scene import NODATA, SCENE_BANDS
from tasks.core.settings import MaskSettings
from tasks.masking.ocm_inference import patch_batcher
from tasks.masking.ocm_weights import check_model_weights, model_dir_for, model_version_for
from tasks.masking.registry import Masker, register_masker
from tasks.masking.rules import average_down, downsample_factor, upsample_nearest

__all__ = ["OCM_MASKER", "OCM_SCL_MASKER", "model_classes_on_grid"]

OCM_BANDS: tuple[str, ...] = ("red", "green", "nir")
OCM_MIN_SIDE_PX = 32
"""OmniCloudMask rejects inputs narrower than this; smaller scenes are padded with nodata."""
CPU_INFERENCE_DTYPE = "fp32"


def pad_to_min_side(bands: np.ndarray, min_side_px: int) -> np.ndarray:
    """`bands` (band, y, x) padded at the bottom and right with nodata (0) to at least `min_side_px` per side."""
    _, height, width = bands.shape
    pad_y, pad_x = max(0, min_side_px - height), max(0, min_side_px - width)
    if not (pad_y or pad_x):
        return bands
    return np.pad(bands, ((0, 0), (0, pad_y), (0, pad_x)))


@cache
def weights_checked(model_dir: Path, model_version: float) -> None:
    """`check_model_weights`, once per process and configuration that passes it (a failed check is not
    remembered): the batcher loads the weights once, and a scene window need not stat them again."""
    check_model_weights(model_dir, model_version)


def predict_cloud_classes(
    red_green_nir: np.ndarray, settings: MaskSettings, device: torch.device, model_dir: Path, model_version: float
) -> np.ndarray:
    """OmniCloudMask classes (uint8, y, x: 0 clear, 1 thick, 2 thin, 3 shadow) of a (3, y, x) array.

    Reflectance scale does not matter (the model normalises each patch); 0 is nodata.
    """
    if settings.patch_overlap >= settings.patch_size:
        raise InvalidSettings(
            f"patch_overlap {settings.patch_overlap} must be smaller than patch_size {settings.patch_size}"
        )
    weights_checked(model_dir, model_version)
    _, height, width = red_green_nir.shape
    model_input = pad_to_min_side(red_green_nir, OCM_MIN_SIDE_PX)
    dtype = settings.inference_dtype if device.type == "cuda" else CPU_INFERENCE_DTYPE
    batcher = patch_batcher(device, dtype, model_dir, model_version, settings.batch_size, NODATA)
    classes = batcher.predict(model_input, settings.patch_size, settings.patch_overlap)
    return classes[:height, :width].astype(np.uint8)


def model_classes_on_grid(
    bands: np.ndarray, grid_pixel_m: float, settings: MaskSettings, device: torch.device
) -> np.ndarray:
    """OmniCloudMask classes on the scene's own pixels, run at `settings.resolution_m`."""
    factor = downsample_factor(grid_pixel_m, settings.resolution_m)
    red_green_nir = bands[[SCENE_BANDS.index(name) for name in OCM_BANDS]]
    classes = predict_cloud_classes(
        average_down(red_green_nir, factor), settings, device, model_dir_for(settings), model_version_for(settings)
    )
    return upsample_nearest(classes, factor, red_green_nir.shape[1:])


def model_classes(bands: np.ndarray, grid_pixel_m: float, settings: MaskSettings) -> np.ndarray:
    """`Masker.cloud_classes` of the OmniCloudMask maskers: the model on `settings.device`."""
    return model_classes_on_grid(bands, grid_pixel_m, settings, compute_device(settings.device))


def model_context_px(settings: MaskSettings, grid_pixel_m: float) -> int:
    """OmniCloudMask blends overlapping patches and sees least context at its input's edge: a halo of
    `patch_overlap` model pixels keeps the tile's own pixels away from that edge."""
    return settings.patch_overlap * downsample_factor(grid_pixel_m, settings.resolution_m)


def weights_on_disk(settings: MaskSettings) -> None:
    """`Masker.check_ready`: `MissingModelWeights` unless the weights of the configured version are on disk."""
    check_model_weights(model_dir_for(settings), model_version_for(settings))


OCM_SCL_MASKER = register_masker(
    Masker(
        "ocm+scl",
        "OmniCloudMask combined with SCL's invalid classes",
        model_classes,
        uses_scl_invalid=True,
        context_px=model_context_px,
        check_ready=weights_on_disk,
    )
)
OCM_MASKER = register_masker(
    Masker(
        "ocm",
        "OmniCloudMask alone",
        model_classes,
        uses_scl_invalid=False,
        context_px=model_context_px,
        check_ready=weights_on_disk,
    )
)
