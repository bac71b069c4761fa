"""Model sources: where the files of a model registered with a `source` come from, and how they reach a backend.

A source is a model directory in Triton's layout: `config.pbtxt` at the top, version folders `1/`, `2/`, ...
below it, other files (labels, ...) beside them.

- `file:///abs/dir`: a directory on the gateway's host.
- `s3://bucket/prefix`: the objects under `prefix/` in an S3 bucket, or in an S3-compatible store (MinIO, ...),
  read with boto3 and its usual settings: credentials from the environment, a profile (`AWS_PROFILE`), the
  instance's role; the endpoint from `--s3-endpoint-url`, or boto3's own `AWS_ENDPOINT_URL` /
  `AWS_ENDPOINT_URL_S3`. boto3 is synchronous: every call runs in a worker thread (`asyncio.to_thread`).

A source's *identity* is a digest of its listing: every file's path, size and version tag (the S3 ETag, or the
file's mtime in nanoseconds). A changed file, a new version folder or a removed one make a new identity, so the
disk cache (`adapters.model_cache`) keys its entries by it, and the Triton adapter puts it in the model's config
so that Triton swaps the model when it changes (`adapters.triton_config`).

`ModelSources` is the per-process service the Triton adapters share: list a source, and hand out a model's
files from the disk cache, downloading them once (only the version folders Triton would load). TF Serving reads
sources itself (`adapters.tfserving.TFServingAdapter.base_path`) and does not use this.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import stat
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import unquote

from adapters.model_cache import CacheError, ModelCache, Reserve
from adapters.triton_config import ModelConfigError, parse_config, versions_to_send

log = logging.getLogger("modelyard.sources")

CONFIG_FILE = "config.pbtxt"
_CHUNK = 1 << 20


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "modelyard", "models")


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """How this gateway reads model sources (built from flags in `gateway.cli`)."""

    cache_dir: str = field(default_factory=default_cache_dir)
    cache_bytes: int = 10 * 1024**3  # the disk cache's bound: the sum of its files' sizes
    s3_endpoint_url: str | None = None  # None: boto3's own (AWS_ENDPOINT_URL[_S3], or AWS)
    triton_upload_max_bytes: int = 256 * 1024**2  # the largest model sent to Triton with a load call
    poll_interval: float = 0.0  # seconds between looks for changed sources; 0: no polling


class SourceError(Exception):
    """A model's files could not be read from its source. The message says which source, why, and what to do."""


@dataclass(frozen=True, slots=True)
class SourceFile:
    path: str  # relative to the model directory, '/'-separated
    size: int
    tag: str  # version tag: the S3 ETag, or the file's mtime (ns)


@dataclass(frozen=True, slots=True)
class Listing:
    uri: str
    files: tuple[SourceFile, ...]

    def identity(self) -> str:
        """A digest of the source and every file's path, size and version tag."""
        h = hashlib.sha256(self.uri.encode())
        for f in sorted(self.files, key=lambda f: f.path):
            h.update(f"\0{f.path}\0{f.size}\0{f.tag}".encode())
        return h.hexdigest()[:32]

    def get(self, path: str) -> SourceFile | None:
        return next((f for f in self.files if f.path == path), None)


class Source(Protocol):
    """One model directory. Every method blocks: call them through `asyncio.to_thread`."""

    uri: str

    def list(self) -> Listing: ...

    def read(self, f: SourceFile) -> bytes: ...

    def download(self, f: SourceFile, dest: Path) -> None: ...


def _check_relative(uri: str, path: str) -> str:
    parts = PurePosixPath(path).parts
    if not parts or any(p in ("..", ".") for p in parts) or path.startswith("/"):
        raise SourceError(f"source {uri}: refusing the file name {path!r} (not a plain relative path)")
    return path


