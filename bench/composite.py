"""Benchmark of the compositing stage.

1. Kernel speed on a stack of 12 observations x 4 bands x 2048 x 2048 uint16 with 40 % of the
   observations invalid, 25th percentile: `tasks.compositing.percentile.percentile_composite` against
   `np.nanpercentile` and against S2Mosaic 1.1.0's percentile aggregation
   (`s2mosaic.mosaic_utils.calculate_percentile_mosaic`, numbagg's `nanquantile` over row chunks in
   a thread pool). S2Mosaic and the packages that function needs (numbagg, numba, llvmlite) are
   pip-installed with --no-deps under /tmp at run time; when that fails its figure is `na`.
   `np.nanpercentile` along an axis calls a Python function per pixel (`np.apply_along_axis`), so on
   the full stack it would take about half an hour: it is timed on a strip of rows of the same stack
   and scaled to the whole stack by pixel count (its cost is linear in pixels), and says so.
   Inputs are prepared outside the timings (uint16 + validity for the kernel, float32 with NaN for
   the others). The results are checked against each other.
2. With a CUDA GPU: the seed's algorithm (NaN -> max, full argsort, gather) in torch on the same
   stack, against the kernel on the GPU.
3. Peak memory of compositing an AOI tile by tile as a month does (`tasks.geometry.tiles` tiles of
   `--tile-size` px; per tile, the scene windows and their masks made in memory, as the tile task
   holds them, then `tasks.compositing.composite.composite_tile`), over an AOI and over one 4 times larger
   (same scenes and tile size, twice the side), each in a fresh subprocess (resource.getrusage
   maxrss). It runs first, while this process is small (see `memory_benchmark`).

Run: `.venv/bin/python bench/composite.py` (about 3 minutes on 2 cores); `--quick` for a smaller stack.
The last line is `speedup_vs_numpy=<x> speedup_vs_s2mosaic=<x or na> peak_rss_ratio_4x_aoi=<x>`.
"""

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from odc.geo.geobox import GeoBox  # noqa: E402

from tasks.compositing.composite import MaskedWindow, composite_tile  # noqa: E402
from tasks.compositing.percentile import percentile_composite  # noqa: E402
from tasks.core.scene import REFLECTANCE_BANDS, SCENE_BANDS, MaskClass, SceneWindow  # noqa: E402
from tasks.core.settings import CompositeSettings  # noqa: E402
from tasks.geometry.tiles import OutputTile, tile_grid, tile_layout  # noqa: E402
from tasks.testing.synthetic import synthetic_grid  # noqa: E402

PERCENTILE = 25.0
S2MOSAIC_VERSION = "1.1.0"
S2MOSAIC_TARGET = Path("/tmp/s2mosaic_pkg")
S2MOSAIC_DEPS_TARGET = Path("/tmp/s2mosaic_deps")
S2MOSAIC_AGGREGATION_DEPS = ("numbagg", "numba", "llvmlite")
"""What `s2mosaic/mosaic_utils.py` imports beyond numpy (numbagg.nanquantile and its JIT)."""
S2MOSAIC_CHUNK_ROWS = 100
"""S2Mosaic's own default rows per chunk."""
MAX_REFLECTANCE_DN = 10_000
SCL_VEGETATION = 4
KILOBYTES_PER_MEGABYTE = 1024  # ru_maxrss is in kilobytes on Linux


