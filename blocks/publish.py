"""Publishing a month's products: to S3 through a prefect-aws `S3Bucket` block, or to a local
output directory when no block is named, with the same layout either way.

What the flow uses:
- `publish_products(local_files, bucket_block, aoi, month, item_file, output_dir=None)` puts the
  files under `{aoi}/{YYYY}/{MM}/` (below the block's `bucket_folder`, or below `output_dir`) and
  returns {product name: URL}: `s3://bucket/key` URLs, or absolute local paths; the STAC Item is
  under `ITEM_PRODUCT`.
- `publish_products_task`: the same as a Prefect task that retries I/O failures.

The STAC Item is put last, and an Item left by an earlier run is removed first, so an Item's
presence means every product beside it is complete. Publishing again overwrites: re-runs are
idempotent. Local copies are atomic (temporary name, then rename).

Credentials, one source per role: products reach S3 only through the `S3Bucket` block (its
`AwsCredentials` and endpoint; uploads and copies through the block's own methods, deletes and
lookups through its credentials' client, GDAL reads of products with its credentials); the
workspace (`tasks.workspace`) and scene reads use the process's AWS chain. No block is created by
a run; `python -m blocks.register` saves them once.
"""

import json
import mimetypes
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError
from prefect import task
from prefect_aws import AwsCredentials
from prefect_aws.s3 import S3Bucket

from tasks.aoi import AOI_NAME_PATTERN
from tasks.errors import InvalidSettings, OutputCollision, PublishError, portable_errors
from tasks.gdal_env import s3_endpoint_options
from tasks.metadata import ProductNames
from tasks.month import Month
from tasks.retry import NOT_FOUND_CODES, io_task_retries, s3_error_code
from tasks.workspace import Workspace

ITEM_PRODUCT = "item"
ITEM_CONTENT_TYPE = "application/geo+json"
COG_CONTENT_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
PERMANENT_S3_ERRORS: Mapping[str, str] = {
    "NoSuchBucket": "the bucket does not exist; create it or fix the s3_block's bucket_name",
    "AccessDenied": "access denied; give the s3_block's credentials s3:PutObject and s3:GetObject on it",
    "AllAccessDisabled": "access denied; give the s3_block's credentials s3:PutObject and s3:GetObject on it",
    "InvalidAccessKeyId": "the access key is not known; fix the s3_block's credentials",
    "SignatureDoesNotMatch": "the secret key is wrong; fix the s3_block's credentials",
    "InvalidBucketName": "the bucket name is not valid; fix the s3_block's bucket_name",
}
"""S3 error codes no retry fixes, with what to do about each."""


def publish_products(
    local_files: Mapping[str, Path] | Sequence[Path],
    bucket_block: S3Bucket | None,
    aoi: str,
    month: str,
    item_file: Path,
    output_dir: Path | None = None,
) -> dict[str, str]:
    """Publish the products and then the STAC Item of one AOI and month ('YYYY-MM').

    `local_files` is {product name: path} or a list of paths (named by file name); each keeps its
    file name at the destination. Without `bucket_block`, the files go under `output_dir`.
    """
    products = _named_products(local_files, item_file)
    withdraw_item(bucket_block, aoi, month, item_file.name, output_dir)
    urls = publish_files({path.name: path for path in products.values()}, bucket_block, aoi, month, output_dir)
    (item_url,) = publish_files({item_file.name: item_file}, bucket_block, aoi, month, output_dir).values()
    return {**{name: urls[path.name] for name, path in products.items()}, ITEM_PRODUCT: item_url}


def publish_files(
    files: Mapping[str, Path], bucket_block: S3Bucket | None, aoi: str, month: str, output_dir: Path | None = None
) -> dict[str, str]:
    """Put local files under the AOI's month folder, in order; returns {name: URL or absolute path}.

    The names of `files` are paths relative to the month folder ('tiles/x.tif'). Local copies are
    atomic (temporary name, then rename).
    """
    folder = month_folder(aoi, month)
    if bucket_block is None:
        destination = Workspace(str(_local_destination(output_dir).resolve()))
        for name, path in files.items():
            destination.copy_from(path, f"{folder}/{name}")
    else:
        prefix = _bucket_prefix(bucket_block, folder)
        with _permanent_s3_errors_named(bucket_block.bucket_name, prefix):
            for name, path in files.items():
                # upload_from_path always puts the block's bucket_folder in front of the key it is given
                bucket_block.upload_from_path(path, f"{folder}/{name}", ExtraArgs={"ContentType": content_type(path)})
    return {name: product_url(bucket_block, aoi, month, name, output_dir) for name in files}


