"""Cost of exact label-filtered search and of live updates, relative to a plain search.

In one process, over one index of random codes with 0/1 labels: the same
QaDWH queries are answered (a) by ``HashIndex.search`` over every item (the
baseline), (b) by ``qadwh_ray.core.filters.topk_among`` restricted to items
matching a filter of each selectivity, and (c) by a
``qadwh_ray.core.live.LiveIndex`` holding the same items plus ``--changes``
logged puts and deletes. Methods are timed in alternating rounds and each
keeps its best round (the machine is shared). Every filtered answer is
checked against brute force over the matching items on a sample of queries.

Prints one JSON object as its last line: ``filtered_vs_plain_<s>`` is the
filtered time ÷ the plain time at selectivity s, ``live_vs_plain`` the same
for the live index. Example::

    python benchmarks/filter_bench.py --items 1000000 --bits 48 --queries 16 --k 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def _best(fn, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv: list[str] | None = None) -> dict:
    from qadwh_ray.core.filters import topk_among
    from qadwh_ray.core.live import Change, LiveIndex, LiveQuery
    from qadwh_ray.core.hamming import query_weights, reference_distances
    from qadwh_ray.core.search import HashIndex

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--bits", type=int, default=48)
    p.add_argument("--queries", type=int, default=16)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--changes", type=int, default=2000, help="logged puts and deletes in the live index")
    p.add_argument("--selectivities", default="0.001,0.01,0.1,0.5,0.9")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    import numba

    numba.set_num_threads(1)  # one thread for every method: the ratios compare work, not parallelism

    rng = np.random.default_rng(0)
    n, nb = a.items, a.bits // 8
    ids = np.arange(n, dtype=np.int64) * 3
    codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
    index = HashIndex(a.bits, device="cpu")
    index.add(codes, ids)
    q = rng.integers(0, 256, (a.queries, nb), dtype=np.uint8)
    w = rng.uniform(0.1, 2.0, (a.queries, a.bits))
    u = rng.random(n)
    out: dict = {"items": n, "bits": a.bits, "queries": a.queries, "k": a.k, "changes": a.changes,
                 "python": platform.python_version(), "load_average_start": os.getloadavg()[0]}

    def plain():
        return index.search(q, a.k, w, mode="qadwh", num_threads=1)

    index.search(q[:1], 2, w[:1], mode="qadwh", num_threads=1)  # compile
    times = {"plain": []}
    sel = [float(s) for s in a.selectivities.split(",")]
    masks = {s: u < s for s in sel}
    for s in sel:
        times[s] = []
    for _ in range(a.rounds):
        times["plain"].append(_best(plain, 1))
        for s in sel:
            times[s].append(_best(lambda: topk_among(index, codes, q, w, "qadwh", a.k, masks[s]), 1))
    base = min(times["plain"])
    out["plain_s"] = round(base, 4)
    wi, e = query_weights(w[:2], "qadwh", 2, a.bits)
    for s in sel:
        out[f"filtered_vs_plain_{s}"] = round(min(times[s]) / base, 3)
        d, got = topk_among(index, codes, q[:2], w[:2], "qadwh", a.k, masks[s])
        pos = np.flatnonzero(masks[s])
        ref = reference_distances(q[:2], codes[pos], wi, e)
        for i in range(2):  # exact: the brute-force top-k of the matching items
            order = np.lexsort((ids[pos], ref[i]))[: a.k]
            assert got[i, : order.size].tolist() == ids[pos][order].tolist(), s

    live = LiveIndex(a.bits, ids, codes, None)
    changes = []
    for j in range(a.changes):
        if j % 3 == 0:
            changes.append(Change(j + 1, int(rng.choice(ids))))
        else:
            changes.append(Change(j + 1, int(3 * n + j), rng.integers(0, 256, nb, dtype=np.uint8).tobytes(), ()))
    live.apply(changes, a.changes)
    view = live.view()
    lq = [LiveQuery(q[i], w[i], "qadwh", a.k) for i in range(a.queries)]
    lt = [_best(lambda: live.search_many(lq, view), 1) for _ in range(a.rounds)]
    out["live_vs_plain"] = round(min(lt) / min(_best(plain, 1) for _ in range(a.rounds)), 3)
    out["load_average_end"] = os.getloadavg()[0]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
