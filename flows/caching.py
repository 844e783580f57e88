"""Task caching for re-runs: keys from what changes a result, results persisted in the workspace.

A scene's read is keyed on (item id, grid, AOI, read settings, code version) and its mask on (scene,
mask settings, code version). The cache records live under `<workspace>/.prefect-results`, so
re-running a flow with the same parameters, or retrying a failed run from the UI, skips every scene
that finished and redoes only the others. Scene files are written atomically, so a killed run never
leaves a file a cache record could point at half-written.
"""

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from odc.geo.geobox import GeoBox
from odc.geo.geom import Geometry
from prefect.cache_policies import CacheKeyFnPolicy
from prefect.context import TaskRunContext
from prefect.filesystems import WritableFileSystem

from flows.parameters import MosaicSettings
from tasks.aoi import WGS84
from tasks.grid import grid_key
from tasks.scene import ClippedScene, FailedScene
from tasks.settings import MaskSettings, ReadSettings
from tasks.workspace import Workspace

RESULTS_FOLDER = ".prefect-results"
TASKS_PACKAGE = Path(__file__).resolve().parents[1] / "tasks"


@cache
def code_version() -> str:
    """A digest of the stage code: any change to `tasks/` invalidates cached results."""
    digest = hashlib.sha256()
    for source in sorted(TASKS_PACKAGE.rglob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def read_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key of `read_scene(item, grid, aoi, workspace, settings)`."""
    return _digest(
        "read",
        parameters["item"].item_id,
        grid_key(parameters["grid"]),
        parameters["aoi"].to_crs(WGS84).wkt,
        parameters["workspace"].root,
        parameters["settings"].model_dump_json(),
        code_version(),
    )


def mask_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Cache key of `mask_scene(scene, workspace, settings)`."""
    scene = parameters["scene"]
    return _digest(
        "mask",
        scene.item_id,
        scene.name,
        grid_key(scene.grid),
        parameters["workspace"].root,
        parameters["settings"].model_dump_json(),
        code_version(),
    )


def scene_folder_digest(aoi: Geometry, grid: GeoBox, read: ReadSettings, mask: MaskSettings) -> str:
    """A short digest of everything that shapes a run's scene and mask files (AOI, grid, read and mask settings).

    Runs that differ in any of them get different folders, so a file is never overwritten under a
    cache record that describes another version of it.
    """
    return _digest("scenes", aoi.to_crs(WGS84).wkt, grid_key(grid), read.model_dump_json(), mask.model_dump_json())[:12]


def products_digest(
    settings: MosaicSettings,
    workspace: Workspace,
    month_label: str,
    masked: Sequence[ClippedScene],
    failed: Sequence[FailedScene],
) -> str:
    """A short digest of everything that shapes a month's products: the scenes (their files in
    `workspace` and the failures), the settings and the code. A retried run with the same digest
    can publish what an earlier attempt staged."""
    return _digest(
        "products",
        workspace.root,
        month_label,
        [scene.item_id for scene in masked],
        [list(failure) for failure in failed],
        settings.model_dump_json(),
        code_version(),
    )[:12]


READ_CACHE = CacheKeyFnPolicy(cache_key_fn=read_cache_key)
MASK_CACHE = CacheKeyFnPolicy(cache_key_fn=mask_cache_key)


def result_storage(workspace: Workspace) -> Path | WritableFileSystem:
    """Where cached task results of `workspace` are persisted: beside its files, local or on S3.

    An S3 workspace gets a saved `S3Bucket` block named after the prefix (Prefect needs result
    storage saved server-side); it holds no secret: credentials come from the default AWS chain.
    """
    if not workspace.is_s3:
        return Path(workspace.uri(RESULTS_FOLDER))
    from prefect_aws import AwsCredentials, S3Bucket

    bucket, _, prefix = workspace.uri(RESULTS_FOLDER).removeprefix("s3://").partition("/")
    block = S3Bucket(bucket_name=bucket, bucket_folder=prefix, credentials=AwsCredentials())
    block.save(f"workspace-results-{_digest(workspace.root)[:12]}", overwrite=True)
    return block