class FileSource:
    """`file:///abs/dir`: a directory the gateway can read."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.root = Path(unquote(uri[len("file://") :]))

    def list(self) -> Listing:
        try:
            st = self.root.stat()
        except FileNotFoundError:
            raise SourceError(f"source {self.uri}: {self.root} does not exist on the gateway's host") from None
        except OSError as exc:
            raise SourceError(f"source {self.uri}: cannot read {self.root}: {exc.strerror or exc}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"source {self.uri}: {self.root} is not a directory")
        files: list[SourceFile] = []

        def fail(exc: OSError) -> None:
            raise SourceError(f"source {self.uri}: cannot read {exc.filename}: {exc.strerror or exc}")

        for dirpath, _dirs, names in os.walk(self.root, onerror=fail):
            for name in names:
                full = Path(dirpath) / name
                try:
                    fst = full.stat()
                except OSError as exc:
                    raise SourceError(f"source {self.uri}: cannot read {full}: {exc.strerror or exc}") from None
                if not stat.S_ISREG(fst.st_mode):
                    continue
                rel = full.relative_to(self.root).as_posix()
                files.append(SourceFile(rel, fst.st_size, str(fst.st_mtime_ns)))
        if not files:
            raise SourceError(f"source {self.uri}: {self.root} holds no files")
        return Listing(self.uri, tuple(files))

    def _path(self, f: SourceFile) -> Path:
        return self.root / _check_relative(self.uri, f.path)

    def _check_unchanged(self, path: Path, f: SourceFile) -> None:
        st = path.stat()
        if st.st_size != f.size or str(st.st_mtime_ns) != f.tag:
            raise SourceError(f"source {self.uri}: {f.path} changed while it was being read; try again")

    def read(self, f: SourceFile) -> bytes:
        path = self._path(f)
        try:
            data = path.read_bytes()
            self._check_unchanged(path, f)
        except OSError as exc:
            raise SourceError(f"source {self.uri}: cannot read {path}: {exc.strerror or exc}") from None
        return data

    def download(self, f: SourceFile, dest: Path) -> None:
        path = self._path(f)
        try:
            shutil.copyfile(path, dest)
            self._check_unchanged(path, f)
        except OSError as exc:
            raise SourceError(f"source {self.uri}: cannot read {path}: {exc.strerror or exc}") from None


# S3 error codes that mean the gateway's credentials are wrong or not allowed.
_CREDENTIAL_CODES = {
    "InvalidAccessKeyId": "the access key id is not known to the store",
    "SignatureDoesNotMatch": "the secret access key does not match the access key id",
    "AccessDenied": "access denied",
    "ExpiredToken": "the session token has expired",
    "InvalidToken": "the session token is not valid",
    "AllAccessDisabled": "access to the bucket is disabled",
}


class S3Access:
    """One boto3 S3 client per process, created at first use (boto3 clients are thread-safe; sessions are not)."""

    def __init__(self, endpoint_url: str | None = None) -> None:
        self.endpoint_url = endpoint_url
        self._client: Any = None
        self._lock = threading.Lock()

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    max_pool_connections=16,
                )
                session = boto3.session.Session()
                self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
            return self._client

    def where(self) -> str:
        """The endpoint requests go to, for error messages."""
        try:
            return str(self.client().meta.endpoint_url)
        except Exception:
            return self.endpoint_url or "the default AWS endpoint"


class S3Source:
    """`s3://bucket/prefix`: the objects under `prefix/`."""

    def __init__(self, uri: str, access: S3Access) -> None:
        self.uri = uri
        rest = uri[len("s3://") :]
        self.bucket, _, prefix = rest.partition("/")
        self.prefix = prefix.strip("/")
        self.access = access

    def _key(self, path: str) -> str:
        return f"{self.prefix}/{path}" if self.prefix else path

    def _explain(self, exc: Exception, what: str) -> SourceError:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        where = f"source {self.uri}"
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            message = str(err.get("Message", ""))
            if code == "NoSuchBucket":
                return SourceError(
                    f"{where}: bucket {self.bucket!r} does not exist (S3 NoSuchBucket at {self.access.where()})"
                )
            if code == "NoSuchKey":
                return SourceError(f"{where}: {what} is gone (S3 NoSuchKey); was the model deleted?")
            if code in ("PreconditionFailed", "412"):
                return SourceError(f"{where}: {what} changed while it was being downloaded; try again")
            if code in _CREDENTIAL_CODES or code == "403":
                why = _CREDENTIAL_CODES.get(code, code)
                return SourceError(
                    f"{where}: the store refused the gateway's AWS credentials for {what}: {why} (S3 {code}: "
                    f"{message}); check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE of the gateway"
                )
            return SourceError(f"{where}: S3 refused {what}: {code}: {message}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return SourceError(
                f"{where}: the gateway has no usable AWS credentials ({exc}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, in the gateway's environment"
            )
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ReadTimeoutError):
            return SourceError(f"{where}: cannot reach the S3 endpoint {self.access.where()}: {exc}")
        if isinstance(exc, BotoCoreError):
            return SourceError(f"{where}: reading {what} failed: {exc}")
        return SourceError(f"{where}: reading {what} failed: {type(exc).__name__}: {exc}")

    def list(self) -> Listing:
        prefix = f"{self.prefix}/" if self.prefix else ""
        files: list[SourceFile] = []
        try:
            pages = self.access.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    key = str(obj["Key"])
                    if key.endswith("/"):  # a "folder" marker object
                        continue
                    files.append(SourceFile(key[len(prefix) :], int(obj["Size"]), str(obj.get("ETag", ""))))
        except Exception as exc:
            raise self._explain(exc, f"the listing of s3://{self.bucket}/{prefix}") from None
        if not files:
            raise SourceError(f"source {self.uri}: no objects under s3://{self.bucket}/{prefix} (is the prefix right?)")
        return Listing(self.uri, tuple(files))

    def _get(self, f: SourceFile) -> Any:
        key = self._key(_check_relative(self.uri, f.path))
        kwargs: dict[str, str] = {"Bucket": self.bucket, "Key": key}
        if f.tag:
            kwargs["IfMatch"] = f.tag  # the version listed, or a clear error: never a mix of two versions
        return self.access.client().get_object(**kwargs)["Body"]

    def read(self, f: SourceFile) -> bytes:
        try:
            data: bytes = self._get(f).read()
        except Exception as exc:
            raise self._explain(exc, f"s3://{self.bucket}/{self._key(f.path)}") from None
        return data

    def download(self, f: SourceFile, dest: Path) -> None:
        try:
            body = self._get(f)
            with open(dest, "wb") as out:
                for chunk in body.iter_chunks(_CHUNK):
                    out.write(chunk)
        except OSError as exc:
            raise SourceError(f"source {self.uri}: cannot write the cache file {dest}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise self._explain(exc, f"s3://{self.bucket}/{self._key(f.path)}") from None
        if dest.stat().st_size != f.size:
            raise SourceError(f"source {self.uri}: {f.path} arrived with {dest.stat().st_size} bytes, {f.size} listed")


def open_source(uri: str, s3: S3Access) -> Source:
    if uri.startswith("file://"):
        return FileSource(uri)
    if uri.startswith("s3://"):
        return S3Source(uri, s3)
    raise SourceError(f"source {uri!r}: only file:///abs/dir and s3://bucket/prefix are supported")


class ModelTooLarge(SourceError):
    """The model's files are over the upload bound."""


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """A model's files in the disk cache, as Triton gets them: the parsed config and the files to send
    (config.pbtxt excluded: it goes as `parameters.config`). Valid inside `ModelSources.files()` only."""

    uri: str
    identity: str
    config: Any  # inference.ModelConfig
    files: Sequence[tuple[str, Path, int]]  # (path relative to the model directory, file in the cache, size)

    @property
    def size(self) -> int:
        return sum(size for _, _, size in self.files)


