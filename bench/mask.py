"""Benchmark of the masking step: megapixels per second of `mask_from_bands` at 10 m and 20 m, per tile.

Runs OmniCloudMask (masker 'ocm+scl', no I/O) on the current device as a tile task does: on the
window of an output tile of `--size` px and its masker's halo (`tasks.masking.stage.mask_halo_px`: the patch
overlap in model pixels, so 300 px a side at 10 m and 600 at 20 m with the default settings), a
synthetic cloudy 10 m scene. Two rates: masked pixels (the window) per second, and tile pixels per
second, what a tile costs once its halo is paid for. When the real weights are not on disk, randomly
initialised weights are written to a temporary model directory: the network and the speed are the
same, the masks are meaningless, and the output says so. The last line is machine-readable:
`mask_mpx_per_s_10m=<float> mask_mpx_per_s_20m=<float> tile_mpx_per_s_10m=<float>
tile_mpx_per_s_20m=<float> device=<name>` (best batch size of each).

Usage: `python bench/mask.py [--size 1024] [--dtype bf16] [--batch-sizes 8,32] [--repeats 1]`.
"""

import argparse
import csv
import math
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/mask.py` (as `make bench` does): make `tasks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from tasks.core.device import compute_device
from tasks.core.errors import MissingModelWeights
from tasks.core.settings import MaskSettings
from tasks.masking.ocm_inference import load_omnicloudmask
from tasks.masking.ocm_weights import check_model_weights, model_dir_for, model_version_for
from tasks.masking.stage import mask_from_bands, mask_halo_px
from tasks.testing.synthetic import (
    RadiometricJitter,
    full_resolution,
    make_sky,
    make_surface,
    observed_scene,
    synthetic_grid,
)

GRID_PIXEL_M = 10.0
MEGA = 1e6
DEFAULT_SIZE = {"cpu": 1024, "cuda": 4096}
DEFAULT_BATCH_SIZES = {"cpu": (8,), "cuda": (8, 32)}
WARM_UP_SIZE = 256
CLOUD_COVER, THIN_COVER = 0.3, 0.08


def write_random_weights(model_dir: Path, model_version: float) -> None:
    """Randomly initialised weights of `model_version` under their real file names, built as the library builds them.

    The library then runs its real loading path (smp `Unet`, safetensors) without any download.
    """
    load_omnicloudmask()
    import segmentation_models_pytorch as smp
    from omnicloudmask.download_models import model_index_path
    from safetensors.torch import save_file

    with model_index_path.open() as index:
        rows = [row for row in csv.DictReader(index) if float(row["version"]) == model_version]
    for row in rows:
        model = smp.Unet(encoder_name=row["timm_model_name"], encoder_weights=None, in_channels=3, classes=4)
        state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        save_file(state, model_dir / row["file_name"])


def synthetic_scene_bands(size: int, seed: int = 0) -> np.ndarray:
    """A cloudy 10 m scene of `size` x `size` pixels as scene-window bands (red, green, blue, nir, scl)."""
    grid = synthetic_grid(shape=(size, size), resolution=GRID_PIXEL_M)
    rng = np.random.default_rng(seed)
    truth, half_scl = make_surface(grid, rng)
    sky = make_sky(grid, rng, CLOUD_COVER, THIN_COVER)
    reflectance, half_classes = observed_scene(truth, half_scl, sky, RadiometricJitter(1.0, 0.0), np.ones(half_scl.shape, bool))
    scl = full_resolution(half_classes, grid.shape.yx)
    return np.concatenate([reflectance.astype(np.uint16), scl[None].astype(np.uint16)])


