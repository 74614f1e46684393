"""Restricted top-k (label filters, masks, a radius through the live index) and the live index equal brute force, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from qadwh_ray.core.filters import LabelFilter, topk_among
from qadwh_ray.core.live import Change, LiveIndex, LiveQuery
from qadwh_ray.core.hamming import query_weights, reference_distances
from qadwh_ray.core.search import HashIndex


def _data(seed=0, n=1500, nbits=16, c=6):
    from qadwh_ray.core.bits import pack_bits

    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(100_000, n, replace=False)).astype(np.int64)
    codes = pack_bits(rng.integers(0, 2, (n, nbits)))  # zero padding bits for a length not a multiple of 8
    labels = (rng.random((n, c)) < 0.3).astype(np.uint8)
    labels[: n // 10] = 0  # some unlabeled items
    return rng, ids, codes, labels


def _brute(q, codes, ids, weights, mode, k, allowed, radius=None, nbits=None):
    nbits = nbits or codes.shape[1] * 8
    wi, e = query_weights(weights, mode, q.shape[0], nbits)
    dist = reference_distances(q, codes, wi, e)
    ham = reference_distances(q, codes, *query_weights(None, "hamming", q.shape[0], nbits))
    out = []
    for i in range(q.shape[0]):
        ok = allowed.copy()
        if radius is not None:
            ok &= ham[i] <= radius
        sel = np.flatnonzero(ok)
        order = sel[np.lexsort((ids[sel], dist[i, sel]))][:k]
        out.append((dist[i, order], ids[order]))
    return out


def _same(got_d, got_i, want):
    wd, wi = want
    m = wi.size
    assert got_i[:m].tolist() == wi.tolist()
    assert got_d[:m].tolist() == wd.tolist()
    assert (got_i[m:] == -1).all() and np.isinf(got_d[m:]).all()


def test_label_filter_semantics():
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 0]], dtype=np.uint8)
    assert LabelFilter().matches(labels, 4).tolist() == [True] * 4
    assert LabelFilter(any_of=(0, 2)).matches(labels, 4).tolist() == [True, True, True, False]
    assert LabelFilter(all_of=(0, 1)).matches(labels, 4).tolist() == [False, False, True, False]
    assert LabelFilter(any_of=(2,), all_of=(1,)).matches(labels, 4).tolist() == [False, True, False, False]
    assert not LabelFilter(any_of=(0,)).matches(None, 4).any()
    assert not LabelFilter(all_of=(7,)).matches(labels, 4).any()


@pytest.mark.parametrize("mode,nbits", [("qadwh", 16), ("dwh", 16), ("hamming", 16), ("qadwh", 12), ("hamming", 12)])
def test_topk_among_equals_brute_force_for_every_selectivity(mode, nbits):
    from qadwh_ray.core.bits import pack_bits

    rng, ids, codes, labels = _data(2, nbits=nbits)
    index = HashIndex(nbits, device="cpu")
    index.add(codes, ids)
    q = pack_bits(rng.integers(0, 2, (5, nbits)))
    w = {"qadwh": rng.uniform(0.1, 2, (5, nbits)), "dwh": rng.uniform(0.1, 2, nbits), "hamming": None}[mode]
    for flt in (LabelFilter(any_of=(0,)), LabelFilter(all_of=(1, 2)), LabelFilter(any_of=(0, 1, 2, 3, 4, 5)),
                LabelFilter(all_of=(0, 1, 2, 3))):
        allowed = flt.matches(labels, ids.size)
        for k in (1, 9, 60, 2000):
            d, got = topk_among(index, codes, q, w, mode, k, allowed)
            for i, want in enumerate(_brute(q, codes, ids, w, mode, k, allowed, nbits=nbits)):
                _same(d[i], got[i], want)


def _apply(ids, codes, labels, changes, p):
    """The items as of position p, by replaying the changes on plain arrays."""
    items = {int(i): (codes[j].tobytes(), np.flatnonzero(labels[j]).tolist()) for j, i in enumerate(ids)}
    for c in changes:
        if c.seq > p:
            break
        if c.code is None:
            items.pop(c.id, None)
        else:
            items[c.id] = (c.code, list(c.labels or ()))
    out_ids = np.asarray(sorted(items), dtype=np.int64)
    out_codes = np.frombuffer(b"".join(items[i][0] for i in out_ids.tolist()), np.uint8).reshape(-1, codes.shape[1])
    out_labels = np.zeros((out_ids.size, labels.shape[1]), np.uint8)
    for j, i in enumerate(out_ids.tolist()):
        out_labels[j, items[i][1]] = 1
    return out_ids, out_codes, out_labels


@pytest.mark.parametrize("nbits", [16, 12])
def test_live_index_answers_as_of_any_position_like_brute_force(nbits):
    from qadwh_ray.core.bits import pack_bits

    rng, ids, codes, labels = _data(4, n=800, nbits=nbits)
    c = labels.shape[1]
    live = LiveIndex(nbits, ids, codes, labels, base_position=10, num_classes=c)
    changes = []
    seq = 10
    for _ in range(120):
        seq += 1
        r = rng.random()
        if r < 0.35:  # replace an existing item
            i = int(rng.choice(ids))
        elif r < 0.55:  # delete an existing one (or a missing one: a no-op)
            changes.append(Change(seq, int(rng.choice(ids)) if rng.random() < 0.9 else 999_999))
            continue
        else:  # a new item
            i = int(rng.integers(100_000, 200_000))
        lab = tuple(sorted(set(rng.integers(0, c, rng.integers(0, 3)).tolist())))
        changes.append(Change(seq, i, pack_bits(rng.integers(0, 2, (1, nbits)))[0].tobytes(), lab))
    live.apply(changes[:60], changes[59].seq)
    live.apply(changes[40:], changes[-1].seq)  # re-reading applied changes is harmless
    q = pack_bits(rng.integers(0, 2, (4, nbits)))
    w = rng.uniform(0.1, 2, (4, nbits))
    for p in (10, changes[30].seq, changes[-1].seq):
        view = live.view(p)
        vi, vc, vl = _apply(ids, codes, labels, changes, p)
        assert live.count(view) == vi.size
        queries, wants = [], []
        for flt in (LabelFilter(), LabelFilter(any_of=(0, 3)), LabelFilter(all_of=(1,))):
            allowed = flt.matches(vl, vi.size)
            for mode, radius, k in (("qadwh", None, 25), ("hamming", None, 7), ("dwh", None, 900), ("qadwh", 4, 30)):
                for i in range(4):
                    wq = w[i] if mode == "qadwh" else (w[0] if mode == "dwh" else None)
                    queries.append(LiveQuery(q[i], wq, mode, k, radius, flt))
                    bw = None if mode == "hamming" else wq[None, :]
                    wants.append(_brute(q[i : i + 1], vc, vi, bw, "hamming" if mode == "hamming" else "qadwh", k, allowed, radius,
                                        nbits)[0])
        for (d, got), want in zip(live.search_many(queries, view), wants):
            _same(d, got, want)
        for i in vi[:5].tolist() + [int(vi[-1])]:
            item = live.item(i, view)
            j = int(np.searchsorted(vi, i))
            assert item["code"] == vc[j].tobytes() and item["labels"] == np.flatnonzero(vl[j]).tolist()
    latest = {c.id: c for c in changes}
    deleted = [i for i, c in latest.items() if c.code is None]
    assert deleted and all(live.item(i, live.view()) is None for i in deleted)
    with pytest.raises(ValueError, match="not reached"):
        live.view(changes[-1].seq + 1)
    with pytest.raises(ValueError, match="older"):
        live.view(5)
