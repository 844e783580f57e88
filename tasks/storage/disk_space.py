"""Local disk a month's run needs: checked before any scene is read, and named when a write finds the disk full.

A run writes to up to three local folders, each named by its setting (its role): `staging_dir`, the
`workspace` when it is local, the `output_dir` when no S3 block is named. What it needs there at once is
estimated from the tile size and the tiles in flight (`month_disk_needs`):

- each tile in flight writes its layer COGs in staging_dir, publishes them to output_dir (where they land
  under a temporary name first) and writes its record and histograms to the workspace;
- the month stage builds its single COGs (a tiled month up to `single_cog_max_pixels`), quicklook and
  documents in staging_dir, then publishes them; the workspace holds the search's listing of scenes.

A COG is counted at its raw size with its overviews (a third more), about what DEFLATE makes of
incompressible pixels (measured on 2048 x 2048 px: 1.31 times the raw size for noise, 0.82 for smooth
reflectance), and GDAL's COG driver first writes the overviews into a temporary file beside it (the
largest's are counted: noise peaked at 1.63 times the raw size, 1.67 is counted). Folders on one
filesystem add up.
What builds up over the month (every tile's COGs in output_dir, every tile's record) is not counted:
it is compressed and unknown until written. A disk that fills up later, or that another process
fills, stops the run with the same one line (`named_disk_full`), and a re-run keeps the committed
tiles; each tile checks for its own share before it reads a scene (`DiskNeeds.check_tile`), so a full
disk costs no further reads.

GDAL reports no errno: a COG write on a full disk raises 'TIFFWriteDirectoryTagData:IO error writing
tag data' and the like, or truncates the file silently (its validation then fails). Such a GDAL
failure counts as a full disk when staging_dir's filesystem, once the failing stage's scratch is gone,
has less free space than that stage (a tile, or the month's own files) needs there; an OSError ENOSPC
or EDQUOT on one of the run's filesystems always does.
"""

import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tasks.core.errors import DiskFull, ErrorCause, InvalidProduct, error_chain
from tasks.core.retry import NO_SPACE_ERRNOS
from tasks.products.quicklook import QUICKLOOK_MAX_SIDE

__all__ = [
    "OUTPUT_ROLE",
    "STAGING_ROLE",
    "WORKSPACE_ROLE",
    "DiskNeeds",
    "FolderNeed",
    "MonthWrites",
    "Share",
    "month_disk_needs",
    "named_disk_full",
]

STAGING_ROLE, WORKSPACE_ROLE, OUTPUT_ROLE = "staging_dir", "workspace", "output_dir"
OVERVIEW_SHARE = 1 / 3
"""Overviews halving each side down to one block add up to about a third of the full resolution."""
GDAL_MODULE = "rasterio"
"""Errors of GDAL reach Python as rasterio's (`CPLE_*`, `RasterioIOError`), or as `ErrorCause`s naming them."""
DOCUMENT_BYTES = 256 << 10
"""metadata.json, the STAC Item and the collection of a month (a few KB a scene), with `DOCUMENT_BYTES_PER_TILE`
for each tile."""
DOCUMENT_BYTES_PER_TILE = 8 << 10
"""A tile's share of the mosaic indexes (one source per band), metadata.json and the Item."""
RGBA_BYTES = 4
"""A quicklook pixel, uncompressed."""
RECORD_BYTES = 256 << 10
"""A tile's record (JSON) and histograms (compressed npz: measured 15 KB for a tile of 216 x 216 pixels; its
arrays hold at most 2 MB of int64, mostly zeros)."""
LISTING_BYTES = 1 << 20
"""The search's listing of a month's scenes in the workspace: about 5 KB a scene, so some 200 scenes."""


def cog_bytes(pixels: int, bytes_per_pixel: int) -> int:
    """The most a COG of `pixels` pixels of `bytes_per_pixel` takes: uncompressed, with its overviews."""
    return math.ceil(pixels * bytes_per_pixel * (1 + OVERVIEW_SHARE))


