"""The index format (docs/architecture.md, 'The index'): Parquet shards + a JSON manifest.

A version of an index is a directory::

    shard-00000.parquet   id int64 · code fixed_size_binary(ceil(nbits/8)) · labels list<int32> · source string
    shard-00001.parquet   ...
    manifest.json         this module's :class:`Manifest`

Shards
    One row per item, ids unique across the whole version and sorted
    ascending inside each shard. ``code`` is the packed binary code, bit order
    little-endian within each byte (``np.packbits(..., bitorder="little")``),
    zero-padded to whole bytes when ``nbits`` is not a multiple of 8 (the
    convention of :mod:`qadwh_ray.core.bits`; the schema metadata and the
    manifest keep the real ``code_bits``).
    ``labels`` lists the item's positive classes (null for an unlabeled
    item); ``source`` says where the image came from (null when the id says it
    all, e.g. the built-in Fashion-MNIST rows). Items are assigned to shards by
    ``splitmix64(id) % num_shards`` so every id has one home shard whatever
    order the database was read in (and an id can be looked up in one shard).

Manifest
    Format version, code bits (the real code length) and bytes, bit order,
    item count, the shard list with row counts, byte sizes and SHA-256, the
    checkpoint the codes came from (URI + SHA-256 + model config), the
    dataset's class names (``class_names[c]`` names class ``c`` of the labels
    and of the model), the sources read, bad rows skipped, creation time,
    build details and the re-index checks that passed, and the update-log
    position folded in (:mod:`qadwh_ray.index.update_log`).

Everything here is pure pyarrow/numpy (no Ray, no storage I/O): the store and
the reader do the I/O and call :func:`check_shard_bytes` to verify a shard.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadwh_ray.core.bits import BIT_ORDER, check_code_length, check_codes, code_bytes

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "BIT_ORDER",
    "MANIFEST_NAME",
    "IndexFormatError",
    "IndexIntegrityError",
    "ShardInfo",
    "Manifest",
    "ShardData",
    "shard_schema",
    "shard_file_name",
    "shard_of_ids",
    "splitmix64",
    "make_shard_table",
    "shard_table_bytes",
    "check_shard_bytes",
    "shard_data_from_table",
    "labels_to_list_array",
    "label_matrix_from_lists",
    "class_names_for",
    "validate_version_name",
]

FORMAT = "qadwh-index"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARDING_SCHEME = "splitmix64-mod"

_META_FORMAT = b"qadwh.index.format"
_META_BITS = b"qadwh.index.code_bits"
_META_BIT_ORDER = b"qadwh.index.bit_order"

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IndexFormatError(ValueError):
    """A manifest or shard does not follow the index format."""


class IndexIntegrityError(IndexFormatError):
    """A shard or manifest is missing, truncated or does not match its checksum."""


def validate_version_name(name: str) -> str:
    """Version names are single path components: letters, digits, ``._-``,
    not starting with ``.``/``_``/``-`` (those are reserved for hidden files)."""
    if not isinstance(name, str) or not _VERSION_RE.match(name) or name in (".", ".."):
        raise ValueError(
            f"invalid index version name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def shard_file_name(i: int) -> str:
    return f"shard-{int(i):05d}.parquet"


# ------------------------------------------------------------------ sharding


def splitmix64(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on int64/uint64 values (vectorised, wraps mod 2^64)."""
    z = np.asarray(values).astype(np.int64, copy=False).view(np.uint64).copy()
    with np.errstate(over="ignore"):
        z += np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return z


