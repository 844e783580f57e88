"""Cloud and shadow mask of each scene window: OmniCloudMask and/or SCL.

The mask of a scene window (`tasks.scene.SceneWindow`) is a (y, x) uint8 array of `MaskClass` values
on the window's sub-grid. The rules that combine model output, SCL and data coverage live in
`tasks.mask_rules` (pure); this module runs the model and says how much context (`mask_halo_px`) a
tile must read around itself for its mask not to depend on where tiles are cut.

Model. OmniCloudMask sees red, green and nir. It runs at `resolution_m`: where
round(resolution_m / grid pixel) is 2 or more (e.g. 20 m on a 10 m grid) its input is averaged down
by that factor and its classes are brought back to the grid by nearest; on a coarser grid (e.g. 20 m
on a 30 m grid) it runs on the grid itself. Inference runs
on `settings.device` ('auto': CUDA when present, else CPU) in `settings.inference_dtype` on CUDA and
always in fp32 on CPU (bf16/fp16 are slower there, and the library warns about it).

Inference goes through the process's `tasks.ocm_inference.PatchBatcher`, which batches the patches
of all windows being masked at once (across tiles), holds the `gpu` concurrency slot on CUDA, and
halves its batch size on CUDA out-of-memory.

Weights are never fetched during a run: a missing file raises `MissingModelWeights` at once, naming
the directory and the files, so an air-gapped run cannot hang on the model hub. Fetch them ahead of
time with `python -m tasks.mask download-models [--dir D]`. The directory is `settings.model_dir`,
else `$OMNICLOUDMASK_MODEL_DIR`, else the library's own data directory.
"""

import argparse
import csv
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

from tasks.device import compute_device
from tasks.errors import (
    InvalidSettings,
    MissingModelWeights,
    MosaicError,
    root_cause,
)
from tasks.mask_rules import (
    average_down,
    buffer_cloud_and_shadow,
    buffer_radius_px,
    classes_from_scl,
    combine_classes,
    downsample_factor,
    has_data,
    scl_invalid,
    upsample_nearest,
)
from tasks.ocm_inference import load_omnicloudmask, patch_batcher
from tasks.scene import NODATA, REFLECTANCE_BANDS, SCENE_BANDS, SCL_BAND, MaskClass
from tasks.settings import MaskSettings

MODEL_DIR_ENV = "OMNICLOUDMASK_MODEL_DIR"
MIN_WEIGHTS_BYTES = 1024 * 1024
"""A weights file at most this size is taken as missing (the library's own rule)."""
OCM_BANDS: tuple[str, ...] = ("red", "green", "nir")
OCM_MIN_SIDE_PX = 32
"""OmniCloudMask rejects inputs narrower than this; smaller scenes are padded with nodata."""
CPU_INFERENCE_DTYPE = "fp32"
MASKERS_USING_OCM = frozenset({"ocm+scl", "ocm"})
MASKERS_USING_SCL = frozenset({"ocm+scl", "scl"})

def model_dir_for(settings: MaskSettings) -> Path:
    """The weights directory: `settings.model_dir`, else $OMNICLOUDMASK_MODEL_DIR, else the library's."""
    configured = settings.model_dir or os.environ.get(MODEL_DIR_ENV)
    if configured:
        return Path(configured)
    return load_omnicloudmask().download_models.get_model_data_dir()


def model_version_for(settings: MaskSettings) -> float:
    """The model version to run: `settings.model_version`, else the library's latest."""
    if settings.model_version is not None:
        return float(settings.model_version)
    return load_omnicloudmask().download_models.get_latest_model_version()


def expected_weight_files(model_version: float) -> list[str]:
    """File names of the weights of `model_version`, from the package's `model_download_links.csv`."""
    index_path = load_omnicloudmask().download_models.model_index_path
    with index_path.open() as index:
        rows = list(csv.DictReader(index))
    names = [row["file_name"] for row in rows if float(row["version"]) == model_version]
    if not names:
        versions = sorted({float(row["version"]) for row in rows})
        raise InvalidSettings(f"OmniCloudMask model_version {model_version} does not exist; use one of {versions}")
    return names


def download_command(model_dir: Path) -> str:
    return f"python -m tasks.mask download-models --dir {model_dir}"


