"""One URI abstraction for every byte the project reads or writes (docs/architecture.md, 'The layers').

A URI is either a local path (the default; ``file://`` is accepted too) or
``s3://bucket/key``. S3 goes through pyarrow's ``S3FileSystem`` so the same
code serves AWS and any S3-compatible store; the endpoint is taken from the
environment, as boto3, Ray Data and Ray Train do:

- ``AWS_ENDPOINT_URL_S3`` (preferred) or ``AWS_ENDPOINT_URL``: endpoint
  override; an ``http://`` endpoint switches the transport to plain HTTP;
- ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default ``us-east-1``);
- ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``;
  without them the AWS SDK's default chain (config files, instance roles) is used.
- ``QADWH_S3_CONNECT_TIMEOUT`` / ``QADWH_S3_REQUEST_TIMEOUT`` (seconds) and
  ``QADWH_S3_MAX_ATTEMPTS`` tune how fast an unreachable store fails.

Errors: a missing file or object raises ``FileNotFoundError`` naming the URI;
any other storage failure raises :class:`StorageError` (an ``OSError``) naming
the URI; unsupported schemes (``gs://``, ``http://`` ...) raise ``ValueError``.

Writes never leave a partial object visible: local writes go to a temporary
file in the same directory followed by ``os.replace``; S3 objects only appear
when their upload completes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import tempfile
from typing import IO, Iterator
from urllib.parse import urlsplit

import pyarrow.fs as pafs

__all__ = [
    "StorageError",
    "is_s3",
    "is_local",
    "local_path",
    "filesystem_and_path",
    "join",
    "read_bytes",
    "write_bytes",
    "create_bytes",
    "exists",
    "is_dir",
    "list_dir",
    "list_files",
    "delete",
    "open_input",
    "open_output",
    "sha256_of",
    "size_of",
    "s3_endpoint",
]

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_CHUNK = 1 << 20


class StorageError(OSError):
    """A storage operation failed for a reason other than a missing object
    (unreachable endpoint, access denied, missing bucket ...)."""


# --------------------------------------------------------------------- URIs


def _scheme(uri: str) -> str:
    if not isinstance(uri, (str, os.PathLike)):
        raise TypeError(f"a URI must be a str or path, got {type(uri).__name__}: {uri!r}")
    m = _SCHEME_RE.match(os.fspath(uri))
    scheme = m.group(1).lower() if m else ""
    if scheme not in ("", "file", "s3"):
        raise ValueError(
            f"unsupported URI scheme {scheme!r} in {os.fspath(uri)!r}: use a local path, file:// or s3://bucket/key"
        )
    return scheme


def is_s3(uri: str) -> bool:
    """True for ``s3://`` URIs; ValueError for unsupported schemes."""
    return _scheme(uri) == "s3"


def is_local(uri: str) -> bool:
    """True for local paths and ``file://`` URIs."""
    return not is_s3(uri)


def local_path(uri: str) -> str:
    """The absolute local path of a local path or ``file://`` URI."""
    uri = os.fspath(uri)
    scheme = _scheme(uri)
    if scheme == "s3":
        raise ValueError(f"not a local path: {uri!r}")
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"file:// URI with a remote host is not supported: {uri!r}")
        path = parts.path
        if not path:
            raise ValueError(f"file:// URI without a path: {uri!r}")
    else:
        path = uri
    if not path:
        raise ValueError("empty path")
    return os.path.abspath(os.path.expanduser(path))


def _s3_path(uri: str) -> str:
    rest = uri[len("s3://"):].strip("/")
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise ValueError(f"s3 URI without a bucket: {uri!r}")
    return rest


