"""A month's destination on S3 (moto on loopback, through prefect-aws blocks) and in a local
directory: layout, URLs, content types, files put in order, re-runs overwriting, bad input."""

import errno
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
from botocore.exceptions import ClientError
from prefect_aws import AwsCredentials
from prefect_aws.client_parameters import AwsClientParameters
from prefect_aws.s3 import S3Bucket

from blocks.publish import (
    COG_CONTENT_TYPE,
    ITEM_CONTENT_TYPE,
    Published,
    month_destination,
    month_folder,
)
from tasks.core.errors import InvalidSettings, StoreUnreachable
from tasks.core.retry import is_transient_io_failure
from tasks.storage.gdal_env import gdal_env
from tasks.testing.servers import TEST_CREDENTIALS, S3Server

AOI = "lake_constance"
MONTH = "2024-06"
BUCKET = "basemaps-publish"
BUCKET_FOLDER = "mosaics"
MONTH_PREFIX = f"{BUCKET_FOLDER}/{AOI}/2024/06"


class UploadRefused(Exception):
    """Raised by a test hook in place of a failed PUT."""


@pytest.fixture
def products(tmp_path: Path) -> dict[str, Path]:
    files = {"mosaic": tmp_path / f"{AOI}_{MONTH}.tif", "valid_count": tmp_path / f"{AOI}_{MONTH}_count.tif"}
    for name, path in files.items():
        path.write_bytes(f"{name} pixels".encode())
    return files


@pytest.fixture
def item_file(tmp_path: Path) -> Path:
    path = tmp_path / f"{AOI}_{MONTH}.json"
    path.write_text('{"type": "Feature"}')
    return path


@pytest.fixture
def bucket_block(s3_server: S3Server) -> Iterator[S3Bucket]:
    """An S3Bucket block on the session's moto server; what the test published is removed afterwards."""
    credentials = AwsCredentials(
        aws_access_key_id=TEST_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=TEST_CREDENTIALS["aws_secret_access_key"],
        region_name=TEST_CREDENTIALS["region_name"],
        aws_client_parameters=AwsClientParameters(endpoint_url=s3_server.endpoint_url),
    )
    bucket_name = s3_server.make_bucket(BUCKET)
    bucket_block = S3Bucket(bucket_name=bucket_name, credentials=credentials, bucket_folder=BUCKET_FOLDER)
    yield bucket_block
    for key in _object_keys(bucket_block):
        credentials.get_s3_client().delete_object(Bucket=BUCKET, Key=key)


@pytest.fixture
def s3_calls(bucket_block: S3Bucket) -> Iterator[list[tuple[str, str]]]:
    """(operation, key) of every PutObject and DeleteObject the block's client sends, in order."""
    calls: list[tuple[str, str]] = []

    def record(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, params["Key"]))

    events = bucket_block.credentials.get_s3_client().meta.events
    for operation in ("PutObject", "DeleteObject"):
        events.register(f"before-parameter-build.s3.{operation}", record)
    yield calls
    for operation in ("PutObject", "DeleteObject"):
        events.unregister(f"before-parameter-build.s3.{operation}", record)


def _object_keys(bucket_block: S3Bucket) -> set[str]:
    listing = bucket_block.credentials.get_s3_client().list_objects_v2(Bucket=BUCKET, Prefix=MONTH_PREFIX)
    return {entry["Key"] for entry in listing.get("Contents", [])}


def _object(bucket_block: S3Bucket, key: str) -> dict[str, Any]:
    return bucket_block.credentials.get_s3_client().get_object(Bucket=BUCKET, Key=key)


def month_files(products: dict[str, Path], item_file: Path) -> dict[str, Path]:
    """{published name: local path} of the products, then the Item (last, as the month stage puts it)."""
    return {**{path.name: path for path in products.values()}, item_file.name: item_file}


