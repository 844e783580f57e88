"""A workspace: a local directory or an `s3://` prefix holding intermediate and final files.

Every write is atomic: the file is made under a temporary local name and only then renamed into
place (local) or put as one object (S3), so a killed run never leaves a half-written file that a
re-run would take as finished. S3 is reached through boto3's default chain, so `AWS_ENDPOINT_URL`
selects an S3-compatible store.
"""

import hashlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from tasks.storage.gdal_env import gdal_path

__all__ = [
    "DIGEST_CHARS",
    "PARTIAL_PREFIX",
    "Workspace",
    "content_digest",
    "partial_file",
    "partial_prefix",
    "remove_abandoned_partials",
]

DIGEST_CHARS = 12
"""Hex characters of a content digest: what names content-addressed files and folders."""


def content_digest(*parts: object) -> str:
    """A short digest of JSON-encodable `parts` (in the order given, dicts in their own key order)."""
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:DIGEST_CHARS]

S3_SCHEME = "s3://"
PARTIAL_PREFIX = ".partial-"
"""Files being written are named `.partial-<host>-<pid>-<random>`: a later run can tell whose they were."""
FILE_MODE = 0o644
"""Permissions of committed local files: readable by all (a shared output folder, a web server)."""


class Workspace:
    """Files under one root: `Workspace("/data/ws")` or `Workspace("s3://bucket/prefix")`."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    def __repr__(self) -> str:
        return f"Workspace({self.root!r})"

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (Workspace, (self.root,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workspace) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    @property
    def is_s3(self) -> bool:
        return self.root.startswith(S3_SCHEME)

    def uri(self, name: str) -> str:
        """The full URI (or local path) of `name` under the root."""
        return f"{self.root}/{name}"

    def gdal_path(self, name: str) -> str:
        """The path GDAL opens for `name`."""
        return gdal_path(self.uri(name))

    @cached_property
    def _s3(self) -> Any:
        import boto3

        return boto3.client("s3")

    def _bucket_key(self, name: str) -> tuple[str, str]:
        bucket, _, key = self.uri(name).removeprefix(S3_SCHEME).partition("/")
        return bucket, key

    def exists(self, name: str) -> bool:
        if not self.is_s3:
            return Path(self.uri(name)).is_file()
        from botocore.exceptions import ClientError

        from tasks.core.retry import NOT_FOUND_CODES, s3_error_code

        bucket, key = self._bucket_key(name)
        try:
            self._s3.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if s3_error_code(error) in NOT_FOUND_CODES:
                return False
            raise
        return True

    @contextmanager
    def staged(self, name: str) -> Iterator[Path]:
        """Yield a local temporary path; on success it becomes `name`, on error it is removed."""
        staged_path = partial_file(None if self.is_s3 else Path(self.uri(name)).parent, Path(name).suffix)
        try:
            yield staged_path
            self._commit(staged_path, name)
        finally:
            staged_path.unlink(missing_ok=True)

    def _commit(self, staged_path: Path, name: str) -> None:
        if self.is_s3:
            bucket, key = self._bucket_key(name)
            self._s3.upload_file(str(staged_path), bucket, key)
        else:
            os.replace(staged_path, self.uri(name))

    def write_bytes(self, name: str, payload: bytes) -> None:
        with self.staged(name) as staged_path:
            staged_path.write_bytes(payload)

    def read_bytes(self, name: str) -> bytes:
        if not self.is_s3:
            return Path(self.uri(name)).read_bytes()
        bucket, key = self._bucket_key(name)
        return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    def copy_from(self, local_path: Path, name: str) -> None:
        """Put a finished local file under `name`, atomically."""
        with self.staged(name) as staged_path:
            shutil.copyfile(local_path, staged_path)


def partial_prefix(host: str | None = None, pid: int | None = None) -> str:
    """The name prefix of the files in the making of process `pid` on `host` (default: this process's):
    `.partial-<host>-<pid>-`, the host's own '-' written '_', so the first '-' after it ends it and the
    files of hosts `node` and `node-2` are told apart."""
    host_label = (socket.gethostname() if host is None else host).replace("-", "_")
    return f"{PARTIAL_PREFIX}{host_label}-{os.getpid() if pid is None else pid}-"


def partial_file(folder: Path | None, suffix: str) -> Path:
    """A new empty file in `folder` (made if needed; None: the system temp dir) named as this process's file in
    the making (`partial_prefix`), readable by all as committed files are."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=partial_prefix(), suffix=suffix, dir=folder)
    os.close(handle)
    path = Path(temporary)
    path.chmod(FILE_MODE)  # mkstemp made it private (0600)
    return path


def _writer_is_gone(file_name: str) -> bool:
    """Whether the process of this host that wrote a `.partial-` file no longer runs."""
    after_host = file_name.removeprefix(PARTIAL_PREFIX).partition("-")[2]
    pid_text = after_host.partition("-")[0]
    if not pid_text.isdigit() or not file_name.startswith(partial_prefix(pid=int(pid_text))):
        return False  # another host's file, or an older naming: its writer cannot be checked from here
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def remove_abandoned_partials(folder: Path, recursive: bool = True) -> list[Path]:
    """Delete the `.partial-` files and folders in `folder` (and below it when `recursive`) whose
    writing process on this host is gone.

    A killed run leaves them; a running one's files are kept. Returns the deleted paths.
    """
    pattern = f"{'**/' if recursive else ''}{PARTIAL_PREFIX}*"
    abandoned = [path for path in folder.glob(pattern) if _writer_is_gone(path.name)]
    for path in abandoned:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return abandoned
