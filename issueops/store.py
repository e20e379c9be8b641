"""The object store, laid out by stage: datasets/<id>/raw/, processed/, models/, evaluations/.

A local directory by default; S3 (or any S3-compatible server) through boto3 when
ISSUEOPS_S3_ENDPOINT / ISSUEOPS_S3_BUCKET are set.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path, PurePosixPath
from typing import Protocol

from issueops.config import Settings
from issueops.errors import ExternalServiceError, InvalidInput, NotFound

_KEY_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


def safe_key(key: str) -> str:
    """A store key made only of plain path segments: no '..', no absolute paths."""
    parts = PurePosixPath(key.strip("/")).parts
    if not parts or any(not _KEY_PART.fullmatch(p) for p in parts):
        raise InvalidInput(f"{key[:80]!r} is not a valid object store key.")
    return "/".join(parts)


class ObjectStore(Protocol):
    def uri(self, key: str) -> str: ...
    def exists(self, key: str) -> bool: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_bytes(self, key: str, data: bytes) -> str: ...
    def list(self, prefix: str) -> list[str]: ...
    def size(self, key: str) -> int: ...

    def upload_dir(self, local: Path, prefix: str) -> str: ...
    def download(self, key: str, dest: Path) -> Path: ...


def download_dir(store: ObjectStore, prefix: str, dest: Path) -> Path:
    """Every object under `prefix` into `dest`, keeping the paths below the prefix."""
    prefix = prefix.strip("/")
    for key in store.list(prefix):
        store.download(key, Path(dest) / key[len(prefix) + 1 :])
    return Path(dest)


class LocalStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"'{key}' is not in the object store ({self.root}).")
        return path.read_bytes()

    def put_bytes(self, key: str, data: bytes) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return str(path)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.exists():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file())

    def upload_dir(self, local: Path, prefix: str) -> str:
        dest = self._path(prefix)
        if Path(local).resolve() != dest.resolve():
            shutil.copytree(local, dest, dirs_exist_ok=True)
        return str(dest)

    def download(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.get_bytes(key))
        return dest


class S3Store:
    def __init__(self, bucket: str, *, endpoint: str | None = None, prefix: str = "", client=None):
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60
            ),
        )

    def _key(self, key: str) -> str:
        key = safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _call(self, what: str, fn, *args, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"{what}: not found in s3://{self.bucket}.") from None
            if code == "NoSuchBucket":
                raise NotFound(f"The bucket '{self.bucket}' does not exist.") from None
            raise ExternalServiceError(f"{what}: S3 refused ({code}).", status=None) from None
        except BotoCoreError as exc:
            raise ExternalServiceError(
                f"{what}: S3 is unreachable ({type(exc).__name__}).", transient=True
            ) from None

    def exists(self, key: str) -> bool:
        try:
            self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
            return True
        except NotFound:
            return False

    def size(self, key: str) -> int:
        head = self._call(key, self.client.head_object, Bucket=self.bucket, Key=self._key(key))
        return int(head["ContentLength"])

    def get_bytes(self, key: str) -> bytes:
        obj = self._call(key, self.client.get_object, Bucket=self.bucket, Key=self._key(key))
        return obj["Body"].read()

    def put_bytes(self, key: str, data: bytes) -> str:
        self._call(key, self.client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        strip = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in self._call(prefix, lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=full))):
            keys += [o["Key"][len(strip) :] for o in page.get("Contents", [])]
        return sorted(keys)

    def upload_dir(self, local: Path, prefix: str) -> str:
        for path in sorted(Path(local).rglob("*")):
            if path.is_file():
                self.put_bytes(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
        return self.uri(prefix)

    def download(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(self.get_bytes(key))
        return dest


def open_store(settings: Settings) -> ObjectStore:
    if settings.s3_bucket:
        return S3Store(settings.s3_bucket, endpoint=settings.s3_endpoint, prefix=settings.s3_prefix)
    return LocalStore(settings.home / "store")