def random_stack(obs: int, bands: int, side: int, invalid_share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stack (obs, band, side, side) uint16 in 1..10000 and validity (obs, side, side) bool."""
    rng = np.random.default_rng(seed)
    stack = rng.integers(1, MAX_REFLECTANCE_DN, size=(obs, bands, side, side), dtype=np.uint16)
    valid = rng.random((obs, side, side)) >= invalid_share
    return stack, valid


def best_time(function, repeats: int) -> float:
    """Best wall time in seconds of `repeats` calls after one warm-up call."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def with_nan(stack: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid[:, None], stack.astype(np.float32), np.float32(np.nan))


def numpy_percentile(stack_nan: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        return np.nanpercentile(stack_nan, PERCENTILE, axis=0, method="linear")


def load_s2mosaic_aggregation() -> ModuleType | None:
    """S2Mosaic's `mosaic_utils` module, installed under /tmp if needed; None when it cannot be had."""
    for target, packages in (
        (S2MOSAIC_TARGET, (f"s2mosaic=={S2MOSAIC_VERSION}",)),
        (S2MOSAIC_DEPS_TARGET, S2MOSAIC_AGGREGATION_DEPS),
    ):
        if not target.is_dir():
            command = [sys.executable, "-m", "pip", "install", "-q", "--target", str(target), "--no-deps", *packages]
            installed = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if installed.returncode != 0:
                print(f"s2mosaic: pip install {' '.join(packages)} failed: {installed.stderr.strip()[-300:]}")
                return None
    sys.path.insert(0, str(S2MOSAIC_DEPS_TARGET))
    source = S2MOSAIC_TARGET / "s2mosaic" / "mosaic_utils.py"
    try:
        # Loaded by path: the package's __init__ imports the whole pipeline (STAC, OmniCloudMask, ...).
        spec = importlib.util.spec_from_file_location("s2mosaic_mosaic_utils", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception as error:  # any import failure means "not available", reported as na
        print(f"s2mosaic: cannot import {source}: {type(error).__name__}: {error}")
        return None
    return module


def seed_percentile(stack: torch.Tensor, valid: torch.Tensor, percentile: float) -> torch.Tensor:
    """The seed's composite: invalid -> NaN -> float32 max, full argsort along obs, gather, interpolate."""
    values = stack.to(torch.float32).masked_fill(~valid[:, None], float("nan"))
    values = torch.nan_to_num(values, nan=torch.finfo(torch.float32).max)
    ordered = torch.gather(values, 0, torch.argsort(values, dim=0))
    count = valid.sum(dim=0)
    rank = (count - 1).clamp(min=0).to(torch.float32) * (percentile / 100.0)
    lower = rank.floor().to(torch.int64)
    upper = torch.minimum(lower + 1, (count - 1).clamp(min=0))
    bands = stack.shape[1]
    low = torch.gather(ordered, 0, lower.expand(1, bands, *lower.shape))[0]
    high = torch.gather(ordered, 0, upper.expand(1, bands, *upper.shape))[0]
    result = low + (high - low) * (rank - lower)
    return result.round().masked_fill(count == 0, 0).to(torch.int32)


def kernel_benchmark(args: argparse.Namespace) -> tuple[float, float | None]:
    """Print kernel, numpy and S2Mosaic timings; return (speedup vs numpy, speedup vs S2Mosaic or None)."""
    stack, valid = random_stack(args.obs, args.bands, args.side, args.invalid)
    pixels = args.side * args.side
    print(f"stack: {args.obs} obs x {args.bands} bands x {args.side}x{args.side} uint16, "
          f"{args.invalid:.0%} invalid, p{PERCENTILE:g}, {torch.get_num_threads()} CPU threads")  # fmt: skip
    stack_tensor, valid_tensor = torch.from_numpy(stack), torch.from_numpy(valid)
    ours = percentile_composite(stack_tensor, valid_tensor, PERCENTILE)[0].numpy()
    kernel_s = best_time(lambda: percentile_composite(stack_tensor, valid_tensor, PERCENTILE), args.repeats)
    print(f"kernel (torch, CPU):            {kernel_s:8.3f} s   {pixels / kernel_s / 1e6:8.2f} Mpx/s")

    stack_nan = with_nan(stack, valid)
    strip_rows = args.side if args.numpy_rows == 0 else min(args.numpy_rows, args.side)
    strip = np.ascontiguousarray(stack_nan[:, :, :strip_rows])
    start = time.perf_counter()
    numpy_strip = numpy_percentile(strip)
    numpy_strip_s = time.perf_counter() - start
    numpy_s = numpy_strip_s * args.side / strip_rows
    scaled = "" if strip_rows == args.side else f" (timed on {strip_rows} rows: {numpy_strip_s:.2f} s, scaled by pixels)"
    print(f"np.nanpercentile:               {numpy_s:8.3f} s   {pixels / numpy_s / 1e6:8.2f} Mpx/s{scaled}")
    expected = np.nan_to_num(np.round(numpy_strip), nan=0).astype(np.uint16)
    print(f"  kernel == numpy on the timed rows: {np.array_equal(ours[:, :strip_rows], expected)}")

    s2mosaic_s = None
    aggregation = load_s2mosaic_aggregation()
    if aggregation is not None:
        scenes = [stack_nan[index] for index in range(args.obs)]
        warm_up = [scene[:, :64, :64].copy() for scene in scenes]  # numba compiles on the first call
        aggregation.calculate_percentile_mosaic(warm_up, 64, max_workers=args.threads, percentile_value=PERCENTILE)
        start = time.perf_counter()
        theirs = aggregation.calculate_percentile_mosaic(
            scenes, args.side, chunk_size=S2MOSAIC_CHUNK_ROWS, max_workers=args.threads, percentile_value=PERCENTILE
        )
        s2mosaic_s = time.perf_counter() - start
        print(f"s2mosaic {S2MOSAIC_VERSION} (numbagg):       {s2mosaic_s:8.3f} s   {pixels / s2mosaic_s / 1e6:8.2f} Mpx/s"
              f"   ({args.threads} workers)")  # fmt: skip
        difference = np.abs(np.round(theirs).astype(np.int64) - ours.astype(np.int64))
        print(f"  kernel vs s2mosaic rounded: max |diff| {difference.max()} DN, equal on {np.mean(difference == 0):.4%}")
    else:
        print("s2mosaic:                       na")

    if torch.cuda.is_available():
        gpu_benchmark(stack_tensor, valid_tensor, args.repeats)
    else:
        print("seed algorithm on GPU:          na (no CUDA GPU here)")
    return numpy_s / kernel_s, (s2mosaic_s / kernel_s if s2mosaic_s else None)


def gpu_benchmark(stack: torch.Tensor, valid: torch.Tensor, repeats: int) -> None:
    """Kernel vs the seed's argsort algorithm on the GPU, same stack."""
    stack_gpu, valid_gpu = stack.cuda(), valid.cuda()

    def timed(function) -> float:
        def synchronised() -> None:
            function()
            torch.cuda.synchronize()

        return best_time(synchronised, repeats)

    kernel_s = timed(lambda: percentile_composite(stack_gpu, valid_gpu, PERCENTILE))
    seed_s = timed(lambda: seed_percentile(stack_gpu, valid_gpu, PERCENTILE))
    print(f"kernel (torch, {torch.cuda.get_device_name()}): {kernel_s:.4f} s; seed argsort: {seed_s:.4f} s; "
          f"seed/kernel = {seed_s / kernel_s:.2f}")  # fmt: skip


def tile_observations(grid: GeoBox, tile_box: GeoBox, scenes: int, invalid: float, seed: int) -> list[MaskedWindow]:
    """`scenes` windows over the tile, as the tile task holds them: bands (reflectance on a ramp of the
    grid's pixel position, SCL vegetation) and masks with `invalid` of the pixels thick cloud."""
    rows, columns = (np.arange(part.start, part.stop) for part in grid.overlap_roi(tile_box))
    ground = ((1000 + 2 * rows[:, None] + columns[None, :]) % MAX_REFLECTANCE_DN + 1).astype(np.uint16)
    rng = np.random.default_rng(seed)
    observations = []
    for index in range(scenes):
        bands = np.empty((len(SCENE_BANDS), *ground.shape), np.uint16)
        for band in range(len(REFLECTANCE_BANDS)):
            np.add(ground, 100 * band + index, out=bands[band])
        bands[len(REFLECTANCE_BANDS)] = SCL_VEGETATION
        mask = np.where(rng.random(ground.shape) < invalid, MaskClass.THICK_CLOUD, MaskClass.CLEAR).astype(np.uint8)
        observations.append(MaskedWindow(SceneWindow(f"S2A_T_{index:02d}_L2A", tile_box, bands), mask))
    return observations


def run_composite_job(args: argparse.Namespace) -> None:
    """Child process: composite an `rss_side` px AOI tile by tile and print, as JSON, its peak RSS in MB
    (getrusage maxrss; also the kernel's VmHWM), the peak before the first tile (imports), the tiles and the time."""
    grid = synthetic_grid((args.rss_side, args.rss_side))
    inside_aoi = np.ones(grid.shape.yx, bool)
    settings = CompositeSettings(block_size=args.block_size, device="cpu")
    layout = tile_layout(grid, args.tile_size)
    before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KILOBYTES_PER_MEGABYTE
    start = time.perf_counter()
    for tile_index, (row, col) in enumerate(np.ndindex(*layout.shape.yx)):
        tile_box = tile_grid(grid, args.tile_size, OutputTile(row, col))
        observations = tile_observations(grid, tile_box, args.rss_scenes, args.invalid, seed=tile_index)
        composite_tile(observations, tile_box, inside_aoi[grid.overlap_roi(tile_box)], settings)
        del observations
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / KILOBYTES_PER_MEGABYTE
    status = Path("/proc/self/status").read_text()
    hwm_kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    print(json.dumps({"peak_rss_mb": peak_mb, "vm_hwm_mb": hwm_kb / KILOBYTES_PER_MEGABYTE, "rss_before_mb": before_mb,
                      "tiles": layout.shape.y * layout.shape.x, "seconds": seconds}))  # fmt: skip


def bench_subprocess(args: argparse.Namespace, *options: str) -> str:
    """Run this script with `options` in a fresh interpreter; its stdout."""
    command = [sys.executable, __file__, "--threads", str(args.threads), "--invalid", str(args.invalid), *options]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def memory_benchmark(args: argparse.Namespace) -> float:
    """Peak RSS of compositing an AOI tile by tile and one 4x larger; returns larger / smaller.

    Run while this process is still small: Linux carries a process's ru_maxrss across fork and
    exec, so a child started from a large parent would report the parent's size.
    """
    peaks = []
    for side in (args.rss_side, 2 * args.rss_side):
        options = ("--rss-side", str(side), "--rss-scenes", str(args.rss_scenes), "--block-size", str(args.block_size),
                   "--tile-size", str(args.tile_size))  # fmt: skip
        figures = json.loads(bench_subprocess(args, "--rss-child", *options).splitlines()[-1])
        peaks.append(figures["peak_rss_mb"])
        print(f"composite {side}x{side} px as {figures['tiles']} tiles of {args.tile_size} px, {args.rss_scenes} scenes, "
              f"block {args.block_size}: peak RSS {figures['peak_rss_mb']:.0f} MB (VmHWM {figures['vm_hwm_mb']:.0f} MB; "
              f"{figures['rss_before_mb']:.0f} MB after imports), {figures['seconds']:.1f} s")  # fmt: skip
    print(f"peak RSS ratio, 4x AOI / AOI: {peaks[1] / peaks[0]:.3f}")
    return peaks[1] / peaks[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 x 512 stack, 512 px AOI in 256 px tiles: a smoke run")
    parser.add_argument("--side", type=int, default=2048, help="stack edge in pixels")
    parser.add_argument("--obs", type=int, default=12)
    parser.add_argument("--bands", type=int, default=4)
    parser.add_argument("--invalid", type=float, default=0.4, help="share of invalid observations")
    parser.add_argument("--threads", type=int, default=2, help="torch threads and S2Mosaic workers")
    parser.add_argument("--repeats", type=int, default=3, help="timed kernel runs (best is kept)")
    parser.add_argument("--numpy-rows", type=int, default=16, help="rows np.nanpercentile is timed on; 0 = all")
    parser.add_argument("--rss-side", type=int, default=2048, help="edge of the smaller AOI of the memory test")
    parser.add_argument("--rss-scenes", type=int, default=6)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--tile-size", type=int, default=1024, help="output tile edge of the memory test")
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_child:
        run_composite_job(args)
        return
    if args.quick:
        args.side, args.rss_side, args.block_size, args.tile_size = 512, 512, 256, 256
    rss_ratio = memory_benchmark(args)
    speedup_numpy, speedup_s2mosaic = kernel_benchmark(args)
    s2mosaic_text = f"{speedup_s2mosaic:.2f}" if speedup_s2mosaic is not None else "na"
    print(f"speedup_vs_numpy={speedup_numpy:.2f} speedup_vs_s2mosaic={s2mosaic_text} peak_rss_ratio_4x_aoi={rss_ratio:.3f}")


if __name__ == "__main__":
    main()