def shard_of_ids(ids: np.ndarray, num_shards: int) -> np.ndarray:
    """Home shard of each id: ``splitmix64(id) % num_shards`` (int64)."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return (splitmix64(ids) % np.uint64(num_shards)).astype(np.int64)


# ------------------------------------------------------------------ shards


def shard_schema(nbits: int) -> pa.Schema:
    nbits = check_code_length(nbits)
    return pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("code", pa.binary(code_bytes(nbits)), nullable=False),
            pa.field("labels", pa.list_(pa.int32()), nullable=True),
            pa.field("source", pa.string(), nullable=True),
        ],
        metadata={_META_FORMAT: f"{FORMAT}/{FORMAT_VERSION}".encode(), _META_BITS: str(nbits).encode(), _META_BIT_ORDER: BIT_ORDER.encode()},
    )


def labels_to_list_array(label_matrix: np.ndarray | None, n: int) -> pa.Array:
    """``(n, c)`` 0/1 matrix → ``list<int32>`` of positive classes; an
    all-zero row (or no matrix) becomes null (= unlabeled)."""
    if label_matrix is None:
        return pa.nulls(n, type=pa.list_(pa.int32()))
    m = np.asarray(label_matrix)
    if m.shape[0] != n or m.ndim != 2:
        raise ValueError(f"label matrix must be ({n}, c), got {m.shape}")
    rows, cls = np.nonzero(m)
    counts = np.bincount(rows, minlength=n)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    mask = pa.array(counts == 0) if (counts == 0).any() else None
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(cls.astype(np.int32)), mask=mask)


def label_matrix_from_lists(column: pa.Array | pa.ChunkedArray, num_classes: int) -> np.ndarray:
    """``list<int>`` labels → ``(n, num_classes)`` uint8 0/1 (null rows are all zero)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    out = np.zeros((n, num_classes), dtype=np.uint8)
    if n == 0:
        return out
    import pyarrow.compute as pc

    values = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        bad = int(values[(values < 0) | (values >= num_classes)][0])
        raise IndexFormatError(f"label {bad} outside [0, {num_classes})")
    out[rows, values] = 1
    return out


