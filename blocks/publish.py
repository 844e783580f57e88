"""Publishing a month's products: to S3 through a prefect-aws `S3Bucket` block, or to a local
output directory when no block is named, with the same layout either way.

A `MonthDestination` is the folder `{aoi}/{YYYY}/{MM}/` of one AOI's month, below the block's
`bucket_folder` (`BucketMonth`) or below `output_dir` (`LocalMonth`); `month_destination` picks one.
Every file is named by its path relative to that folder ('tiles/x.tif'), and every operation the
flow needs (put, remove, look up, read, open with GDAL) is a method of it, so the stages never
ask which kind they have; `aoi_root()` is the same kind of destination at the AOI's folder `{aoi}`
(its STAC Collection lies there). `put` publishes files in the order given, local ones or copies of
published ones (`Published`), and withdraws the file it is told replaces them (the month's Item)
before the first lands, so the month stage (`tasks.products.month`) puts the Item last: an Item's presence
means every product beside it is complete. Publishing again overwrites: re-runs are idempotent.
A local put is all or nothing: every file is first copied under a temporary name beside its target,
and only once all are there is anything withdrawn and are they renamed into place, so a put that
fails (a full disk) leaves the folder as it was; on S3 each object lands whole.

Credentials, one source per role: products reach S3 only through the `S3Bucket` block (its
`AwsCredentials` and endpoint; uploads and copies through the block's own methods, deletes and
lookups through its credentials' client, GDAL reads of products with its credentials); the
workspace (`tasks.storage.workspace`) and scene reads use the process's AWS chain. No block is created by
a run; `python -m blocks.register` saves them once.
"""

import copy
import json
import mimetypes
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from prefect_aws import AwsCredentials
from prefect_aws.s3 import S3Bucket
from rasterio.errors import RasterioError

from tasks.core.errors import InvalidSettings, OutputCollision, PublishError, StoreUnreachable, error_chain, first_line
from tasks.core.month import Month
from tasks.core.retry import NOT_FOUND_CODES, s3_error_code
from tasks.geometry.aoi import AOI_NAME_PATTERN
from tasks.products.metadata import ProductNames
from tasks.storage.gdal_env import s3_endpoint_options
from tasks.storage.workspace import partial_file

__all__ = [
    "COG_CONTENT_TYPE",
    "ITEM_CONTENT_TYPE",
    "ITEM_PRODUCT",
    "BucketMonth",
    "LocalMonth",
    "MonthDestination",
    "Published",
    "check_month_folder_owner",
    "content_type",
    "month_destination",
    "month_folder",
]

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
NO_ANSWER_ERRORS = (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError)
"""botocore's errors of a store that did not answer (after botocore's own retries)."""
UNWRITABLE_FOLDER_ERRORS = (NotADirectoryError, IsADirectoryError, PermissionError)
"""OS errors of a local output folder that no retry fixes: a file where a folder should be, or no write access."""
GDAL_NO_ANSWER = re.compile(r"Failed to connect|Could not connect|Connection refused|Connection timed out|timed out after", re.IGNORECASE)
"""curl's words, passed on by GDAL, for a store that did not answer a read."""


@dataclass(frozen=True)
class Published:
    """A source for `MonthDestination.put`: the file already published in the same folder under `name`."""

    name: str


class MonthDestination(ABC):
    """The published folder of one AOI's month; files are named relative to it ('tiles/x.tif')."""

    def __init__(self, aoi: str, month: str) -> None:
        self.aoi = aoi
        self.month = month
        self.folder = month_folder(aoi, month)

    @property
    @abstractmethod
    def location(self) -> str:
        """The folder as a URL (`s3://bucket/key`) or an absolute local path."""

    def url(self, name: str) -> str:
        """Where a published file is: `s3://bucket/key`, or its absolute local path."""
        return f"{self.location}/{name}"

    def aoi_root(self) -> "MonthDestination":
        """This destination moved to the AOI's folder `{aoi}` (above every month; `month` still names
        the month it came from): the same methods, files named relative to that folder."""
        root = copy.copy(self)
        root.folder = self.aoi
        return root

    @abstractmethod
    def put(self, files: Mapping[str, Path | Published], replacing: str | None = None) -> None:
        """Publish {name: source}, in order: a local file, or a copy of a published one (server-side on S3).

        `replacing` names a published file withdrawn before the first of them lands (the month's Item,
        which describes the files they replace).
        """

    @abstractmethod
    def remove_below(self, subfolder: str, keep: str | None = None) -> None:
        """Delete everything published below `subfolder`, but what lies below `keep` (a folder in it)."""

    @abstractmethod
    def exists(self, name: str) -> bool:
        """Whether a file is published."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove a published file; nothing when there is none."""

    @abstractmethod
    def read_json(self, name: str) -> dict[str, Any] | None:
        """A published JSON file, or None when there is none."""

    @abstractmethod
    def gdal_location(self, name: str) -> tuple[str, dict[str, str]]:
        """The path GDAL opens for a published file, and the GDAL options that reach it."""

    def errors_named(self) -> AbstractContextManager[None]:
        """For the block, a failure of the store behind this destination (its own methods, and GDAL reads of
        `gdal_location`s) becomes a one-line error when it can be named; a local folder names one it cannot write."""
        return nullcontext()