def written_cogs_bytes(pixels: int, layer_bytes: Sequence[int]) -> int:
    """The most COGs of `pixels` pixels (one per layer of `layer_bytes` bytes a pixel), written one after
    another into one folder, take at once: all of them, and the temporary overviews of the largest."""
    return sum(cog_bytes(pixels, size) for size in layer_bytes) + math.ceil(pixels * max(layer_bytes) * OVERVIEW_SHARE)


@dataclass(frozen=True)
class FolderNeed:
    """What one local folder of the run needs: `tile_bytes` for each tile in flight, `month_bytes` for the
    month's own files. `folder` is absolute; `role` is the setting that names it."""

    role: str
    folder: Path
    tile_bytes: int
    month_bytes: int


@dataclass(frozen=True)
class MonthWrites:
    """What a month's run writes, as far as disk goes.

    `grid_shape` is the grid's (y, x) in pixels, `tile_pixels` the largest tile's pixel count,
    `layer_bytes` the bytes per pixel of each raster layer (mosaic, count, indices, fill). A `tiled`
    month (a grid of more than one tile) builds its `single_cogs`, when it gets them, in staging_dir;
    a month of one tile copies its tile's COGs.
    """

    grid_shape: tuple[int, int]
    tile_pixels: int
    layer_bytes: tuple[int, ...]
    tiles: int
    tiles_in_flight: int
    tiled: bool
    single_cogs: bool

    @property
    def grid_pixels(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def documents_bytes(self) -> int:
        """The month's quicklook, indexes, metadata.json and Item, at most."""
        shrink = min(1.0, QUICKLOOK_MAX_SIDE / max(self.grid_shape))
        quicklook = math.ceil(self.grid_pixels * shrink**2) * RGBA_BYTES
        return quicklook + DOCUMENT_BYTES + self.tiles * DOCUMENT_BYTES_PER_TILE


def existing_folder(path: Path) -> Path:
    """`path`, or the nearest folder above it that exists (where its files will go)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


Share = Literal["tile", "month"]
"""A stage's part of a run's need: one tile in flight's, or the month stage's."""


@dataclass(frozen=True)
class Filesystem:
    """The run's folders on one filesystem and its free space now, in bytes."""

    folders: tuple[FolderNeed, ...]
    free_bytes: int

    def needed_bytes(self, tiles_in_flight: int) -> int:
        """What its folders need with `tiles_in_flight` tiles in flight and the month's files."""
        return sum(need.tile_bytes * tiles_in_flight + need.month_bytes for need in self.folders)

    def share_bytes(self, share: Share) -> int:
        """What one tile in flight, or the month stage, needs on it."""
        return sum(need.tile_bytes if share == "tile" else need.month_bytes for need in self.folders)

    def has_role(self, role: str) -> bool:
        return any(need.role == role for need in self.folders)

    def full(self, needed_bytes: int) -> DiskFull:
        return DiskFull([(str(need.folder), need.role) for need in self.folders], needed_bytes, self.free_bytes)


def device_of(path: Path) -> int:
    """The filesystem (st_dev) a file at `path` goes to."""
    return os.stat(existing_folder(path)).st_dev


@dataclass(frozen=True)
class DiskNeeds:
    """The local disk a run needs: each of its local folders' `FolderNeed`, with `tiles_in_flight` tiles at once.

    Empty (the default) for a run that asks for no check: nothing is checked or named then.
    """

    folders: tuple[FolderNeed, ...] = ()
    tiles_in_flight: int = 1

    def filesystems(self) -> list[Filesystem]:
        """The folders grouped by filesystem, each with its free space now."""
        grouped: dict[int, list[FolderNeed]] = {}
        for need in self.folders:
            grouped.setdefault(device_of(need.folder), []).append(need)
        return [
            Filesystem(tuple(needs), shutil.disk_usage(existing_folder(needs[0].folder)).free) for needs in grouped.values()
        ]

    def check(self) -> None:
        """Raise `DiskFull` for the first filesystem with less free space than the run needs on it."""
        for filesystem in self.filesystems():
            needed = filesystem.needed_bytes(self.tiles_in_flight)
            if filesystem.free_bytes < needed:
                raise filesystem.full(needed)

    def check_tile(self) -> None:
        """Raise `DiskFull` when a filesystem lacks even one tile's share (the disk filled since the run began)."""
        for filesystem in self.filesystems():
            if filesystem.free_bytes < filesystem.share_bytes("tile"):
                raise filesystem.full(filesystem.needed_bytes(self.tiles_in_flight))

    def disk_full(self, error: BaseException, share: Share) -> DiskFull | None:
        """The `DiskFull` behind `error` when a full disk caused it, else None: an OSError ENOSPC on one of the
        run's filesystems, or a GDAL failure while staging_dir's has less free space than the failing stage's
        `share` needs there (the failing stage's own files are gone by then)."""
        if isinstance(error, DiskFull) or not self.folders:
            return None
        filesystems = self.filesystems()
        no_space = next(
            (link for link in error_chain(error) if isinstance(link, OSError) and link.errno in NO_SPACE_ERRNOS), None
        )
        if no_space is not None:
            written = no_space.filename2 or no_space.filename  # a copy names its source, then its target
            if written:
                device = device_of(Path(os.fsdecode(written)))
                candidates = [fs for fs in filesystems if device_of(fs.folders[0].folder) == device]
            else:
                candidates = sorted(filesystems, key=lambda fs: fs.free_bytes - fs.needed_bytes(self.tiles_in_flight))
        elif any(is_gdal_failure(link) for link in error_chain(error)):
            candidates = [
                fs
                for fs in filesystems
                if fs.has_role(STAGING_ROLE) and fs.free_bytes < fs.share_bytes(share)
            ]
        else:
            return None
        return candidates[0].full(candidates[0].needed_bytes(self.tiles_in_flight)) if candidates else None


def is_gdal_failure(error: BaseException) -> bool:
    """Whether `error` is GDAL's (through rasterio), or a product GDAL wrote that fails validation."""
    if isinstance(error, ErrorCause):
        return error.type_name.startswith(f"{GDAL_MODULE}.")
    return isinstance(error, InvalidProduct) or type(error).__module__.split(".")[0] == GDAL_MODULE


@contextmanager
def named_disk_full(needs: DiskNeeds, share: Share) -> Iterator[None]:
    """Raise the one-line `DiskFull` in place of an error a full disk caused in a stage of `share` (`DiskNeeds.disk_full`).

    Enter it outside the stage's scratch folder, so that the stage's own files are gone when free space is measured.
    """
    try:
        yield
    except Exception as error:
        full = needs.disk_full(error, share)
        if full is None:
            raise
        raise full from error


def month_disk_needs(writes: MonthWrites, staging: Path, workspace: Path | None, output: Path | None) -> DiskNeeds:
    """What the run needs at once in `staging`, and in `workspace` and `output` when they are local (else None)."""
    tile_cogs = sum(cog_bytes(writes.tile_pixels, size) for size in writes.layer_bytes)
    month_cogs = sum(cog_bytes(writes.grid_pixels, size) for size in writes.layer_bytes) if writes.single_cogs else 0
    built_month_cogs = written_cogs_bytes(writes.grid_pixels, writes.layer_bytes) if writes.single_cogs and writes.tiled else 0
    folders = [
        FolderNeed(
            STAGING_ROLE,
            staging,
            written_cogs_bytes(writes.tile_pixels, writes.layer_bytes),
            built_month_cogs + writes.documents_bytes,
        )
    ]
    if workspace is not None:
        folders.append(FolderNeed(WORKSPACE_ROLE, workspace, RECORD_BYTES, LISTING_BYTES))
    if output is not None:
        folders.append(FolderNeed(OUTPUT_ROLE, output, tile_cogs, month_cogs + writes.documents_bytes))
    return DiskNeeds(tuple(folders), writes.tiles_in_flight)