def join(uri: str, *parts: str) -> str:
    """Join path components onto a URI with ``/`` (``join("s3://b/idx", "v1", "m.json")``)."""
    uri = os.fspath(uri)
    scheme = _scheme(uri)
    if scheme == "s3":
        _s3_path(uri)  # validates the bucket
    out = uri.rstrip("/") or uri
    for part in parts:
        part = os.fspath(part)
        if not isinstance(part, str):
            raise TypeError(f"path component must be a str, got {part!r}")
        piece = part.strip("/")
        if not piece:
            continue
        if ".." in piece.split("/"):
            raise ValueError(f"'..' is not allowed in a path component: {part!r}")
        out = out + piece if out.endswith("/") else out + "/" + piece
    return out


# --------------------------------------------------------------- filesystems


def _s3_settings() -> tuple:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    scheme = "https"
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"S3 endpoint must be http:// or https://, got {endpoint!r}")
        scheme = parts.scheme
        endpoint = parts.netloc + parts.path.rstrip("/")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"

    def _float(name: str, default: float) -> float:
        raw = env.get(name)
        try:
            return float(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from None

    attempts_raw = env.get("QADWH_S3_MAX_ATTEMPTS") or "3"
    try:
        attempts = int(attempts_raw)
    except ValueError:
        raise ValueError(f"QADWH_S3_MAX_ATTEMPTS must be an integer, got {attempts_raw!r}") from None
    return (
        endpoint,
        scheme,
        region,
        env.get("AWS_ACCESS_KEY_ID") or None,
        env.get("AWS_SECRET_ACCESS_KEY") or None,
        env.get("AWS_SESSION_TOKEN") or None,
        _float("QADWH_S3_CONNECT_TIMEOUT", 5.0),
        _float("QADWH_S3_REQUEST_TIMEOUT", 30.0),
        attempts,
    )


@functools.lru_cache(maxsize=8)
def _s3_filesystem(settings: tuple) -> pafs.S3FileSystem:
    endpoint, scheme, region, key, secret, token, connect_t, request_t, attempts = settings
    kwargs = dict(
        region=region,
        scheme=scheme,
        endpoint_override=endpoint,
        connect_timeout=connect_t,
        request_timeout=request_t,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
    )
    if key and secret:
        kwargs.update(access_key=key, secret_key=secret, session_token=token)
    return pafs.S3FileSystem(**kwargs)


def s3_endpoint() -> str | None:
    """The S3 endpoint override in effect (``None`` for AWS itself)."""
    endpoint, scheme = _s3_settings()[:2]
    return f"{scheme}://{endpoint}" if endpoint else None


_LOCAL_FS = pafs.LocalFileSystem()


def filesystem_and_path(uri: str) -> tuple[pafs.FileSystem, str]:
    """Resolve a URI to a pyarrow filesystem and the path inside it.

    S3 paths are ``bucket/key``; local paths are absolute. The S3 filesystem
    is rebuilt whenever the relevant environment variables change.
    """
    uri = os.fspath(uri)
    if _scheme(uri) == "s3":
        return _s3_filesystem(_s3_settings()), _s3_path(uri)
    return _LOCAL_FS, local_path(uri)


def _wrap_error(uri: str, exc: BaseException) -> BaseException:
    """Turn a low-level error into FileNotFoundError / StorageError naming ``uri``."""
    if isinstance(exc, (FileNotFoundError, StorageError, IsADirectoryError, NotADirectoryError)):
        if str(uri) in str(exc):
            return exc
        if isinstance(exc, FileNotFoundError):
            return FileNotFoundError(f"no such file or object: {uri}")
        return type(exc)(f"{exc} ({uri})")
    msg = str(exc)
    if not is_s3(uri) and str(uri) in msg:
        return exc
    if is_s3(uri):
        low = msg.lower()
        if "nosuchbucket" in low.replace(" ", "") or "bucket does not exist" in low:
            return FileNotFoundError(f"no such bucket for {uri}: {msg}")
        if "curl" in low or "connect" in low or "timeout" in low or "resolve" in low:
            endpoint = s3_endpoint() or "AWS S3"
            return StorageError(f"cannot reach S3 storage at {endpoint} for {uri}: {msg}")
        return StorageError(f"S3 request failed for {uri}: {msg}")
    return StorageError(f"storage operation failed for {uri}: {msg}")


@contextlib.contextmanager
def _errors_named(uri: str) -> Iterator[None]:
    try:
        yield
    except (OSError, PermissionError) as exc:  # ArrowIOError subclasses OSError
        wrapped = _wrap_error(uri, exc)
        if wrapped is exc:
            raise
        raise wrapped from exc


# ------------------------------------------------------------------ reading


def _file_info(uri: str) -> pafs.FileInfo:
    fs, path = filesystem_and_path(uri)
    with _errors_named(uri):
        return fs.get_file_info(path)


def exists(uri: str) -> bool:
    """True when a file/object or a directory/prefix exists at ``uri``."""
    return _file_info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    """True when ``uri`` is a directory (S3: a bucket or a non-empty prefix)."""
    return _file_info(uri).type == pafs.FileType.Directory


def size_of(uri: str) -> int:
    """Size in bytes of the file/object at ``uri``."""
    info = _file_info(uri)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"no such file or object: {uri}")
    if info.type != pafs.FileType.File:
        raise IsADirectoryError(f"is a directory, not a file: {uri}")
    return int(info.size)


