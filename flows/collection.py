"""Publishing an AOI's STAC Collection once a month's Item is out.

`publish_collection(destination, lock_dir)` reads the month's published Item, then, holding the
AOI's lock (`flows.locking.aoi_lock`), reads `{aoi}/collection.json`, adds the month
(`tasks.stac.collection.updated_collection`) and puts it back. Runs of other months of the AOI that
publish at once take turns at this read-modify-write, so none loses another's month, locally and on
S3 alike (the lock is a Prefect global concurrency limit with a server, a file lock in `lock_dir`
on one machine without one).

It runs after the Item is put, so the collection never links a month whose Item was never out. A
re-run of a published month withdraws its Item while its new files land (`tasks.products.month`); for
that while the collection's link to the month dangles, as the month folder itself then has no Item.
The month was published and will be again; readers of the collection see the Item missing, never a
wrong one.
"""

import tempfile
from pathlib import Path, PurePosixPath

from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.publish import MonthDestination
from flows.locking import aoi_lock
from tasks.core.errors import InvalidProduct, portable_errors
from tasks.core.month import Month
from tasks.core.retry import io_task_retries
from tasks.products.metadata import ProductNames
from tasks.stac.collection import collection_json, updated_collection
from tasks.stac.item import COLLECTION_FILE
from tasks.storage.workspace import partial_prefix

__all__ = ["publish_collection", "publish_collection_task"]


def publish_collection(destination: MonthDestination, lock_dir: Path) -> str:
    """Add the month of `destination` (its Item published) to the AOI's collection; returns the collection's URL.

    `lock_dir` holds the AOI's file lock when there is no Prefect server (the flow's staging root)
    and the collection's local copy while it is put. Raises `InvalidProduct` when the month's Item
    is not published.
    """
    item_name = ProductNames.for_run(destination.aoi, Month.parse(destination.month)).item
    item = destination.read_json(item_name)
    if item is None:
        raise InvalidProduct(
            f"{destination.url(item_name)} is not published, so its month cannot join the collection; re-run the month"
        )
    root = destination.aoi_root()
    item_href = f"./{PurePosixPath(destination.folder).relative_to(root.folder)}/{item_name}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (
        aoi_lock(destination.aoi, lock_dir),
        tempfile.TemporaryDirectory(prefix=partial_prefix(), dir=lock_dir) as scratch,
    ):
        document = updated_collection(
            root.read_json(COLLECTION_FILE), item, destination.aoi, item_href, root.url(COLLECTION_FILE)
        )
        local_copy = Path(scratch) / COLLECTION_FILE
        local_copy.write_bytes(collection_json(document))
        root.put({COLLECTION_FILE: local_copy})
    return root.url(COLLECTION_FILE)


publish_collection_task = task(
    name="publish-collection",
    **io_task_retries(),
    cache_policy=NO_CACHE,
)(portable_errors(publish_collection))
