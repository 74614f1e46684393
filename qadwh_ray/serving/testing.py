"""Write an index version straight from in-memory arrays (no Ray Data).

For serving tests and the serving benchmark, which need small or synthetic
indexes quickly. It writes exactly the format of :mod:`qadwh_ray.index.format`
(shards assigned by ``shard_of_ids``, manifest with SHA-256 of every shard)
through :class:`qadwh_ray.index.store.IndexStore`'s staging + publish, so the
readers verify it like any other version. The production build is
:mod:`qadwh_ray.indexing`. Unlike :func:`qadwh_ray.index.writer.write_index`
it records the manifest's source records (e.g. the built-in Fashion-MNIST set),
which is what lets the service render item images.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["write_index_version", "checkpoint_record"]


def checkpoint_record(uri: str) -> dict:
    """``{"uri", "sha256", "model_config"}`` of a checkpoint, as manifests record it."""
    from qadwh_ray.model.checkpoint import load_payload

    p = load_payload(uri)
    return {"uri": p["uri"], "sha256": p["sha256"], "model_config": p["model_config"]}


def write_index_version(
    root: str,
    ids: np.ndarray,
    codes: np.ndarray,
    labels: Optional[np.ndarray],
    *,
    num_shards: int,
    checkpoint: dict,
    sources: Optional[list] = None,
    item_sources: Optional[list] = None,
    class_names: Optional[list] = None,
    version: Optional[str] = None,
    publish: bool = True,
) -> str:
    """Write one version (staged; published unless ``publish=False``, then
    ``IndexStore.publish(version)`` publishes it later); returns its name.

    ``labels`` is an ``(n, c)`` 0/1 matrix or None; ``item_sources`` an
    optional per-item source string list; ``sources`` the manifest's source
    records (e.g. ``[{"kind": "fashion", "uri": "fashion:all"}]``); the code
    length and the classes are the checkpoint's (``checkpoint["model_config"]``),
    ``class_names`` the dataset's names of them.
    """
    from qadwh_ray.index.format import Manifest, class_names_for, make_shard_table, shard_file_name, shard_of_ids
    from qadwh_ray.index.store import IndexStore, utc_iso
    from qadwh_ray.index.writer import write_shard

    store = IndexStore(root)
    version = version or store.new_version_name()
    ids = np.asarray(ids, dtype=np.int64)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    model_config = checkpoint["model_config"]
    nbits = int(model_config["nbits"])
    home = shard_of_ids(ids, num_shards)
    infos = []
    for s in range(num_shards):
        sel = np.flatnonzero(home == s)
        order = sel[np.argsort(ids[sel], kind="stable")]
        src = None if item_sources is None else [item_sources[j] for j in order.tolist()]
        table = make_shard_table(ids[order], codes[order], None if labels is None else labels[order], src, nbits)
        infos.append(write_shard(store.shard_uri(version, shard_file_name(s), staged=True), table))
    manifest = Manifest(
        version=version,
        code_bits=nbits,
        num_items=int(ids.size),
        shards=infos,
        checkpoint=dict(checkpoint),
        created_at=utc_iso(),
        num_classes=None if labels is None else int(labels.shape[1]),
        class_names=class_names_for(int(model_config["num_classes"]), class_names),
        sources=list(sources or []),
        build={"writer": "qadwh_ray.serving.testing.write_index_version"},
    )
    store.write_staged_manifest(manifest)
    if publish:
        store.publish(version, manifest)
    return version