def device_name(device: torch.device) -> str:
    """The GPU's name, else the CPU model from /proc/cpuinfo, with spaces as underscores."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpu_info = Path("/proc/cpuinfo")
        lines = cpu_info.read_text().splitlines() if cpu_info.exists() else []
        name = next((line.split(":", 1)[1] for line in lines if line.startswith("model name")), "cpu")
    return "_".join(name.split())


def megapixels_per_second(bands: np.ndarray, settings: MaskSettings, repeats: int) -> float:
    """Best of `repeats` timed runs of `mask_from_bands` on `bands`."""
    megapixels = bands.shape[1] * bands.shape[2] / MEGA
    best_seconds = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        mask_from_bands(bands, GRID_PIXEL_M, settings)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best_seconds = min(best_seconds, time.perf_counter() - started)
    return megapixels / best_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, help="tile edge in pixels (default 1024 on CPU, 4096 on CUDA)")
    parser.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16", help="CUDA inference dtype (CPU runs fp32)")
    parser.add_argument("--batch-sizes", help="comma-separated batch sizes (default 8 on CPU, 8,32 on CUDA)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per configuration; the best counts")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--model-dir", help="weights directory (default: as the pipeline resolves it)")
    arguments = parser.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning, module="omnicloudmask")  # patch-size notes

    device = compute_device(arguments.device)
    size = arguments.size or DEFAULT_SIZE[device.type]
    batch_sizes = (
        tuple(int(value) for value in arguments.batch_sizes.split(","))
        if arguments.batch_sizes
        else DEFAULT_BATCH_SIZES[device.type]
    )
    base = MaskSettings(device=arguments.device, inference_dtype=arguments.dtype, model_dir=arguments.model_dir)
    model_dir, model_version = model_dir_for(base), model_version_for(base)
    with tempfile.TemporaryDirectory(prefix="ocm_random_weights_") as scratch:
        try:
            check_model_weights(model_dir, model_version)
            weights_note = f"real OmniCloudMask v{model_version:g} weights from {model_dir}"
        except MissingModelWeights:
            model_dir = Path(scratch)
            write_random_weights(model_dir, model_version)
            weights_note = f"RANDOM weights (real v{model_version:g} weights absent): speed only, masks meaningless"
        base = base.model_copy(update={"model_dir": str(model_dir)})
        name = device_name(device)
        print(f"device: {name} ({device.type}, {torch.get_num_threads()} torch threads); {weights_note}")
        print(f"tile: {size}x{size} px at {GRID_PIXEL_M:g} m; patch {base.patch_size}/{base.patch_overlap}; "
              f"dtype {arguments.dtype if device.type == 'cuda' else 'fp32'}")  # fmt: skip
        mask_from_bands(synthetic_scene_bands(WARM_UP_SIZE), GRID_PIXEL_M, base)  # loads the models
        best_window: dict[int, float] = {}
        best_tile: dict[int, float] = {}
        for resolution_m in (10, 20):
            halo_px = math.ceil(mask_halo_px(base.model_copy(update={"resolution_m": resolution_m}), GRID_PIXEL_M))
            window_px = size + 2 * halo_px
            bands = synthetic_scene_bands(window_px)
            for batch_size in batch_sizes:
                settings = base.model_copy(update={"resolution_m": resolution_m, "batch_size": batch_size})
                rate = megapixels_per_second(bands, settings, arguments.repeats)
                tile_rate = rate * (size / window_px) ** 2
                print(f"resolution {resolution_m} m, batch {batch_size}: {rate:.3f} Mpx/s masked "
                      f"({window_px}x{window_px} px: halo {halo_px} px a side), {tile_rate:.3f} Mpx/s of tile")  # fmt: skip
                best_window[resolution_m] = max(best_window.get(resolution_m, 0.0), rate)
                best_tile[resolution_m] = max(best_tile.get(resolution_m, 0.0), tile_rate)
    print(f"mask_mpx_per_s_10m={best_window[10]:.4f} mask_mpx_per_s_20m={best_window[20]:.4f} "
          f"tile_mpx_per_s_10m={best_tile[10]:.4f} tile_mpx_per_s_20m={best_tile[20]:.4f} device={name}")  # fmt: skip


if __name__ == "__main__":
    main()