def test_bucket_layout_urls_and_content_types(
    bucket_block: S3Bucket, products: dict[str, Path], item_file: Path
) -> None:
    destination = month_destination(bucket_block, AOI, MONTH)
    destination.put(month_files(products, item_file))

    expected_keys = {name: f"{MONTH_PREFIX}/{name}" for name in month_files(products, item_file)}
    assert {name: destination.url(name) for name in expected_keys} == {
        name: f"s3://{BUCKET}/{key}" for name, key in expected_keys.items()
    }
    assert _object_keys(bucket_block) == set(expected_keys.values())
    for path in products.values():
        stored = _object(bucket_block, expected_keys[path.name])
        assert stored["Body"].read() == path.read_bytes()
        assert stored["ContentType"] == COG_CONTENT_TYPE
    assert _object(bucket_block, expected_keys[item_file.name])["ContentType"] == ITEM_CONTENT_TYPE


def test_files_are_put_in_the_order_given_and_deleted_by_name(
    bucket_block: S3Bucket, products: dict[str, Path], item_file: Path, s3_calls: list[tuple[str, str]]
) -> None:
    destination = month_destination(bucket_block, AOI, MONTH)
    destination.delete(item_file.name)
    destination.put(month_files(products, item_file))

    assert s3_calls == [
        ("DeleteObject", f"{MONTH_PREFIX}/{item_file.name}"),
        *(("PutObject", f"{MONTH_PREFIX}/{name}") for name in month_files(products, item_file)),
    ]
    assert destination.exists(item_file.name) and not destination.exists("nothing.tif")


def test_republishing_overwrites(bucket_block: S3Bucket, products: dict[str, Path], item_file: Path) -> None:
    destination = month_destination(bucket_block, AOI, MONTH)
    destination.put(month_files(products, item_file))
    products["mosaic"].write_bytes(b"second run pixels")

    destination.put(month_files(products, item_file))

    assert len(_object_keys(bucket_block)) == len(month_files(products, item_file))
    assert _object(bucket_block, f"{MONTH_PREFIX}/{products['mosaic'].name}")["Body"].read() == b"second run pixels"


def test_a_refused_upload_stops_before_the_files_after_it(
    bucket_block: S3Bucket, products: dict[str, Path], item_file: Path
) -> None:
    destination = month_destination(bucket_block, AOI, MONTH)
    refused_key = f"{MONTH_PREFIX}/{products['valid_count'].name}"

    def refuse(params: dict[str, Any], **_: Any) -> None:
        if params["Key"] == refused_key:
            raise UploadRefused(refused_key)

    events = bucket_block.credentials.get_s3_client().meta.events
    events.register("before-parameter-build.s3.PutObject", refuse)
    try:
        with pytest.raises(UploadRefused):
            destination.put(month_files(products, item_file))
    finally:
        events.unregister("before-parameter-build.s3.PutObject", refuse)

    with pytest.raises(ClientError):
        _object(bucket_block, f"{MONTH_PREFIX}/{item_file.name}")