def make_shard_table(
    ids: np.ndarray,
    codes: np.ndarray,
    labels: pa.Array | np.ndarray | None,
    sources: pa.Array | list | None,
    nbits: int,
) -> pa.Table:
    """A shard table (not sorted here). ``labels``: a ``list<int32>`` array or a
    ``(n, c)`` 0/1 matrix; ``sources``: strings or None."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    codes = check_codes(np.asarray(codes), nbits)
    n = ids.shape[0]
    if codes.shape[0] != n:
        raise ValueError(f"{codes.shape[0]} codes for {n} ids")
    code_arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(code_bytes(nbits)), n, [None, pa.py_buffer(codes.tobytes())])
    if labels is None or isinstance(labels, np.ndarray):
        label_arr = labels_to_list_array(labels, n)
    else:
        label_arr = labels.cast(pa.list_(pa.int32())) if labels.type != pa.list_(pa.int32()) else labels
    if sources is None:
        src_arr = pa.nulls(n, type=pa.string())
    else:
        src_arr = sources if isinstance(sources, (pa.Array, pa.ChunkedArray)) else pa.array(list(sources), type=pa.string())
    return pa.Table.from_arrays([pa.array(ids), code_arr, label_arr, src_arr], schema=shard_schema(nbits))


def shard_table_bytes(table: pa.Table) -> bytes:
    """Serialise a shard table to Parquet bytes (sorted by id first)."""
    ids = table.column("id").to_numpy()
    if ids.size > 1 and not (ids[1:] > ids[:-1]).all():
        table = table.take(pa.array(np.argsort(ids, kind="stable")))
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=1 << 16, compression="zstd")
    return buf.getvalue()


@dataclass
class ShardData:
    """One shard in memory: ids sorted ascending, packed codes, labels, sources."""

    ids: np.ndarray  # (n,) int64
    codes: np.ndarray  # (n, ceil(nbits/8)) uint8
    labels: np.ndarray | None  # (n, c) uint8 0/1, None when the index has no classes
    sources: list | None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def check_shard_bytes(data: bytes, info: "ShardInfo", nbits: int, where: str) -> pa.Table:
    """Verify a shard's bytes against its manifest entry and return its table.

    Checks size, SHA-256, that it parses as Parquet, the schema (code width),
    the row count and that ids are unique and sorted. Raises
    :class:`IndexIntegrityError` naming ``where`` (the shard URI) on any mismatch.
    """
    if info.bytes is not None and len(data) != info.bytes:
        raise IndexIntegrityError(
            f"shard {info.file} at {where} is damaged: {len(data)} bytes, the manifest says {info.bytes} (truncated or replaced)"
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != info.sha256:
        raise IndexIntegrityError(
            f"shard {info.file} at {where} is damaged: SHA-256 {digest} does not match the manifest's {info.sha256}"
        )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # noqa: BLE001 — pyarrow raises several types for a broken file
        raise IndexIntegrityError(f"shard {info.file} at {where} is not readable Parquet: {exc}") from exc
    want = shard_schema(nbits)
    for f in want:
        if f.name not in table.schema.names:
            raise IndexIntegrityError(f"shard {info.file} at {where} lacks the column {f.name!r}")
        if table.schema.field(f.name).type != f.type:
            raise IndexIntegrityError(
                f"shard {info.file} at {where}: column {f.name!r} has type {table.schema.field(f.name).type}, expected {f.type}"
            )
    if table.num_rows != info.rows:
        raise IndexIntegrityError(f"shard {info.file} at {where} holds {table.num_rows} rows, the manifest says {info.rows}")
    ids = table.column("id").to_numpy()
    if ids.size > 1 and not (ids[1:] > ids[:-1]).all():
        raise IndexIntegrityError(f"shard {info.file} at {where}: ids are not unique and sorted ascending")
    return table


def shard_data_from_table(table: pa.Table, nbits: int, num_classes: int | None) -> ShardData:
    nbytes = code_bytes(nbits)
    n = table.num_rows
    ids = np.ascontiguousarray(table.column("id").to_numpy(), dtype=np.int64)
    code_col = table.column("code")
    code_col = code_col.combine_chunks() if isinstance(code_col, pa.ChunkedArray) else code_col
    if n:
        buf = code_col.buffers()[1]
        codes = np.frombuffer(buf, dtype=np.uint8, count=n * nbytes, offset=code_col.offset * nbytes).reshape(n, nbytes).copy()
    else:
        codes = np.zeros((0, nbytes), dtype=np.uint8)
    labels = label_matrix_from_lists(table.column("labels"), num_classes) if num_classes else None
    src = table.column("source")
    sources = None if src.null_count == n else src.to_pylist()
    return ShardData(ids=ids, codes=codes, labels=labels, sources=sources)


# ------------------------------------------------------------------ manifest


def class_names_for(num_classes: int, names: list | None) -> list:
    """The manifest's ``class_names`` for ``num_classes`` classes: the dataset's names,
    and a class the dataset does not name is named by its number."""
    names = [str(n) for n in (names or [])]
    if len(names) > num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes: {', '.join(names)[:200]}")
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"class names must be unique and non-empty, got {names[:20]}")
    return names + [str(c) for c in range(len(names), num_classes)]


def _require(d: dict, key: str, types, where: str):
    if key not in d:
        raise IndexFormatError(f"{where} lacks the field {key!r}")
    v = d[key]
    if (isinstance(v, bool) and types is int) or not isinstance(v, types):
        raise IndexFormatError(f"{where}: field {key!r} has the wrong type ({type(v).__name__}: {v!r})")
    return v


@dataclass
class ShardInfo:
    file: str
    rows: int
    sha256: str
    bytes: int | None = None
    min_id: int | None = None
    max_id: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "shard entry") -> "ShardInfo":
        if not isinstance(d, dict):
            raise IndexFormatError(f"{where} is not an object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IndexFormatError(f"{where} has unknown fields {unknown}")
        file = _require(d, "file", str, where)
        if "/" in file or file.startswith((".", "_")) or not file:
            raise IndexFormatError(f"{where}: shard file name {file!r} must be a plain file name")
        rows = _require(d, "rows", int, where)
        sha = _require(d, "sha256", str, where)
        if not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise IndexFormatError(f"{where}: sha256 {sha!r} is not a hex SHA-256")
        if rows < 0:
            raise IndexFormatError(f"{where}: negative row count {rows}")
        return cls(file=file, rows=rows, sha256=sha, bytes=d.get("bytes"), min_id=d.get("min_id"), max_id=d.get("max_id"))


@dataclass
class Manifest:
    """What a version holds and how it was made (serialised as ``manifest.json``)."""

    version: str
    code_bits: int
    num_items: int
    shards: list[ShardInfo]
    checkpoint: dict  # {"uri", "sha256", "model_config"}
    created_at: str  # ISO-8601 UTC
    num_classes: int | None = None
    class_names: list | None = None  # one per class of the labels / the model, None for an old version
    bit_order: str = BIT_ORDER
    sharding: dict = field(default_factory=lambda: {"scheme": SHARDING_SCHEME})
    sources: list = field(default_factory=list)  # what was read (kind, uri, rows, ...)
    bad_rows: list = field(default_factory=list)  # [{"row", "id", "source", "reason"}] skipped with --skip-bad
    bad_row_count: int = 0
    parent: str | None = None  # the version an incremental build appended to
    build: dict = field(default_factory=dict)  # seconds, options, software versions
    checks: dict = field(default_factory=dict)  # re-index checks that ran (and their figures)
    updates: dict = field(default_factory=dict)  # the update log folded in: {"log_position", "file", "sha256", ...}
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        validate_version_name(self.version)
        check_code_length(self.code_bits)
        if self.class_names is not None:
            if not isinstance(self.class_names, list) or not all(isinstance(c, str) and c for c in self.class_names):
                raise IndexFormatError(f"manifest of {self.version}: class_names must be a list of non-empty strings, got {self.class_names!r}")
            if self.num_classes is not None and len(self.class_names) != self.num_classes:
                raise IndexFormatError(
                    f"manifest of {self.version}: {len(self.class_names)} class names for {self.num_classes} classes"
                )
        if self.bit_order != BIT_ORDER:
            raise IndexFormatError(f"bit order {self.bit_order!r} is not supported (only {BIT_ORDER!r})")
        if sum(s.rows for s in self.shards) != self.num_items:
            raise IndexFormatError(
                f"manifest of {self.version}: shards hold {sum(s.rows for s in self.shards)} rows but num_items is {self.num_items}"
            )
        names = [s.file for s in self.shards]
        if len(set(names)) != len(names):
            raise IndexFormatError(f"manifest of {self.version} lists a shard file twice")
        self.sharding = {**self.sharding, "num_shards": len(self.shards)}

    @property
    def code_bytes(self) -> int:
        return code_bytes(self.code_bits)

    @property
    def log_position(self) -> int:
        """The update-log position this version includes (0: none of the log)."""
        return int((self.updates or {}).get("log_position", 0))

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["shards"] = [s.to_dict() for s in self.shards]
        d["code_bytes"] = self.code_bytes
        return d

    def to_json(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n").encode()

    @classmethod
    def from_dict(cls, d: Any, where: str = "manifest") -> "Manifest":
        if not isinstance(d, dict):
            raise IndexFormatError(f"{where} is not a JSON object")
        if d.get("format") != FORMAT:
            raise IndexFormatError(f"{where} is not a qadwh index manifest (format {d.get('format')!r})")
        if d.get("format_version") != FORMAT_VERSION:
            raise IndexFormatError(
                f"{where} has index format version {d.get('format_version')!r}; this code reads version {FORMAT_VERSION}"
            )
        d = dict(d)
        code_bytes = d.pop("code_bytes", None)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise IndexFormatError(f"{where} has unknown fields {unknown}")
        shards_raw = _require(d, "shards", list, where)
        shards = [ShardInfo.from_dict(s, f"{where} shard #{i}") for i, s in enumerate(shards_raw)]
        for key, types in (("version", str), ("code_bits", int), ("num_items", int), ("checkpoint", dict), ("created_at", str)):
            _require(d, key, types, where)
        d["shards"] = shards
        try:
            m = cls(**d)
        except IndexFormatError:
            raise
        except (TypeError, ValueError) as exc:
            raise IndexFormatError(f"{where}: {exc}") from exc
        if code_bytes is not None and code_bytes != m.code_bytes:
            raise IndexFormatError(f"{where}: code_bytes {code_bytes} does not match code_bits {m.code_bits}")
        return m

    @classmethod
    def from_json(cls, data: bytes | str, where: str = "manifest") -> "Manifest":
        try:
            d = json.loads(data)
        except ValueError as exc:
            raise IndexIntegrityError(f"{where} is not valid JSON (damaged or truncated): {exc}") from exc
        return cls.from_dict(d, where)