def _version_dir(path: str) -> int | None:
    top, sep, _ = path.partition("/")
    return int(top) if sep and top.isdigit() else None


class ModelSources:
    """The sources and the disk cache of one gateway process, shared by its Triton adapters."""

    def __init__(
        self, settings: SourceSettings, *, s3: S3Access | None = None, cache: ModelCache | None = None
    ) -> None:
        self.settings = settings
        self.s3 = s3 or S3Access(settings.s3_endpoint_url)
        self.cache = cache or ModelCache(Path(settings.cache_dir), settings.cache_bytes)
        self.downloads = 0  # files downloaded from sources (for metrics and tests)
        self.downloaded_bytes = 0

    def source(self, uri: str) -> Source:
        return open_source(uri, self.s3)

    async def listing(self, uri: str) -> Listing:
        return await asyncio.to_thread(self.source(uri).list)

    @contextlib.asynccontextmanager
    async def files(self, uri: str, max_bytes: int, *, listing: Listing | None = None) -> AsyncIterator[ModelFiles]:
        """The model's files, from the disk cache (downloaded on a miss), held in the cache while the body runs.
        `listing`: the source's, if the caller has just read it. Raises `SourceError` (`ModelTooLarge` over
        `max_bytes`)."""
        src = self.source(uri)
        if listing is None:
            listing = await asyncio.to_thread(src.list)
        if listing.get(CONFIG_FILE) is None:
            raise SourceError(
                f"source {uri}: no {CONFIG_FILE} at its top level; a Triton model directory needs one "
                f"(found: {', '.join(sorted(f.path for f in listing.files)[:8])})"
            )
        identity = listing.identity()

        async def fill(dest: Path, reserve: Reserve) -> None:
            await self._fill(src, listing, max_bytes, dest, reserve)

        try:
            async with self.cache.use(identity, fill, label=uri) as root:
                yield await asyncio.to_thread(self._read_entry, uri, identity, root, max_bytes)
        except CacheError as exc:
            raise SourceError(f"source {uri}: {exc}") from None

    async def _fill(self, src: Source, listing: Listing, max_bytes: int, dest: Path, reserve: Reserve) -> None:
        config_file = listing.get(CONFIG_FILE)
        assert config_file is not None
        config_text = await asyncio.to_thread(src.read, config_file)
        config = _parse(src.uri, config_text)
        versions = {v for f in listing.files if (v := _version_dir(f.path)) is not None}
        chosen = set(versions_to_send(config, versions))
        if not chosen:
            raise SourceError(
                f"source {src.uri}: no version folder to load (found {sorted(versions) or 'none'}; "
                "Triton needs numbered folders such as 1/ beside config.pbtxt, matching the config's version_policy)"
            )
        wanted = [f for f in listing.files if (v := _version_dir(f.path)) is None or v in chosen]
        total = sum(f.size for f in wanted if f.path != CONFIG_FILE)
        _check_size(src.uri, total, max_bytes)
        await reserve(sum(f.size for f in wanted))
        for f in wanted:
            target = dest / f.path
            await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
            if f is config_file:
                await asyncio.to_thread(target.write_bytes, config_text)
            else:
                await asyncio.to_thread(src.download, f, target)
                self.downloads += 1
                self.downloaded_bytes += f.size
        log.info("fetched %s (%d files, %d bytes, versions %s)", src.uri, len(wanted), total, sorted(chosen))

    def _read_entry(self, uri: str, identity: str, root: Path, max_bytes: int) -> ModelFiles:
        config = _parse(uri, (root / CONFIG_FILE).read_bytes())
        files = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            rel = path.relative_to(root).as_posix()
            if rel != CONFIG_FILE:
                files.append((rel, path, path.stat().st_size))
        model = ModelFiles(uri, identity, config, files)
        _check_size(uri, model.size, max_bytes)  # the bound may have been lowered since the entry was made
        return model


def _parse(uri: str, data: bytes) -> Any:
    try:
        return parse_config(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise SourceError(f"source {uri}: {CONFIG_FILE} is not UTF-8 text") from None
    except ModelConfigError as exc:
        raise SourceError(f"source {uri}: {exc}") from None


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ModelTooLarge(
            f"source {uri}: the model's files are {size} bytes, over the {max_bytes} bytes a load may send to "
            "Triton (--triton-upload-max-bytes); raise the bound or put the model in Triton's own repository "
            "(source null)"
        )
