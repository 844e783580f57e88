"""A synthetic month as a production run sees it: COGs in S3 (moto) and items in a STAC API (rustac).

Flow and deployment tests build one with `serve_synthetic_month` (or several consecutive months of
one AOI with `serve_synthetic_series`) and point `MosaicSettings` at it with `flow_settings`;
nothing in the flow knows it is a test.
"""

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from prefect_aws import AwsCredentials, S3Bucket
from prefect_aws.client_parameters import AwsClientParameters

from flows.parameters import MosaicSettings
from tasks.testing.servers import TEST_CREDENTIALS, S3Server
from tasks.testing.synthetic import (
    COLLECTION_ID,
    DEFAULT_DATES,
    SyntheticMonth,
    make_synthetic_month,
    stac_collection,
    synthetic_grid,
    write_aoi,
)

__all__ = [
    "SERVED_GRID",
    "ServedMonth",
    "ServedSeries",
    "assert_every_scene_accounted",
    "flow_settings",
    "month_dates",
    "save_products_block",
    "serve_synthetic_month",
    "serve_synthetic_series",
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

    @property
    def acquisitions(self) -> int:
        """Distinct acquisitions served: the scenes a run uses when every read succeeds (an acquisition
        served twice, an older and a newer processing, is one scene; the older is skipped)."""
        return len(self.month.dates)


@dataclass(frozen=True)
class ServedSeries:
    """Consecutive synthetic months of one AOI on `SERVED_GRID`, all served by one STAC API and bucket."""

    months: tuple[SyntheticMonth, ...]
    api_url: str
    bucket: str
    aoi_path: Path

    @property
    def labels(self) -> list[str]:
        """The months as 'YYYY-MM', in date order."""
        return [f"{month.dates[0]:%Y-%m}" for month in self.months]

    def served_month(self, label: str) -> ServedMonth:
        """One month of the series, as `serve_synthetic_month` would have served it."""
        return ServedMonth(self.months[self.labels.index(label)], self.api_url, self.bucket, self.aoi_path)


def month_dates(first_day: date) -> list[date]:
    """`DEFAULT_DATES` moved to the month of `first_day`, days of the month kept: a series' scene dates."""
    return [first_day.replace(day=day.day) for day in DEFAULT_DATES]


def serve_synthetic_series(
    s3_server: S3Server,
    stac_api_factory: Callable[[dict[str, Any], list[dict[str, Any]]], str],
    work_dir: Path,
    dates_of_months: Sequence[Sequence[date]],
    options_of_months: Sequence[Mapping[str, Any]] = (),
    **month_options: Any,
) -> ServedSeries:
    """Make one synthetic month on `SERVED_GRID` per entry of `dates_of_months` (its scene dates, e.g.
    `month_dates(date(2020, 4, 1))`), upload their COGs to a fresh moto bucket, serve all their items
    from one STAC API.

    Month k is seeded `seed + k`, so each has its own sky; the second date of each month is published
    twice; `month_options` go to `make_synthetic_month` for every month (duplicated_dates, cloud_cover,
    seed, ...), and `options_of_months[k]` to month k only (e.g. its `surface_gain`).
    Asset hrefs are `s3://` URIs, read by the flow through GDAL `/vsis3/`.
    """
    bucket = s3_server.make_bucket(f"scenes-{uuid.uuid4().hex[:12]}")
    data_dir = work_dir / "month"  # item ids differ between months, so their files never meet

    def upload(local_path: Path) -> str:
        return s3_server.upload(local_path, bucket, local_path.relative_to(data_dir).as_posix())

    seed = month_options.pop("seed", 0)
    months = []
    for index, dates in enumerate(dates_of_months):
        own_options = options_of_months[index] if index < len(options_of_months) else {}
        options = {"grid": SERVED_GRID, "duplicated_dates": dates[1:2], **month_options, **own_options}
        months.append(make_synthetic_month(data_dir, dates, href_for=upload, seed=seed + index, **options))
    items = [item for month in months for item in month.items]
    api_url = stac_api_factory(stac_collection(items), items)
    aoi_path = write_aoi(SERVED_GRID, work_dir / "served_aoi.geojson", inset_px=20)
    return ServedSeries(tuple(months), api_url, bucket, aoi_path)


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
    dates = month_options.pop("dates", DEFAULT_DATES)
    series = serve_synthetic_series(s3_server, stac_api_factory, work_dir, [dates], **month_options)
    return series.served_month(series.labels[0])


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


def save_products_block(
    block_name: str, bucket: str, bucket_folder: str, endpoint_url: str, keys: Mapping[str, str] = TEST_CREDENTIALS
) -> str:
    """Save a prefect-aws S3Bucket block on `bucket` (products under `bucket_folder`) reached at
    `endpoint_url` with `keys` (boto3 client arguments; the test credentials unless given); returns its name."""
    credentials = AwsCredentials(
        aws_access_key_id=keys["aws_access_key_id"],
        aws_secret_access_key=keys["aws_secret_access_key"],
        region_name=keys["region_name"],
        aws_client_parameters=AwsClientParameters(endpoint_url=endpoint_url),
    )
    S3Bucket(bucket_name=bucket, bucket_folder=bucket_folder, credentials=credentials).save(block_name, overwrite=True)
    return block_name


def assert_every_scene_accounted(metadata: dict[str, Any], served: ServedMonth) -> None:
    """Every item the STAC API serves for the month (older processings of an acquisition too) appears in
    metadata.json exactly once, as used, failed or skipped, and the failed and skipped ones with a reason."""
    found = set(served.item_ids)
    used = [scene["id"] for scene in metadata["scenes_used"]]
    failed = [scene["id"] for scene in metadata["scenes_failed"]]
    skipped = [scene["id"] for scene in metadata["scenes_skipped"]]
    listed = used + failed + skipped
    assert sorted(listed) == sorted(found) and len(listed) == len(set(listed)) == metadata["scenes_found"], metadata
    assert all(scene["reason"] for scene in metadata["scenes_failed"] + metadata["scenes_skipped"])
