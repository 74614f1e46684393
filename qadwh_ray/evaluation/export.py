"""Write what was ranked as Parquet so every reported number can be recomputed.

Per ranking: ``queries.parquet`` (id, code, labels, the weights of a weighted
ranking, and ``ap``: the query's average precision over the whole database) and
``database.parquet`` (id, code, labels); codes are packed little-endian
fixed-size binaries, exactly what the search engine ranks. Every MAP and every
paired difference of a report is recomputable from these files alone.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qadwh_ray import storage
from qadwh_ray.evaluation.evaluate import Ranking


def _codes(codes: np.ndarray) -> pa.Array:
    return pa.array([bytes(c) for c in codes], type=pa.binary(codes.shape[1]))


def _matrix(m: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(m.reshape(-1), type=type_), m.shape[1])


def slug(method: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")


def export_ranking(
    r: Ranking, query_ids: np.ndarray, query_labels: np.ndarray, db_ids: np.ndarray, db_labels: np.ndarray,
    out_dir: str, ap: np.ndarray | None = None,
) -> str:
    folder = storage.join(out_dir, f"{slug(r.method)}-{r.nbits}")
    q = {"id": pa.array(query_ids, pa.int64()), "code": _codes(r.query_codes), "labels": _matrix(query_labels, pa.uint8())}
    if r.query_weights is not None:
        w = r.query_weights if r.query_weights.ndim == 2 else np.broadcast_to(r.query_weights, (len(r.query_codes), r.nbits))
        q["weights"] = _matrix(np.ascontiguousarray(w, dtype=np.float64), pa.float64())
    if ap is not None:
        q["ap"] = pa.array(np.asarray(ap, dtype=np.float64), pa.float64())
    tables = {
        "queries.parquet": pa.table(q, metadata={"method": r.method, "nbits": str(r.nbits), "bit_order": "little",
                                                 "symbol_bits": str(r.symbol_bits)}),
        "database.parquet": pa.table(
            {"id": pa.array(db_ids, pa.int64()), "code": _codes(r.db_codes), "labels": _matrix(db_labels, pa.uint8())}
        ),
    }
    for name, table in tables.items():
        with storage.open_output(storage.join(folder, name)) as f:
            pq.write_table(table, f)
    return folder
