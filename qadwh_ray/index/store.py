"""Versioned index layout on a local path or ``s3://`` prefix (docs/architecture.md, 'The index').

Layout under an index root::

    <root>/CURRENT                               pointer: {"version", "manifest_sha256", "published_at"}
    <root>/versions/<version>/manifest.json      a published (complete, verified) version
    <root>/versions/<version>/shard-00000.parquet
    <root>/_staging/<version>/...                a build in progress (or one that failed its checks)

Rules that make a crashed or concurrent build invisible:

- a build writes only under ``_staging/<version>/``; readers never look there;
- :meth:`IndexStore.publish` verifies every shard of the staged version
  (size, SHA-256, row count, schema), moves it to ``versions/<version>/``
  (one directory rename locally; server-side copies on S3 with the manifest
  copied last, so a version directory without ``manifest.json`` is an
  interrupted copy and is ignored), verifies again, and only then writes the
  ``CURRENT`` pointer: the single small object whose replacement switches
  readers to the new version;
- :meth:`IndexStore.cleanup` keeps the newest ``keep`` versions and never
  deletes the current one; abandoned staging directories and interrupted
  copies are removed once nothing has been written to them for a while.

Every byte goes through :mod:`qadwh_ray.storage`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import secrets
import time
from dataclasses import dataclass

import pyarrow.fs as pafs

from qadwh_ray import storage
from qadwh_ray.index.format import (
    MANIFEST_NAME,
    IndexFormatError,
    IndexIntegrityError,
    Manifest,
    check_shard_bytes,
    validate_version_name,
)

__all__ = [
    "POINTER_NAME",
    "VERSIONS_DIR",
    "STAGING_DIR",
    "FAILED_NAME",
    "Pointer",
    "IndexStore",
    "NoCurrentVersionError",
    "VersionNotFoundError",
]

POINTER_NAME = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_DIR = "_staging"
FAILED_NAME = "FAILED.json"
_POINTER_FORMAT = "qadwh-index-pointer/1"


class NoCurrentVersionError(FileNotFoundError):
    """The index root has no published version (no ``CURRENT`` pointer)."""


class VersionNotFoundError(FileNotFoundError):
    """A named version does not exist (or never finished publishing)."""


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def utc_iso(t: _dt.datetime | None = None) -> str:
    return (t or _utcnow()).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Pointer:
    version: str
    manifest_sha256: str
    published_at: str

    def to_json(self) -> bytes:
        return (
            json.dumps(
                {"format": _POINTER_FORMAT, "version": self.version, "manifest_sha256": self.manifest_sha256, "published_at": self.published_at}
            )
            + "\n"
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> "Pointer":
        try:
            d = json.loads(data)
        except ValueError as exc:
            raise IndexIntegrityError(f"index pointer {where} is damaged (not JSON): {exc}") from exc
        if not isinstance(d, dict) or d.get("format") != _POINTER_FORMAT:
            raise IndexFormatError(f"{where} is not a qadwh index pointer")
        try:
            return cls(version=validate_version_name(d["version"]), manifest_sha256=str(d["manifest_sha256"]), published_at=str(d.get("published_at", "")))
        except (KeyError, ValueError) as exc:
            raise IndexFormatError(f"index pointer {where} is invalid: {exc}") from exc


class IndexStore:
    """The versioned index under one root URI (local path or ``s3://``)."""

    def __init__(self, root: str):
        root = os.fspath(root)
        if storage.is_local(root):
            root = storage.local_path(root)
        self.root = root.rstrip("/") or root

    def __repr__(self) -> str:
        return f"IndexStore({self.root!r})"

    # ------------------------------------------------------------- naming

    @property
    def pointer_uri(self) -> str:
        return storage.join(self.root, POINTER_NAME)

    def version_uri(self, version: str) -> str:
        return storage.join(self.root, VERSIONS_DIR, validate_version_name(version))

    def staging_uri(self, version: str) -> str:
        return storage.join(self.root, STAGING_DIR, validate_version_name(version))

    def dir_uri(self, version: str, staged: bool = False) -> str:
        return self.staging_uri(version) if staged else self.version_uri(version)

    def manifest_uri(self, version: str, staged: bool = False) -> str:
        return storage.join(self.dir_uri(version, staged), MANIFEST_NAME)

    def shard_uri(self, version: str, file: str, staged: bool = False) -> str:
        return storage.join(self.dir_uri(version, staged), file)

    @staticmethod
    def new_version_name(now: _dt.datetime | None = None) -> str:
        """``v<UTC time>-<random>``: names sort by creation time and never collide."""
        t = now or _utcnow()
        return f"v{t.strftime('%Y%m%dT%H%M%S')}{t.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"

    # ------------------------------------------------------------- listing

    def _subdirs(self, uri: str) -> list[str]:
        if not storage.is_dir(uri):
            return []
        fs, path = storage.filesystem_and_path(uri)
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=False))
        return sorted(e.base_name for e in entries if e.type == pafs.FileType.Directory and not e.base_name.startswith((".", "_")))

    def list_versions(self) -> list[str]:
        """Published versions (complete: their manifest exists), oldest first by name."""
        out = []
        for name in self._subdirs(storage.join(self.root, VERSIONS_DIR)):
            try:
                if storage.exists(self.manifest_uri(name)):
                    out.append(name)
            except ValueError:
                continue
        return out

    def list_staged(self) -> list[str]:
        """Builds in progress or failed (under ``_staging/``), by name."""
        return self._subdirs(storage.join(self.root, STAGING_DIR))

    def read_pointer(self) -> Pointer | None:
        try:
            data = storage.read_bytes(self.pointer_uri)
        except FileNotFoundError:
            return None
        return Pointer.from_json(data, self.pointer_uri)

    def current_version(self) -> str | None:
        p = self.read_pointer()
        return p.version if p else None

    def resolve(self, version: str | None = None) -> str:
        """The named version (which must be published) or the current one."""
        if version is None or version in ("current", "CURRENT"):
            p = self.read_pointer()
            if p is None:
                raise NoCurrentVersionError(f"no published index version at {self.root} (no {POINTER_NAME} pointer)")
            return p.version
        validate_version_name(version)
        if not storage.exists(self.manifest_uri(version)):
            if storage.exists(self.staging_uri(version)):
                raise VersionNotFoundError(f"index version {version} at {self.root} was never published (it is still staged)")
            raise VersionNotFoundError(f"no index version {version} at {self.root} (versions: {', '.join(self.list_versions()) or 'none'})")
        return version

    # ------------------------------------------------------------- manifests

    def read_manifest_bytes(self, version: str, staged: bool = False) -> bytes:
        uri = self.manifest_uri(version, staged)
        try:
            return storage.read_bytes(uri)
        except FileNotFoundError:
            raise VersionNotFoundError(f"index version {version}: manifest {uri} is missing") from None

    def read_manifest(self, version: str, staged: bool = False, expected_sha256: str | None = None) -> Manifest:
        import hashlib

        uri = self.manifest_uri(version, staged)
        data = self.read_manifest_bytes(version, staged)
        if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
            raise IndexIntegrityError(
                f"manifest {uri} does not match the SHA-256 recorded when version {version} was published: it was damaged or replaced"
            )
        m = Manifest.from_json(data, uri)
        if m.version != version:
            raise IndexFormatError(f"manifest {uri} describes version {m.version!r}, not {version!r}")
        return m

    def write_staged_manifest(self, manifest: Manifest) -> str:
        """Write a build's manifest into its staging directory; returns its SHA-256."""
        import hashlib

        data = manifest.to_json()
        storage.write_bytes(self.manifest_uri(manifest.version, staged=True), data)
        return hashlib.sha256(data).hexdigest()

    # ------------------------------------------------------------- verification

    def verify(self, version: str, staged: bool = False, manifest: Manifest | None = None) -> Manifest:
        """Read every shard back and check it against the manifest (size,
        SHA-256, Parquet schema, row count, sorted unique ids). Raises
        :class:`IndexIntegrityError` naming the first bad shard."""
        m = manifest or self.read_manifest(version, staged)
        for info in m.shards:
            uri = self.shard_uri(version, info.file, staged)
            try:
                data = storage.read_bytes(uri)
            except FileNotFoundError:
                raise IndexIntegrityError(f"shard {info.file} of index version {version} is missing: {uri}") from None
            check_shard_bytes(data, info, m.code_bits, uri)
        return m

    # ------------------------------------------------------------- publishing

    def _move_staged(self, version: str) -> None:
        src = self.staging_uri(version)
        dst = self.version_uri(version)
        if storage.exists(self.manifest_uri(version)):
            raise FileExistsError(f"index version {version} already exists at {dst}")
        if not storage.exists(self.manifest_uri(version, staged=True)):
            raise VersionNotFoundError(f"staged build {version} has no manifest at {src}: it did not finish")
        if storage.exists(storage.join(src, FAILED_NAME)):
            raise IndexIntegrityError(f"staged build {version} failed its checks ({storage.join(src, FAILED_NAME)}); refusing to publish it")
        if storage.is_local(self.root):
            os.makedirs(storage.local_path(storage.join(self.root, VERSIONS_DIR)), exist_ok=True)
            if storage.exists(dst):  # a leftover interrupted copy without a manifest
                storage.delete(dst, recursive=True)
            os.rename(storage.local_path(src), storage.local_path(dst))  # atomic: the whole version appears at once
            try:
                os.rmdir(storage.local_path(storage.join(self.root, STAGING_DIR)))  # only when no other build is staged
            except OSError:
                pass
            return
        fs, _ = storage.filesystem_and_path(src)
        files = storage.list_files(src, recursive=True)
        manifest_src = self.manifest_uri(version, staged=True)
        ordered = [f for f in files if f != manifest_src] + [manifest_src]  # manifest last: completes the version
        for f in ordered:
            rel = f[len(src) :].lstrip("/")
            target = storage.join(dst, rel)
            _, sp = storage.filesystem_and_path(f)
            _, dp = storage.filesystem_and_path(target)
            try:
                fs.copy_file(sp, dp)
            except OSError as exc:
                raise storage.StorageError(f"cannot copy {f} to {target}: {exc}") from exc
        storage.delete(src, recursive=True, missing_ok=True)

    def publish(self, version: str, manifest: Manifest | None = None) -> Pointer:
        """Verify the staged (or already moved) version, make it a published
        version and point ``CURRENT`` at it. The pointer is written last; on any
        failure the current version is untouched."""
        if storage.exists(self.staging_uri(version)) and not storage.exists(self.manifest_uri(version)):
            self.verify(version, staged=True, manifest=manifest)
            self._move_staged(version)
        return self.set_current(version)

    def set_current(self, version: str) -> Pointer:
        """Point ``CURRENT`` at a published version after verifying it (also the rollback)."""
        import hashlib

        version = self.resolve(version)
        data = self.read_manifest_bytes(version)
        m = Manifest.from_json(data, self.manifest_uri(version))
        self.verify(version, manifest=m)
        pointer = Pointer(version=version, manifest_sha256=hashlib.sha256(data).hexdigest(), published_at=utc_iso())
        storage.write_bytes(self.pointer_uri, pointer.to_json())
        return pointer

    def mark_failed(self, version: str, reason: str, details: dict | None = None) -> str:
        """Record why a staged build was not published (it stays for inspection
        until :meth:`cleanup` removes it)."""
        uri = storage.join(self.staging_uri(version), FAILED_NAME)
        storage.write_bytes(uri, (json.dumps({"reason": reason, "details": details or {}, "at": utc_iso()}, indent=1, default=str) + "\n").encode())
        return uri

    def discard_staged(self, version: str) -> None:
        storage.delete(self.staging_uri(version), recursive=True, missing_ok=True)

    # ------------------------------------------------------------- retention

    def _newest_mtime(self, uri: str) -> float | None:
        fs, path = storage.filesystem_and_path(uri)
        try:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
        except OSError:
            return None
        times = [i.mtime.timestamp() for i in infos if i.type == pafs.FileType.File and i.mtime is not None]
        return max(times) if times else None

    def cleanup(self, keep: int = 3, stale_after_s: float = 24 * 3600.0, now: float | None = None) -> dict:
        """Delete published versions beyond the newest ``keep`` (never the
        current one), and staging directories / interrupted copies in which
        nothing was written for ``stale_after_s`` seconds. Returns what was deleted."""
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (the current version is always kept), got {keep}")
        now = time.time() if now is None else now
        deleted: dict[str, list[str]] = {"versions": [], "staging": [], "incomplete": []}
        complete = self.list_versions()
        current = self.current_version()
        for name in complete[: max(0, len(complete) - keep)]:
            if name == self.current_version() or name == current:  # re-read: a concurrent publish may have moved it
                continue
            storage.delete(self.version_uri(name), recursive=True, missing_ok=True)
            deleted["versions"].append(name)
        for name in self._subdirs(storage.join(self.root, VERSIONS_DIR)):
            if name in complete:
                continue
            t = self._newest_mtime(storage.join(self.root, VERSIONS_DIR, name))
            if t is None or now - t > stale_after_s:
                storage.delete(storage.join(self.root, VERSIONS_DIR, name), recursive=True, missing_ok=True)
                deleted["incomplete"].append(name)
        for name in self.list_staged():
            t = self._newest_mtime(self.staging_uri(name))
            if t is None or now - t > stale_after_s:
                self.discard_staged(name)
                deleted["staging"].append(name)
        return deleted
