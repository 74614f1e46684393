"""The index on storage: format (shards + manifest), writer, versioned store, reader.

No Ray here: Serve replicas, evaluation and tests read indexes with plain
pyarrow; only :mod:`qadwh_ray.index_build` (the Ray Data build) imports Ray.
"""

from qadwh_ray.index.format import (
    BIT_ORDER,
    FORMAT_VERSION,
    IndexFormatError,
    IndexIntegrityError,
    Manifest,
    ShardData,
    ShardInfo,
    shard_of_ids,
    shard_schema,
)
from qadwh_ray.index.reader import IndexReader, load_index, load_manifest, open_index
from qadwh_ray.index.store import IndexStore, NoCurrentVersionError, Pointer, VersionNotFoundError
from qadwh_ray.index.writer import checkpoint_record, write_index

__all__ = [
    "BIT_ORDER",
    "FORMAT_VERSION",
    "IndexFormatError",
    "IndexIntegrityError",
    "IndexReader",
    "IndexStore",
    "Manifest",
    "NoCurrentVersionError",
    "Pointer",
    "ShardData",
    "ShardInfo",
    "VersionNotFoundError",
    "checkpoint_record",
    "load_index",
    "load_manifest",
    "open_index",
    "shard_of_ids",
    "shard_schema",
    "write_index",
]