class LocalMonth(MonthDestination):
    """The month folder below a local output directory."""

    def __init__(self, output_dir: Path, aoi: str, month: str) -> None:
        super().__init__(aoi, month)
        self.output_dir = Path(output_dir).resolve()

    @property
    def root(self) -> Path:
        """The folder's absolute local path."""
        return self.output_dir / self.folder

    @property
    def location(self) -> str:
        return str(self.root)

    def put(self, files: Mapping[str, Path | Published], replacing: str | None = None) -> None:
        """All or nothing: each file is copied under a temporary name beside its target first; then `replacing`
        is withdrawn and the copies are renamed into place, in order."""
        landing: list[tuple[Path, Path]] = []
        try:
            with self.errors_named():
                for name, source in files.items():
                    target = self.root / name
                    landing.append((partial_file(target.parent, target.suffix), target))
                    shutil.copyfile(self.root / source.name if isinstance(source, Published) else source, landing[-1][0])
                if replacing is not None:
                    self.delete(replacing)
                for temporary, target in landing:
                    temporary.replace(target)
        finally:
            for temporary, _ in landing:
                temporary.unlink(missing_ok=True)

    def remove_below(self, subfolder: str, keep: str | None = None) -> None:
        below = self.root / subfolder
        kept = below / keep if keep else None
        for path in sorted(below.glob("*")) if below.is_dir() else []:
            if path != kept:
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    def delete(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)

    def read_json(self, name: str) -> dict[str, Any] | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None

    def gdal_location(self, name: str) -> tuple[str, dict[str, str]]:
        return str(self.root / name), {}

    @contextmanager
    def errors_named(self) -> Iterator[None]:
        """A folder that cannot be written (a file in its place, no permission) becomes `PublishError`: no
        retry fixes it. Other failures (a full disk, a failing device) pass on."""
        try:
            yield
        except UNWRITABLE_FOLDER_ERRORS as error:
            raise PublishError(
                f"cannot publish to {self.location}: {error.strerror}: {error.filename}; "
                "make output_dir a folder this process can write to"
            ) from None