def test_local_layout_and_order(
    tmp_path: Path, products: dict[str, Path], item_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output_dir = tmp_path / "output"
    landed: list[str] = []
    original_replace = Path.replace

    def recording_replace(path: Path, target: Path) -> Path:
        landed.append(Path(target).name)
        return original_replace(path, target)

    monkeypatch.setattr(Path, "replace", recording_replace)
    destination = month_destination(None, AOI, MONTH, output_dir)

    destination.put(month_files(products, item_file))

    folder = output_dir.resolve() / month_folder(AOI, MONTH)
    assert all(destination.url(name) == str(folder / name) for name in month_files(products, item_file))
    assert all((folder / path.name).read_bytes() == path.read_bytes() for path in products.values())
    assert landed == list(month_files(products, item_file))
    assert sorted(entry.name for entry in folder.iterdir()) == sorted(month_files(products, item_file))


def test_a_local_put_withdraws_the_replaced_file_and_copies_published_ones(
    tmp_path: Path, products: dict[str, Path], item_file: Path
) -> None:
    destination = month_destination(None, AOI, MONTH, tmp_path / "output")
    destination.put(month_files(products, item_file))

    destination.put({"copy.tif": Published(products["mosaic"].name)}, replacing=item_file.name)

    assert not destination.exists(item_file.name)
    assert Path(destination.url("copy.tif")).read_bytes() == products["mosaic"].read_bytes()


def test_a_local_put_that_fills_the_disk_leaves_the_folder_as_it_was(
    tmp_path: Path, products: dict[str, Path], item_file: Path, small_disk_at: Callable[[Path, str], Path]
) -> None:
    output_dir = small_disk_at(tmp_path / "output", "160k")
    destination = month_destination(None, AOI, MONTH, output_dir)
    destination.put(month_files(products, item_file))
    folder = output_dir / month_folder(AOI, MONTH)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    large = tmp_path / "large.tif"
    large.write_bytes(b"\1" * 100_000)  # fits alone, not twice

    with pytest.raises(OSError) as full:
        destination.put({"first.tif": large, "second.tif": large, item_file.name: item_file}, replacing=item_file.name)

    assert full.value.errno == errno.ENOSPC
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before, "nothing landed, nothing withdrawn"


@pytest.mark.parametrize(
    ("aoi", "month", "message"),
    [("lake/constance", MONTH, "AOI name"), (AOI, "2024-13", "YYYY-MM"), (AOI, "June 2024", "YYYY-MM")],
)
def test_bad_aoi_or_month_is_refused(tmp_path: Path, aoi: str, month: str, message: str) -> None:
    with pytest.raises(InvalidSettings, match=message):
        month_destination(None, aoi, month, tmp_path)


def test_nowhere_to_publish_is_refused() -> None:
    with pytest.raises(InvalidSettings, match="nowhere"):
        month_destination(None, AOI, MONTH)


def test_an_aoi_named_like_the_bucket_folder_is_published_and_copied_below_it(bucket_block: S3Bucket, tmp_path: Path) -> None:
    mosaic = tmp_path / "tile_mosaic.tif"
    mosaic.write_bytes(b"tile pixels")
    month_prefix = f"{BUCKET_FOLDER}/{BUCKET_FOLDER}/2024/06"

    destination = month_destination(bucket_block, BUCKET_FOLDER, MONTH)
    destination.put({"tiles/tile_mosaic.tif": mosaic})
    destination.put({"month_mosaic.tif": Published("tiles/tile_mosaic.tif")})

    assert destination.url("tiles/tile_mosaic.tif") == f"s3://{BUCKET}/{month_prefix}/tiles/tile_mosaic.tif"
    for key in (f"{month_prefix}/tiles/tile_mosaic.tif", f"{month_prefix}/month_mosaic.tif"):
        assert _object(bucket_block, key)["Body"].read() == b"tile pixels"
        assert destination.exists(key.removeprefix(f"{month_prefix}/"))
    client = bucket_block.credentials.get_s3_client()
    for key in (f"{month_prefix}/tiles/tile_mosaic.tif", f"{month_prefix}/month_mosaic.tif"):
        client.delete_object(Bucket=BUCKET, Key=key)


@pytest.mark.slow
def test_a_store_that_refuses_connections_is_named_in_one_line_and_retried(
    products: dict[str, Path], item_file: Path, refused_endpoint: str
) -> None:
    credentials = AwsCredentials(
        aws_access_key_id=TEST_CREDENTIALS["aws_access_key_id"],
        aws_secret_access_key=TEST_CREDENTIALS["aws_secret_access_key"],
        region_name=TEST_CREDENTIALS["region_name"],
        aws_client_parameters=AwsClientParameters(endpoint_url=refused_endpoint),
    )
    destination = month_destination(S3Bucket(bucket_name=BUCKET, credentials=credentials), AOI, MONTH)

    def read_with_gdal() -> None:
        path, options = destination.gdal_location("tiles/tile_mosaic.tif")
        with destination.errors_named(), gdal_env(**options), rasterio.open(path):
            pass

    for operation in (
        lambda: destination.put(month_files(products, item_file)),
        lambda: destination.read_json("metadata.json"),
        lambda: destination.exists("metadata.json"),
        read_with_gdal,
    ):
        with pytest.raises(StoreUnreachable) as unreachable:
            operation()
        message = str(unreachable.value)
        assert message.startswith(f"the products store did not answer for s3://{BUCKET}/{AOI}/2024/06 at {refused_endpoint}")
        assert ("Could not connect to the endpoint URL" in message or "Failed to connect" in message) and "\n" not in message
        assert is_transient_io_failure(unreachable.value), "the I/O task retries a store that did not answer"