def copy_published(
    bucket_block: S3Bucket | None, aoi: str, month: str, copies: Mapping[str, str], output_dir: Path | None = None
) -> None:
    """Copy published files {source name: destination name} within the month folder (server-side on S3)."""
    folder = month_folder(aoi, month)
    if bucket_block is None:
        destination = Workspace(str(_local_destination(output_dir).resolve()))
        for source, target in copies.items():
            destination.copy_from(Path(destination.uri(f"{folder}/{source}")), f"{folder}/{target}")
        return
    prefix = _bucket_prefix(bucket_block, folder)
    with _permanent_s3_errors_named(bucket_block.bucket_name, prefix):
        for source, target in copies.items():
            bucket_block.copy_object(f"{prefix}/{source}", f"{prefix}/{target}")


def remove_published(
    bucket_block: S3Bucket | None, aoi: str, month: str, subfolder: str, output_dir: Path | None = None, keep: str | None = None
) -> None:
    """Delete everything published below `subfolder` of the month folder, but what lies below `keep` (a
    folder inside it)."""
    folder = month_folder(aoi, month)
    if bucket_block is None:
        root = _local_month_folder(output_dir, folder)
        kept = root / subfolder / keep if keep else None
        for path in sorted((root / subfolder).glob("*")) if (root / subfolder).is_dir() else []:
            if path != kept:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        return
    client = bucket_block.credentials.get_s3_client()
    bucket = bucket_block.bucket_name
    prefix = _bucket_prefix(bucket_block, folder)
    kept_prefix = f"{prefix}/{subfolder}/{keep}/" if keep else None
    with _permanent_s3_errors_named(bucket, prefix):
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{subfolder}/"):
            doomed = [{"Key": entry["Key"]} for entry in page.get("Contents", []) if not (kept_prefix and entry["Key"].startswith(kept_prefix))]
            if doomed:
                client.delete_objects(Bucket=bucket, Delete={"Objects": doomed})


def is_published(bucket_block: S3Bucket | None, aoi: str, month: str, name: str, output_dir: Path | None = None) -> bool:
    """Whether a file of the month folder is published."""
    folder = month_folder(aoi, month)
    if bucket_block is None:
        return (_local_month_folder(output_dir, folder) / name).is_file()
    prefix = _bucket_prefix(bucket_block, folder)
    with _permanent_s3_errors_named(bucket_block.bucket_name, prefix):
        try:
            bucket_block.credentials.get_s3_client().head_object(Bucket=bucket_block.bucket_name, Key=f"{prefix}/{name}")
        except ClientError as error:
            if s3_error_code(error) in NOT_FOUND_CODES:
                return False
            raise
    return True


def product_url(bucket_block: S3Bucket | None, aoi: str, month: str, name: str, output_dir: Path | None = None) -> str:
    """Where a published product is: `s3://bucket/key`, or its absolute local path."""
    folder = month_folder(aoi, month)
    if bucket_block is None:
        return str(_local_month_folder(output_dir, folder) / name)
    return f"s3://{bucket_block.bucket_name}/{_bucket_prefix(bucket_block, folder)}/{name}"


def withdraw_item(
    bucket_block: S3Bucket | None, aoi: str, month: str, item_name: str, output_dir: Path | None = None
) -> None:
    """Remove the month's STAC Item, if any, before anything beside it is replaced: an Item's presence
    means every product beside it is complete."""
    folder = month_folder(aoi, month)
    if bucket_block is None:
        (_local_month_folder(output_dir, folder) / item_name).unlink(missing_ok=True)
        return
    prefix = _bucket_prefix(bucket_block, folder)
    with _permanent_s3_errors_named(bucket_block.bucket_name, prefix):
        bucket_block.credentials.get_s3_client().delete_object(Bucket=bucket_block.bucket_name, Key=f"{prefix}/{item_name}")


def product_gdal_location(
    bucket_block: S3Bucket | None, aoi: str, month: str, name: str, output_dir: Path | None = None
) -> tuple[str, dict[str, str]]:
    """The path GDAL opens for a published product, and the GDAL options that reach it.

    A bucket product is read with the block's own credentials and endpoint, not the process's.
    """
    folder = month_folder(aoi, month)
    if bucket_block is None:
        return str(_local_month_folder(output_dir, folder) / name), {}
    credentials: AwsCredentials = bucket_block.credentials  # type: ignore[assignment]  # blocks.register saves these
    secret = credentials.aws_secret_access_key
    # rasterio takes credentials as these lower-case keys (it builds an AWS session of them).
    credential_options = {
        "aws_access_key_id": credentials.aws_access_key_id,
        "aws_secret_access_key": secret.get_secret_value() if secret else None,
        "aws_session_token": credentials.aws_session_token,
        "region_name": credentials.region_name,
    }
    options = {key: value for key, value in credential_options.items() if value}
    endpoint_url = credentials.aws_client_parameters.endpoint_url
    if endpoint_url:
        options |= s3_endpoint_options({"AWS_ENDPOINT_URL": str(endpoint_url)})
    folder_path = f"/vsis3/{bucket_block.bucket_name}/{_bucket_prefix(bucket_block, folder)}"
    # Products are replaced by re-runs: never serve what this process cached of an earlier version.
    options["CPL_VSIL_CURL_NON_CACHED"] = folder_path
    return f"{folder_path}/{name}", options


