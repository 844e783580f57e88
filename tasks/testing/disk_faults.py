"""Faults of a run's own disk, staged for the tests and `bench/faults.py`: a small or full filesystem, a
corrupt tile record.

- `small_disk(folder, size)` mounts a tmpfs of `size` ('160k', '3m') over `folder` for the block, and
  unmounts it after. Mounting needs root (CAP_SYS_ADMIN); where it is refused, `MountRefused` says why
  (tests skip with that reason).
- `fill_disk(folder, leave_bytes)` fills the filesystem of `folder` with one file, as another process
  would, up to its last byte or to `leave_bytes` free, and returns that file (delete it to free the space).
- `fill_disk_when(pattern, below, folder, timeout_s, leave_bytes)` does so from a thread as soon as a
  new file matching the glob appears (a run's first or last committed tile record, say): a disk that fills
  up in the middle of a month.
- `corrupt_tile_record(workspace, month_label, tile_label, suffix)` cuts a committed tile's record
  (`.json`) or histograms (`.npz`) in the workspace, local or `s3://`, to half its length, as a full
  disk or a copy cut short would.

Survived, for `bench/faults.py`: a run on a disk too small for it fails before reading any scene with
one `DiskFull` line naming the folder, its setting and the MB needed and free, and a disk that fills
up in the middle of the month fails the run with that line once (no retries, no line per tile); in
both the month folder holds no month-level file that was not there before (a complete earlier month
stays as it was). A re-run after a record was corrupted completes, warns once naming the file,
rebuilds that tile alone, and publishes a month pixel-equal to the clean run's, with the same
statistics in metadata.json.
"""

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.products.metadata import TILES_FOLDER
from tasks.storage.workspace import Workspace

__all__ = ["MountRefused", "corrupt_tile_record", "fill_disk", "fill_disk_when", "small_disk"]

MOUNT_TIMEOUT_S = 30.0
FILL_CHUNK_BYTES = 1 << 20
FILLER_NAME = "filler"
FILL_POLL_S = 0.02


class MountRefused(Exception):
    """A tmpfs cannot be mounted here (not root, or no CAP_SYS_ADMIN in this container)."""


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (mount's syntax: '160k', '3m') mounted over `folder` (made if needed) for the block."""
    if os.geteuid() != 0:
        raise MountRefused(f"mounting a {size} tmpfs needs root (running as uid {os.geteuid()})")
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        timeout=MOUNT_TIMEOUT_S,
    )
    if mount.returncode != 0:
        raise MountRefused(f"mount -t tmpfs refused: {mount.stderr.strip() or mount.returncode}")
    try:
        yield folder
    finally:
        # Lazy: a file a failed run left open must not keep the test's filesystem mounted.
        subprocess.run(["umount", "--lazy", str(folder)], check=True, timeout=MOUNT_TIMEOUT_S)


def fill_disk(folder: Path, leave_bytes: int = 0) -> Path:
    """Fill the filesystem of `folder` (made if needed) with one file, up to its last byte or to `leave_bytes`
    free; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    filler = folder / FILLER_NAME
    chunk = os.urandom(FILL_CHUNK_BYTES)  # random: a compressing filesystem cannot store it in less
    written, most = 0, shutil.disk_usage(folder).total  # bounded, whatever the filesystem reports
    with open(filler, "ab", buffering=0) as out:
        while written < most and (room := shutil.disk_usage(folder).free - leave_bytes) > 0:
            try:
                written += out.write(chunk[:room]) or 0
            except OSError:
                break
    return filler


@contextmanager
def fill_disk_when(
    pattern: str, below: Path, folder: Path, timeout_s: float, leave_bytes: int = 0
) -> Iterator[threading.Event]:
    """For the block, a thread that fills the filesystem of `folder` (`fill_disk`, leaving `leave_bytes`) as soon
    as a new file matching the glob `pattern` lies below `below` (one not there as the block began); the event
    it yields is set once the disk is full. The thread gives up after `timeout_s` and is joined on exit."""
    filled, stop = threading.Event(), threading.Event()
    already_there = set(below.glob(pattern))

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            if set(below.glob(pattern)) - already_there:
                fill_disk(folder, leave_bytes)
                filled.set()
                return
            time.sleep(FILL_POLL_S)

    watcher = threading.Thread(target=watch, name="fill-disk", daemon=True)
    watcher.start()
    try:
        yield filled
    finally:
        stop.set()
        watcher.join(timeout=timeout_s)


def corrupt_tile_record(workspace: Workspace, month_label: str, tile_label: str, suffix: str) -> str:
    """Cut the committed `suffix` ('.json' record, '.npz' histograms) file of tile `tile_label` ('r000c001')
    in `workspace` (a run's, `flows.monthly_mosaic.run_inputs(settings).workspace`) to half its length;
    returns its URI. The month must have one set of tile records."""
    prefix = f"{TILES_FOLDER}/{month_label}/"
    if workspace.is_s3:
        import boto3

        bucket, _, key_prefix = workspace.uri(prefix).removeprefix("s3://").partition("/")
        listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=key_prefix)
        names = [entry["Key"].removeprefix(key_prefix) for entry in listing.get("Contents", [])]
    else:
        names = [path.relative_to(workspace.uri(prefix)).as_posix() for path in Path(workspace.uri(prefix)).rglob("*")]
    (name,) = [f"{prefix}{found}" for found in names if found.endswith(f"/{tile_label}{suffix}")]
    payload = workspace.read_bytes(name)
    workspace.write_bytes(name, payload[: len(payload) // 2])
    return workspace.uri(name)