def check_model_weights(model_dir: Path, model_version: float) -> None:
    """Raise `MissingModelWeights` unless every weights file of the version is in `model_dir` (> 1 MiB)."""
    missing = [
        name
        for name in expected_weight_files(model_version)
        if not ((model_dir / name).is_file() and (model_dir / name).stat().st_size > MIN_WEIGHTS_BYTES)
    ]
    if missing:
        raise MissingModelWeights(
            f"OmniCloudMask v{model_version:g} weights missing in {model_dir}: {', '.join(missing)}; "
            f"fetch them with `{download_command(model_dir)}` (then copy the directory here, or point "
            f"model_dir / ${MODEL_DIR_ENV} at it)"
        )


def download_model_weights(model_dir: Path, model_version: float) -> list[Path]:
    """Fetch the weights of `model_version` into `model_dir` with the library's own downloader."""
    download_models = load_omnicloudmask().download_models
    model_dir.mkdir(parents=True, exist_ok=True)
    try:
        fetched = download_models.get_models(model_dir=model_dir, model_version=model_version)
    except Exception as error:  # the hub client raises many types (HTTP, DNS, offline mode)
        raise MissingModelWeights(
            f"could not download OmniCloudMask v{model_version:g} weights to {model_dir}: {root_cause(error)}; "
            "check the connection to huggingface.co, or copy the files from a machine that has them"
        ) from None
    return [entry["Path"] for entry in fetched]


def pad_to_min_side(bands: np.ndarray, min_side_px: int) -> np.ndarray:
    """`bands` (band, y, x) padded at the bottom and right with nodata (0) to at least `min_side_px` per side."""
    _, height, width = bands.shape
    pad_y, pad_x = max(0, min_side_px - height), max(0, min_side_px - width)
    if not (pad_y or pad_x):
        return bands
    return np.pad(bands, ((0, 0), (0, pad_y), (0, pad_x)))


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
    check_model_weights(model_dir, model_version)
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


def mask_from_bands(bands: np.ndarray, grid_pixel_m: float, settings: MaskSettings) -> np.ndarray:
    """The scene mask (uint8 `MaskClass`, y, x) of a clipped scene's bands (`SCENE_BANDS`, y, x)."""
    reflectance = bands[: len(REFLECTANCE_BANDS)]  # SCENE_BANDS start with REFLECTANCE_BANDS: a view, no copy
    scl = bands[SCENE_BANDS.index(SCL_BAND)]
    data = has_data(reflectance)
    if not data.any():
        return np.full(data.shape, MaskClass.NODATA, dtype=np.uint8)
    if settings.masker in MASKERS_USING_OCM:
        cloud_classes = model_classes_on_grid(bands, grid_pixel_m, settings, compute_device(settings.device))
    else:
        cloud_classes = classes_from_scl(scl, settings.scl_invalid_classes)
    radius_px = buffer_radius_px(settings.buffer_m, grid_pixel_m)
    if radius_px > 0:
        cloud_classes = buffer_cloud_and_shadow(cloud_classes, radius_px)
    invalid = scl_invalid(scl, settings.scl_invalid_classes) if settings.masker in MASKERS_USING_SCL else None
    return combine_classes(cloud_classes, invalid, data)


def mask_halo_px(settings: MaskSettings, grid_pixel_m: float) -> int:
    """Grid pixels of context the masker needs on each side of a tile for the tile's mask to be whole.

    OmniCloudMask blends overlapping patches and sees least context at its input's edge: a halo of
    `patch_overlap` model pixels keeps the tile's own pixels away from that edge. The cloud and
    shadow buffer reaches `buffer_m` further. SCL alone, unbuffered, needs none.
    """
    model_px = 0
    if settings.masker in MASKERS_USING_OCM:
        model_px = settings.patch_overlap * downsample_factor(grid_pixel_m, settings.resolution_m)
    return model_px + math.ceil(buffer_radius_px(settings.buffer_m, grid_pixel_m))


def main(argv: list[str] | None = None) -> int:
    """`python -m tasks.mask download-models [--dir D] [--model-version V]`."""
    parser = argparse.ArgumentParser(prog="python -m tasks.mask", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    download = commands.add_parser("download-models", help="fetch OmniCloudMask weights for offline runs")
    download.add_argument("--dir", help=f"target directory (default: ${MODEL_DIR_ENV}, else the library's)")
    download.add_argument("--model-version", type=float, help="model version (default: the latest)")
    arguments = parser.parse_args(argv)
    settings = MaskSettings(model_dir=arguments.dir, model_version=arguments.model_version)
    try:
        paths = download_model_weights(model_dir_for(settings), model_version_for(settings))
    except MosaicError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