class BucketMonth(MonthDestination):
    """The month folder below an `S3Bucket` block's `bucket_folder`, reached with the block's credentials.

    An S3 error no retry fixes (no bucket, no access, bad keys) becomes a one-line `PublishError`; a
    store that does not answer (connection refused, timed out) a one-line `StoreUnreachable`, which
    the calling task retries; others pass on, to be retried by the calling task.
    """

    def __init__(self, bucket_block: S3Bucket, aoi: str, month: str) -> None:
        super().__init__(aoi, month)
        self.block = bucket_block
        self.bucket = bucket_block.bucket_name

    @property
    def prefix(self) -> str:
        """The folder's whole key, `bucket_folder` included.

        Whole keys: the block's `copy_object` leaves them as they are, where a key relative to
        `bucket_folder` whose first part equals it (an AOI named like the folder) is not prefixed.
        """
        return "/".join(part.strip("/") for part in (self.block.bucket_folder, self.folder) if part.strip("/"))

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put(self, files: Mapping[str, Path | Published], replacing: str | None = None) -> None:
        if replacing is not None:
            self.delete(replacing)
        with self.errors_named():
            for name, source in files.items():
                if isinstance(source, Published):
                    self.block.copy_object(f"{self.prefix}/{source.name}", f"{self.prefix}/{name}")
                else:
                    # upload_from_path always puts the block's bucket_folder in front of the key it is given
                    self.block.upload_from_path(source, f"{self.folder}/{name}", ExtraArgs={"ContentType": content_type(source)})

    def remove_below(self, subfolder: str, keep: str | None = None) -> None:
        client = self.block.credentials.get_s3_client()
        kept_prefix = f"{self.prefix}/{subfolder}/{keep}/" if keep else None
        with self.errors_named():
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/{subfolder}/"):
                doomed = [{"Key": entry["Key"]} for entry in page.get("Contents", []) if not (kept_prefix and entry["Key"].startswith(kept_prefix))]
                if doomed:
                    client.delete_objects(Bucket=self.bucket, Delete={"Objects": doomed})

    def exists(self, name: str) -> bool:
        with self.errors_named():
            try:
                self.block.credentials.get_s3_client().head_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")
            except ClientError as error:
                if s3_error_code(error) in NOT_FOUND_CODES:
                    return False
                raise
        return True

    def delete(self, name: str) -> None:
        with self.errors_named():
            self.block.credentials.get_s3_client().delete_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")

    def read_json(self, name: str) -> dict[str, Any] | None:
        with self.errors_named():
            try:
                response = self.block.credentials.get_s3_client().get_object(Bucket=self.bucket, Key=f"{self.prefix}/{name}")
            except ClientError as error:
                if s3_error_code(error) in NOT_FOUND_CODES:
                    return None
                raise
        return json.loads(response["Body"].read())

    def gdal_location(self, name: str) -> tuple[str, dict[str, str]]:
        """A bucket product is read with the block's own credentials and endpoint, not the process's."""
        credentials: AwsCredentials = self.block.credentials  # type: ignore[assignment]  # blocks.register saves these
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
        folder_path = f"/vsis3/{self.bucket}/{self.prefix}"
        # Products are replaced by re-runs: never serve what this process cached of an earlier version.
        options["CPL_VSIL_CURL_NON_CACHED"] = folder_path
        return f"{folder_path}/{name}", options

    @contextmanager
    def errors_named(self) -> Iterator[None]:
        """An S3 refusal no retry fixes becomes `PublishError`, a store that did not answer (to boto3 or to
        GDAL) `StoreUnreachable`; other failures pass on."""
        try:
            yield
        except (ClientError, S3UploadFailedError, BotoCoreError) as error:
            if unanswered := next((link for link in error_chain(error) if isinstance(link, NO_ANSWER_ERRORS)), None):
                raise self._unreachable(first_line(unanswered)) from error
            code = s3_error_code(error)
            if code not in PERMANENT_S3_ERRORS:
                raise
            raise PublishError(f"cannot publish to {self.location}: {code}, {PERMANENT_S3_ERRORS[code]}") from None
        except RasterioError as error:
            if not GDAL_NO_ANSWER.search(str(error)):
                raise
            raise self._unreachable(first_line(error)) from error

    def _unreachable(self, cause: str) -> StoreUnreachable:
        endpoint = self.block.credentials.aws_client_parameters.endpoint_url or "AWS S3"
        return StoreUnreachable(
            f"the products store did not answer for {self.location} at {endpoint} ({cause}); "
            "check that it is up and the s3_block's endpoint_url, then re-run: built tiles are kept"
        )


def month_destination(bucket_block: S3Bucket | None, aoi: str, month: str, output_dir: Path | None = None) -> MonthDestination:
    """The month folder of `aoi` and `month` ('YYYY-MM') in the block's bucket, else below `output_dir`."""
    if bucket_block is not None:
        return BucketMonth(bucket_block, aoi, month)
    if output_dir is None:
        raise InvalidSettings("products have nowhere to go: name an S3 block (s3_block) or set output_dir")
    return LocalMonth(output_dir, aoi, month)


def month_folder(aoi: str, month: str) -> str:
    """'{aoi}/{YYYY}/{MM}', the folder of one AOI's products for one month."""
    if not AOI_NAME_PATTERN.match(aoi):
        raise InvalidSettings(f"AOI name {aoi!r} is not usable in a path; use letters, digits, '_' and '-'")
    period = Month.parse(month)
    return f"{aoi}/{period.year:04d}/{period.month:02d}"


def check_month_folder_owner(destination: MonthDestination, aoi_digest: str) -> None:
    """Raise `OutputCollision` when the month folder holds the metadata.json of another AOI.

    `aoi_digest` is this run's AOI identity (`tasks.geometry.aoi.aoi_digest`). A permanent S3 error (no
    bucket, no access) raises `PublishError` here, before any work is done.
    """
    document = destination.read_json(ProductNames.for_run(destination.aoi, Month.parse(destination.month)).metadata)
    owner = (document or {}).get("aoi", {})
    if document is not None and owner.get("digest") != aoi_digest:
        raise OutputCollision(
            f"{destination.location} holds the products of another AOI ({owner.get('source')}); give this AOI its own "
            "aoi_name, or delete that folder to replace its products"
        )


def content_type(path: Path) -> str:
    """The Content-Type an object gets: COG for GeoTIFFs, GeoJSON for the STAC Item."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return COG_CONTENT_TYPE
    if suffix in (".json", ".geojson"):
        return ITEM_CONTENT_TYPE
    return mimetypes.guess_type(path.name)[0] or DEFAULT_CONTENT_TYPE
