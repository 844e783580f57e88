"""Benchmark of the read stage: bytes fetched from S3 against the full assets, and scenes read per second.

A synthetic month (the real tile 29RKH as ground when ../shared/data/s2 is present, else the
procedural surface on the same 100 m grid) is uploaded to a moto S3 server on 127.0.0.1 started
here, and every scene is read for a centred AOI covering 10 % and then 50 % of the tile, as a month
reads it: per output tile over the AOI (`tasks.geometry.tiles`, `--tile-size`, by default the pipeline's), the
window of each scene over the tile and its masker's halo (`tasks.masking.stage.mask_halo_px` of the default
mask settings) with `tasks.acquisition.read.read_scene_window`. Each AOI reads its own fresh copy of the files,
since GDAL caches what it fetched per URL; the tiles of one AOI share that cache, as the tiles of one
worker process do.

The COGs are tiled like Earth Search's relative to the tile: its 10980 px tiles in 1024 px blocks
have ~10.7 blocks a side; this 1098 px tile in 128 px blocks has ~8.6 (the shared tile's own
512 px layout is also reported). Moto is a Python server, so scenes per second are bound by it;
bytes fetched are the stable number. The last line is `fetched_fraction_10pct=<float>`.

Usage: `python bench/acquisition.py [--dates 6] [--tile-size 4096]`.
"""

import argparse
import math
import os
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

if __package__ in (None, ""):  # run as `python bench/acquisition.py` (as `make bench` does): make `tasks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from odc.geo.geom import Geometry

from tasks.acquisition.read import read_scene_window
from tasks.acquisition.search import scene_from_item
from tasks.core.errors import SceneOutsideAOI
from tasks.core.settings import MaskSettings, ReadSettings, TileSettings
from tasks.geometry.grid import pixel_size_m
from tasks.geometry.tiles import read_grid, tile_grid, tiles_over_aoi
from tasks.masking.stage import mask_halo_px
from tasks.testing.servers import TEST_CREDENTIALS, S3Server
from tasks.testing.synthetic import DEFAULT_DATES, SyntheticMonth, make_synthetic_month

REAL_TILE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "s2" / "l2a_29RKH_20200219"
BUCKET = "acquisition-bench"
EARTH_SEARCH_LIKE_BLOCK = 128
SHARED_TILE_BLOCK = 512
AOI_FRACTIONS = (0.10, 0.50)


@dataclass(frozen=True)
class Acquisition:
    """What reading one AOI of every scene of a month cost."""

    block_size: int
    aoi_fraction: float
    tiles: int
    halo_px: int
    scenes: int
    windows: int
    fetched_bytes: int
    full_bytes: int
    requests: int
    seconds: float

    @property
    def fetched_fraction(self) -> float:
        return self.fetched_bytes / self.full_bytes

    def line(self) -> str:
        return (
            f"cog_block={self.block_size} aoi={self.aoi_fraction:.0%} tiles={self.tiles} halo={self.halo_px:g}px "
            f"scenes={self.scenes} windows={self.windows} "
            f"fetched={self.fetched_bytes / 1e6:.2f}MB full={self.full_bytes / 1e6:.2f}MB "
            f"fraction={self.fetched_fraction:.3f} requests={self.requests} "
            f"time={self.seconds:.2f}s scenes_per_s={self.scenes / self.seconds:.2f}"
        )


def centred_aoi(month: SyntheticMonth, area_fraction: float) -> Geometry:
    """A square of `area_fraction` of the tile's area, centred on it, on whole pixels (tile CRS)."""
    height, width = month.grid.shape.yx
    side_y, side_x = round(height * math.sqrt(area_fraction)), round(width * math.sqrt(area_fraction))
    top, left = (height - side_y) // 2, (width - side_x) // 2
    return month.grid[top : top + side_y, left : left + side_x].extent


def uploaded_month(server: S3Server, work_dir: Path, dates: int, block_size: int) -> tuple[SyntheticMonth, int]:
    """A fresh synthetic month whose assets are in S3 under a new prefix (hrefs are s3:// URIs), and their total bytes."""
    out_dir = work_dir / uuid.uuid4().hex

    def upload(path: Path) -> str:
        return server.upload(path, BUCKET, f"{out_dir.name}/{path.relative_to(out_dir).as_posix()}")

    month = make_synthetic_month(
        out_dir,
        dates=[DEFAULT_DATES[0] + timedelta(days=5 * index) for index in range(dates)],
        tile_dir=REAL_TILE_DIR if REAL_TILE_DIR.is_dir() else None,
        href_for=upload,
        block_size=block_size,
    )
    return month, sum(path.stat().st_size for path in out_dir.rglob("*.tif"))


def measure(
    server: S3Server, work_dir: Path, dates: int, block_size: int, aoi_fraction: float, tile_size_px: int
) -> Acquisition:
    """Read every scene of a fresh month over the centred AOI of `aoi_fraction` of the tile, tile by tile."""
    month, full_bytes = uploaded_month(server, work_dir, dates, block_size)
    aoi = centred_aoi(month, aoi_fraction)
    tiles = tiles_over_aoi(month.grid, aoi, tile_size_px)
    halo_px = mask_halo_px(MaskSettings(), pixel_size_m(month.grid))
    items = [scene_from_item(item) for item in month.items]
    windows = 0
    server.reset_counters()
    started = time.perf_counter()
    for tile in tiles:
        halo_box = read_grid(tile_grid(month.grid, tile_size_px, tile), halo_px)
        for item in items:
            try:
                read_scene_window(item, halo_box, aoi, ReadSettings())
            except SceneOutsideAOI:
                continue
            windows += 1
    seconds = time.perf_counter() - started
    return Acquisition(
        block_size, aoi_fraction, len(tiles), halo_px, len(items), windows, server.bytes_served(), full_bytes,
        server.requests_for("/"), seconds,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dates", type=int, default=len(DEFAULT_DATES), help="scenes in the month")
    parser.add_argument(
        "--tile-size", type=int, default=TileSettings().tile_size_px, help="output tile edge in grid pixels"
    )
    arguments = parser.parse_args()
    warnings.simplefilter("ignore", PendingDeprecationWarning)
    server = S3Server()
    os.environ.update(
        AWS_ENDPOINT_URL=server.endpoint_url,
        AWS_ACCESS_KEY_ID=TEST_CREDENTIALS["aws_access_key_id"],
        AWS_SECRET_ACCESS_KEY=TEST_CREDENTIALS["aws_secret_access_key"],
        AWS_DEFAULT_REGION=TEST_CREDENTIALS["region_name"],
    )
    ground = "real tile 29RKH" if REAL_TILE_DIR.is_dir() else "procedural surface (no ../shared data)"
    print(f"acquisition: {arguments.dates} scenes of a synthetic month over the {ground}, 1098 x 1098 px 100 m, moto S3 on 127.0.0.1")
    try:
        server.make_bucket(BUCKET)
        with tempfile.TemporaryDirectory() as work_dir:
            results = {
                (block_size, fraction): measure(server, Path(work_dir), arguments.dates, block_size, fraction, arguments.tile_size)
                for block_size in (EARTH_SEARCH_LIKE_BLOCK, SHARED_TILE_BLOCK)
                for fraction in AOI_FRACTIONS
            }
    finally:
        server.stop()
    for result in results.values():
        print(result.line())
    print(f"fetched_fraction_10pct={results[(EARTH_SEARCH_LIKE_BLOCK, 0.10)].fetched_fraction:.4f}")


if __name__ == "__main__":
    main()