def month_folder(aoi: str, month: str) -> str:
    """'{aoi}/{YYYY}/{MM}', the folder of one AOI's products for one month."""
    if not AOI_NAME_PATTERN.match(aoi):
        raise InvalidSettings(f"AOI name {aoi!r} is not usable in a path; use letters, digits, '_' and '-'")
    period = Month.parse(month)
    return f"{aoi}/{period.year:04d}/{period.month:02d}"


def _named_products(local_files: Mapping[str, Path] | Sequence[Path], item_file: Path) -> dict[str, Path]:
    """{product name: path}, checked: every file exists and no two land on the same name."""
    if isinstance(local_files, Mapping):
        products = {name: Path(path) for name, path in local_files.items()}
    else:
        products = {Path(path).name: Path(path) for path in local_files}
    missing = [str(path) for path in [*products.values(), Path(item_file)] if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"cannot publish missing files: {', '.join(missing)}")
    file_names = [path.name for path in products.values()] + [Path(item_file).name]
    if len(set(file_names)) != len(file_names) or ITEM_PRODUCT in products:
        raise InvalidSettings(
            f"products {sorted(file_names)} would overwrite each other; give each file its own name "
            f"and no product the name {ITEM_PRODUCT!r}"
        )
    return products


def _local_destination(output_dir: Path | None) -> Path:
    """The output directory of products that go to no bucket; `InvalidSettings` when there is none."""
    if output_dir is None:
        raise InvalidSettings("products have nowhere to go: name an S3 block (s3_block) or set output_dir")
    return Path(output_dir)


def _local_month_folder(output_dir: Path | None, folder: str) -> Path:
    """The month folder `folder` below the output directory, as an absolute path."""
    return _local_destination(output_dir).resolve() / folder


def _bucket_prefix(bucket_block: S3Bucket, folder: str) -> str:
    """The key prefix of `folder` in the block's bucket: below its `bucket_folder`.

    `copy_object` is handed whole keys, which its path resolution leaves as they are (a key relative to
    `bucket_folder` whose first part equals it, an AOI named like the folder, would not be prefixed)."""
    return "/".join(part.strip("/") for part in (bucket_block.bucket_folder, folder) if part.strip("/"))


@contextmanager
def _permanent_s3_errors_named(bucket: str, prefix: str) -> Iterator[None]:
    """Turn an S3 error no retry fixes into a one-line `PublishError`; others pass on (and are retried)."""
    try:
        yield
    except (ClientError, S3UploadFailedError) as error:
        code = s3_error_code(error)
        if code not in PERMANENT_S3_ERRORS:
            raise
        raise PublishError(f"cannot publish to s3://{bucket}/{prefix}: {code}, {PERMANENT_S3_ERRORS[code]}") from None


def check_month_folder_owner(
    bucket_block: S3Bucket | None, output_dir: Path | None, aoi: str, month: str, aoi_digest: str
) -> None:
    """Raise `OutputCollision` when the AOI's month folder holds the metadata.json of another AOI.

    `aoi_digest` is this run's AOI identity (`tasks.aoi.aoi_digest`). A permanent S3 error (no
    bucket, no access) raises `PublishError` here, before any work is done.
    """
    folder = month_folder(aoi, month)
    metadata_name = ProductNames.for_run(aoi, Month.parse(month)).metadata
    if bucket_block is not None:
        prefix = _bucket_prefix(bucket_block, folder)
        location = f"s3://{bucket_block.bucket_name}/{prefix}"
        with _permanent_s3_errors_named(bucket_block.bucket_name, prefix):
            document = _s3_json(bucket_block, f"{prefix}/{metadata_name}")
    else:
        path = _local_destination(output_dir) / folder / metadata_name
        location = str(path.parent)
        document = json.loads(path.read_text()) if path.is_file() else None
    owner = (document or {}).get("aoi", {})
    if document is not None and owner.get("digest") != aoi_digest:
        raise OutputCollision(
            f"{location} holds the products of another AOI ({owner.get('source')}); give this AOI its own "
            "aoi_name, or delete that folder to replace its products"
        )


def _s3_json(bucket_block: S3Bucket, key: str) -> dict[str, Any] | None:
    """The JSON object at `key` in the block's bucket, or None when there is no such object."""
    client = bucket_block.credentials.get_s3_client()
    try:
        body = client.get_object(Bucket=bucket_block.bucket_name, Key=key)["Body"].read()
    except ClientError as error:
        if s3_error_code(error) in NOT_FOUND_CODES:
            return None
        raise
    return json.loads(body)


def content_type(path: Path) -> str:
    """The Content-Type an object gets: COG for GeoTIFFs, GeoJSON for the STAC Item."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return COG_CONTENT_TYPE
    if suffix in (".json", ".geojson"):
        return ITEM_CONTENT_TYPE
    return mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE


publish_products_task = task(
    name="publish-products",
    **io_task_retries(),
)(portable_errors(publish_products))
