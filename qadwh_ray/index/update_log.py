"""The update log: live changes to an index between two versions, on object storage.

``PUT /v1/items/{id}`` and ``DELETE /v1/items/{id}`` are answered only once
their change is stored here; every replica replays the log on top of the
version it serves, and the next index build folds the log into the new
version and truncates it. Layout beside the versions::

    <root>/log/segments/<first seq, 20 digits>.jsonl   one or more changes, seqs first..last
    <root>/log/images/<sha256>                        image bytes of puts that came with an image
    <root>/log/HEAD                                   {"position": last seq written} (a hint)
    <root>/log/TRUNCATED                              {"position": P}: changes <= P were folded, deleted

Positions: every change has a sequence number (``seq``), 1, 2, 3 ...; a log
*position* is the seq of the last change of a segment (0 = before any change).
The next segment is named after ``position + 1``, so the segments form a
chain that a reader follows with plain GETs (no listing). A writer creates a
segment with :func:`qadwh_ray.storage.create_bytes` (atomic create-if-absent):
of several writers racing for a position exactly one wins, the others re-read
the end of the chain and retry, so sequence numbers never repeat and no
acknowledged change is ever overwritten. ``HEAD`` is rewritten after each
segment to save readers the walk from the start; it may lag (a writer died
between the two writes, or two writers raced), so readers always follow the
chain past it.

A change's code is only meaningful for the model that made it: each put
records the checkpoint (SHA-256) its code came from, and the image when the
client sent one, so a later version built with another model can re-encode
it. Pure storage: no Ray, no search.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Optional

from qadwh_ray import storage

__all__ = ["LogEntry", "UpdateLog", "LogTruncated", "LOG_DIR", "LOG_FORMAT"]

LOG_DIR = "log"
LOG_FORMAT = "qadwh-update-log/1"
_SEGMENTS = "segments"
_IMAGES = "images"
_HEAD = "HEAD"
_TRUNCATED = "TRUNCATED"
_APPEND_ATTEMPTS = 64


class LogTruncated(FileNotFoundError):
    """The changes asked for were folded into a newer index version and deleted."""


@dataclass(frozen=True)
class LogEntry:
    """One change. ``op``: ``"put"`` (``code`` hex, ``labels``, ``checkpoint``, optional
    ``image`` SHA-256) or ``"delete"``."""

    seq: int
    op: str
    id: int
    code: Optional[str] = None
    labels: Optional[list] = None
    checkpoint: Optional[str] = None
    image: Optional[str] = None
    at: str = ""

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None and v != ""}, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str, where: str) -> "LogEntry":
        try:
            d = json.loads(line)
            e = cls(**d)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"damaged update-log entry in {where}: {exc}") from None
        if e.op not in ("put", "delete") or (e.op == "put" and not e.code):
            raise ValueError(f"damaged update-log entry in {where}: {line[:120]!r}")
        return e


def _utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class UpdateLog:
    """The update log of the index at ``root`` (local path or ``s3://``)."""

    def __init__(self, root: str):
        self.root = storage.join(root, LOG_DIR)

    def __repr__(self) -> str:
        return f"UpdateLog({self.root!r})"

    def segment_uri(self, first: int) -> str:
        return storage.join(self.root, _SEGMENTS, f"{int(first):020d}.jsonl")

    def image_uri(self, sha256: str) -> str:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"not an image digest: {sha256[:80]!r}")
        return storage.join(self.root, _IMAGES, sha256)

    # ------------------------------------------------------------ reading
    def _read_position(self, name: str) -> int:
        try:
            d = json.loads(storage.read_bytes(storage.join(self.root, name)))
            return int(d["position"])
        except FileNotFoundError:
            return 0
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"damaged update-log file {storage.join(self.root, name)}: {exc}") from None

    def head_hint(self) -> int:
        """The position ``HEAD`` records (the true end may be further along the chain)."""
        try:
            return self._read_position(_HEAD)
        except ValueError:  # read while being replaced (seen on S3 emulators): walk the chain instead
            return 0

    def truncated_position(self) -> int:
        """Changes at or before this position were folded into a version and deleted."""
        return self._read_position(_TRUNCATED)

    def _segment(self, first: int) -> Optional[list]:
        uri = self.segment_uri(first)
        try:
            data = storage.read_bytes(uri)
        except FileNotFoundError:
            return None
        entries = [LogEntry.from_json(line, uri) for line in data.decode().splitlines() if line.strip()]
        if not entries or entries[0].seq != first or any(b.seq != a.seq + 1 for a, b in zip(entries, entries[1:])):
            raise ValueError(f"damaged update-log segment {uri}: sequence numbers do not run from {first}")
        return entries

    def read(self, after: int, upto: Optional[int] = None) -> tuple[list, int]:
        """Changes after position ``after`` (a segment end) up to position ``upto`` (default:
        the end of the log): ``(entries, position reached)``."""
        position = int(after)
        out: list = []
        while upto is None or position < upto:
            seg = self._segment(position + 1)
            if seg is None:
                break
            out.extend(seg)
            position = seg[-1].seq
        want = self.head_hint() if upto is None else int(upto)
        if position < want:
            cut = self.truncated_position()
            if position < cut:
                raise LogTruncated(
                    f"update log {self.root}: the changes after {after} were folded into a newer index version and deleted (up to {cut})"
                )
            raise ValueError(f"update log {self.root}: no segment starts at {position + 1}, but position {want} was written")
        return out, position

    def end(self, hint: Optional[int] = None) -> int:
        """The position of the last change written (following the chain from ``HEAD``)."""
        start = max(self.head_hint(), self.truncated_position(), int(hint or 0))
        position = start
        while True:
            seg = self._segment(position + 1)
            if seg is None:
                return position
            position = seg[-1].seq

    def read_image(self, sha256: str) -> bytes:
        return storage.read_bytes(self.image_uri(sha256))

    # ------------------------------------------------------------ writing
    def put_image(self, data: bytes) -> str:
        """Store image bytes (content-addressed; a second copy is not written); returns the SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        storage.create_bytes(self.image_uri(sha), data)
        return sha

    def append(self, changes: list, hint: Optional[int] = None) -> list:
        """Store ``changes`` (LogEntry with ``seq`` 0) as one segment at the end of the log;
        returns them with their sequence numbers. Durable when this returns."""
        if not changes:
            return []
        position = self.end(hint)
        for _ in range(_APPEND_ATTEMPTS):
            at = _utc()
            numbered = [
                LogEntry(**{**asdict(c), "seq": position + 1 + j, "at": c.at or at}) for j, c in enumerate(changes)
            ]
            data = ("\n".join(e.to_json() for e in numbered) + "\n").encode()
            if storage.create_bytes(self.segment_uri(position + 1), data):
                last = numbered[-1].seq
                try:
                    storage.write_bytes(storage.join(self.root, _HEAD), json.dumps({"format": LOG_FORMAT, "position": last}).encode())
                except OSError:
                    pass  # only a hint: readers follow the chain past it
                return numbered
            position = self.end(position)  # another writer took this position
        raise RuntimeError(f"update log {self.root}: could not append after {_APPEND_ATTEMPTS} contended attempts")

    def truncate(self, upto: int) -> int:
        """Delete the segments of changes at or before ``upto`` (a segment end, folded into
        a published version). Returns how many segments were deleted."""
        upto = int(upto)
        if upto <= self.truncated_position():
            return 0
        seg_dir = storage.join(self.root, _SEGMENTS)
        try:
            names = storage.list_dir(seg_dir)
        except FileNotFoundError:
            names = []
        firsts = sorted(int(n[:-6]) for n in names if n.endswith(".jsonl") and n[:-6].isdigit() and int(n[:-6]) <= upto)
        if firsts:
            last = self._segment(firsts[-1])
            if last and last[-1].seq > upto:
                raise ValueError(f"update log {self.root}: {upto} is not a segment end (segment {firsts[-1]} runs to {last[-1].seq})")
        storage.write_bytes(storage.join(self.root, _TRUNCATED), json.dumps({"format": LOG_FORMAT, "position": upto}).encode())
        for first in firsts:
            storage.delete(self.segment_uri(first), missing_ok=True)
        return len(firsts)