def open_input(uri: str):
    """Open a file/object for reading: a seekable binary ``pyarrow.NativeFile``
    (usable with ``with``, PIL, pyarrow.parquet)."""
    fs, path = filesystem_and_path(uri)
    with _errors_named(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such file or object: {uri}")
        if info.type == pafs.FileType.Directory:
            raise IsADirectoryError(f"is a directory, not a file: {uri}")
        return fs.open_input_file(path)


def read_bytes(uri: str) -> bytes:
    """The whole content of a file/object."""
    with open_input(uri) as f, _errors_named(uri):
        return f.read()


def sha256_of(uri: str) -> str:
    """Hex SHA-256 of a file/object, streamed in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open_input(uri) as f, _errors_named(uri):
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def _entry_name(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def list_dir(uri: str) -> list[str]:
    """Sorted names (not paths) of the direct children of a directory/prefix."""
    fs, path = filesystem_and_path(uri)
    with _errors_named(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such directory: {uri}")
        if info.type == pafs.FileType.File:
            raise NotADirectoryError(f"not a directory: {uri}")
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(_entry_name(e.path) for e in entries)


def list_files(uri: str, *, recursive: bool = True, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """Sorted URIs of the files under a directory/prefix (optionally filtered by
    case-insensitive suffix). Hidden files (``.``/``_`` prefixes, e.g. our own
    temporary files) are skipped. A file URI yields itself."""
    uri = os.fspath(uri)
    fs, path = filesystem_and_path(uri)
    with _errors_named(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such file or directory: {uri}")
        if info.type == pafs.FileType.File:
            entries = [info]
        else:
            entries = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    base = uri.rstrip("/")
    out = []
    for e in entries:
        if e.type != pafs.FileType.File:
            continue
        rel = e.path[len(path):].lstrip("/") if e.path != path else ""
        if any(seg.startswith((".", "_")) for seg in rel.split("/") if seg):
            continue
        if suffixes and not e.path.lower().endswith(tuple(s.lower() for s in suffixes)):
            continue
        out.append(join(base, rel) if rel else uri)
    return sorted(out)


# ------------------------------------------------------------------ writing


def _temp_beside(uri: str, path: str) -> tuple[int, str]:
    """A hidden temporary file in ``path``'s directory (created if needed): ``(fd, its path)``."""
    directory = os.path.dirname(path)
    with _errors_named(uri):
        os.makedirs(directory, exist_ok=True)
        return tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)


