"""A synthetic month as a production run sees it: COGs in S3 (moto) and items in a STAC API (rustac).

Flow and deployment tests build one with `serve_synthetic_month` and point `MosaicSettings` at it
with `flow_settings`; nothing in the flow knows it is a test.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

from flows.parameters import MosaicSettings
from tasks.search import newest_processing, scene_from_item
from tasks.testing.servers import TEST_CREDENTIALS, S3Server
from tasks.testing.synthetic import (
    COLLECTION_ID,
    DEFAULT_DATES,
    SyntheticMonth,
    make_synthetic_month,
    synthetic_grid,
    write_aoi,
)

__all__ = [
    "SERVED_GRID",
    "ServedMonth",
    "assert_every_scene_accounted",
    "flow_settings",
    "save_products_block",
    "serve_synthetic_month",
]

SERVED_GRID = synthetic_grid(shape=(256, 256), resolution=20.0)
"""5.12 km of 20 m pixels in EPSG:32633: a whole month reads, masks and composites in seconds."""


@dataclass(frozen=True)
class ServedMonth:
    """Where a served synthetic month lives and what it holds."""

    month: SyntheticMonth
    api_url: str
    bucket: str
    aoi_path: Path

    @property
    def label(self) -> str:
        """The month as 'YYYY-MM'."""
        return f"{self.month.dates[0]:%Y-%m}"

    @property
    def item_ids(self) -> list[str]:
        return [item["id"] for item in self.month.items]


def serve_synthetic_month(
    s3_server: S3Server,
    stac_api_factory: Callable[[dict[str, Any], list[dict[str, Any]]], str],
    work_dir: Path,
    **month_options: Any,
) -> ServedMonth:
    """Make a synthetic month on `SERVED_GRID`, upload its COGs to a fresh moto bucket, serve its items.

    `month_options` go to `make_synthetic_month` (dates, duplicated_dates, cloud_cover, seed, ...).
    Asset hrefs are `s3://` URIs, read by the flow through GDAL `/vsis3/`.
    """
    bucket = s3_server.make_bucket(f"scenes-{uuid.uuid4().hex[:12]}")
    data_dir = work_dir / "month"

    def upload(local_path: Path) -> str:
        return s3_server.upload(local_path, bucket, local_path.relative_to(data_dir).as_posix())

    options = {"grid": SERVED_GRID, "duplicated_dates": DEFAULT_DATES[1:2], **month_options}
    month = make_synthetic_month(data_dir, href_for=upload, **options)
    api_url = stac_api_factory(month.collection, list(month.items))
    return ServedMonth(month, api_url, bucket, write_aoi(SERVED_GRID, work_dir / "served_aoi.geojson", inset_px=20))


def flow_settings(served: ServedMonth, workspace: Path | str, **overrides: Any) -> MosaicSettings:
    """Settings of a run over `served`: its API and month, 20 m, SCL masker; `overrides` replace fields."""
    fields: dict[str, Any] = {
        "aoi": str(served.aoi_path),
        "month": served.label,
        "grid": {"resolution_m": 20.0},
        "search": {"stac_api_url": served.api_url, "collection": COLLECTION_ID, "max_cloud_cover": 95},
        "read": {"retry_base_delay_s": 0.1},
        "mask": {"masker": "scl"},
        "workspace": str(workspace),
        "output_dir": str(Path(workspace) / "output"),
        **overrides,
    }
    return MosaicSettings.model_validate(fields)


def save_products_block(block_name: str, bucket: str, bucket_folder: str, endpoint_url: str) -> str:
    """Save a prefect-aws S3Bucket block on `bucket` (products under `bucket_folder`) reached at
    `endpoint_url` with the test credentials; returns its name."""
    credentials = AwsCredentials(
        aws_access_key_id=TEST_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=TEST_CREDENTIALS["aws_secret_access_key"],
        region_name=TEST_CREDENTIALS["region_name"],
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url),
    )
    S3Bucket(bucket_name=bucket, bucket_folder=bucket_folder, credentials=credentials).save(block_name, overwrite=True)
    return block_name


def assert_every_scene_accounted(metadata: dict[str, Any], served: ServedMonth) -> None:
    """Every scene the search keeps (the newest processing of each served acquisition) appears in
    metadata.json exactly once, as used, failed or skipped, and the failed and skipped ones with a reason."""
    found = {scene.item_id for scene in newest_processing(filter(None, map(scene_from_item, served.month.items)))}
    used = [scene["id"] for scene in metadata["scenes_used"]]
    failed = [scene["id"] for scene in metadata["scenes_failed"]]
    skipped = [scene["id"] for scene in metadata["scenes_skipped"]]
    listed = used + failed + skipped
    assert sorted(listed) == sorted(found) and len(listed) == len(set(listed)) == metadata["scenes_found"], metadata
    assert all(scene["reason"] for scene in metadata["scenes_failed"] + metadata["scenes_skipped"])