@contextlib.contextmanager
def open_output(uri: str) -> Iterator[IO[bytes]]:
    """Context manager yielding a writable binary stream; the data becomes
    visible at ``uri`` only when the block exits without an exception.

    Local: a temporary file next to the target, fsync'ed, then ``os.replace``.
    S3: the stream spools to memory/local disk and is uploaded on success
    (pyarrow's S3 streams cannot be aborted, so writing into one directly
    would publish a truncated object if the writer failed half-way).
    """
    uri = os.fspath(uri)
    if is_s3(uri):
        fs, path = filesystem_and_path(uri)
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as spool:
            yield spool
            spool.seek(0)
            with _errors_named(uri):
                with fs.open_output_stream(path) as out:
                    shutil.copyfileobj(spool, out, _CHUNK)
        return
    path = local_path(uri)
    if os.path.isdir(path):
        raise IsADirectoryError(f"is a directory, cannot write a file there: {uri}")
    fd, tmp = _temp_beside(uri, path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` atomically to ``uri`` (replacing any existing content).

    Local: temp file in the same directory + ``os.replace``; S3: one upload,
    which S3 makes visible only once it has completed.
    """
    uri = os.fspath(uri)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"write_bytes needs bytes, got {type(data).__name__} for {uri}")
    if is_s3(uri):
        fs, path = filesystem_and_path(uri)
        with _errors_named(uri):
            with fs.open_output_stream(path) as out:
                out.write(data)
        return
    with open_output(uri) as f:
        f.write(data)


def create_bytes(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` only if nothing is there yet; False when it already exists.

    Atomic against a concurrent creator of the same name, so several writers can
    race for one name and exactly one wins (the update log's sequence numbers).
    Local: a temporary file hard-linked into place (``link`` refuses an existing
    name). S3: a conditional ``PutObject`` (``If-None-Match: *``, through boto3,
    since pyarrow's S3 streams cannot send it).
    """
    uri = os.fspath(uri)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"create_bytes needs bytes, got {type(data).__name__} for {uri}")
    if is_s3(uri):
        return _s3_create(uri, bytes(data))
    path = local_path(uri)
    directory = os.path.dirname(path)
    fd, tmp = _temp_beside(uri, path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new name is durable, not only the bytes
        finally:
            os.close(dfd)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


@functools.lru_cache(maxsize=8)
def _boto3_s3(settings: tuple):
    import boto3
    from botocore.config import Config

    endpoint, scheme, region, key, secret, token, connect_t, request_t, attempts = settings
    kwargs = dict(
        region_name=region,
        config=Config(connect_timeout=connect_t, read_timeout=request_t, retries={"max_attempts": attempts, "mode": "standard"}),
    )
    if endpoint:
        kwargs["endpoint_url"] = f"{scheme}://{endpoint}"
    if key and secret:
        kwargs.update(aws_access_key_id=key, aws_secret_access_key=secret, aws_session_token=token)
    return boto3.client("s3", **kwargs)


def _s3_create(uri: str, data: bytes) -> bool:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = _s3_path(uri).partition("/")
    try:
        _boto3_s3(_s3_settings()).put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        return True
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409"):
            return False
        if code in ("NoSuchBucket", "404"):
            raise FileNotFoundError(f"no such bucket for {uri}: {exc}") from None
        raise StorageError(f"S3 request failed for {uri}: {exc}") from None
    except BotoCoreError as exc:
        raise StorageError(f"cannot reach S3 storage at {s3_endpoint() or 'AWS S3'} for {uri}: {exc}") from None


def delete(uri: str, recursive: bool = False, *, missing_ok: bool = False) -> None:
    """Delete a file/object, or a directory/prefix (``recursive=True`` unless empty)."""
    fs, path = filesystem_and_path(uri)
    with _errors_named(uri):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if missing_ok:
                return
            raise FileNotFoundError(f"no such file or object: {uri}")
        if info.type == pafs.FileType.File:
            fs.delete_file(path)
            return
        if is_s3(uri) and "/" not in path:
            raise ValueError(f"refusing to delete a whole bucket: {uri}")
        if not recursive and fs.get_file_info(pafs.FileSelector(path, recursive=False)):
            raise OSError(f"directory not empty (pass recursive=True to delete it): {uri}")
        fs.delete_dir(path)
