import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadwh_ray.core.triplets import ClassBalancedBatchSampler, all_valid_triplets, sample_triplets


def _ref_triplets(Y, anchors=None):
    N = Y.shape[0]
    anchors = range(N) if anchors is None else sorted(anchors)
    out = []
    for a in anchors:
        for p in range(N):
            if p == a or not (Y[a] & Y[p]).any():
                continue
            for n in range(N):
                if not (Y[a] & Y[n]).any():
                    out.append((a, p, n))
    return out


def _random_multilabel(rng, N, c, density=0.3):
    Y = (rng.random((N, c)) < density).astype(np.uint8)
    Y[np.arange(N), rng.integers(0, c, N)] = 1
    return Y


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 5), st.integers(0, 2**32 - 1), st.booleans())
def test_all_valid_triplets_matches_loop(N, c, seed, multi):
    rng = np.random.default_rng(seed)
    Y = _random_multilabel(rng, N, c) if multi else np.eye(c, dtype=np.uint8)[rng.integers(0, c, N)]
    a, p, n = all_valid_triplets(Y)
    assert a.dtype == p.dtype == n.dtype == np.int64
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == _ref_triplets(Y)  # same set, same order


def test_anchor_index_partition_unions_to_full_set():
    """Distributed mining: each worker's anchors vs the whole global batch."""
    rng = np.random.default_rng(3)
    Y = _random_multilabel(rng, 16, 4)
    full = list(zip(*[x.tolist() for x in all_valid_triplets(Y)]))
    parts = []
    for rows in (np.arange(0, 8), np.arange(8, 16)):
        a, p, n = all_valid_triplets(Y, anchor_index=rows)
        assert set(a.tolist()) <= set(rows.tolist())
        parts += list(zip(a.tolist(), p.tolist(), n.tolist()))
    assert parts == full
    a, p, n = all_valid_triplets(Y, anchor_index=np.array([9, 2]))
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == _ref_triplets(Y, [2, 9])


def test_class_indices_and_edge_cases():
    a, p, n = all_valid_triplets(np.array([0, 0, 1]))
    assert list(zip(a.tolist(), p.tolist(), n.tolist())) == [(0, 1, 2), (1, 0, 2)]
    a, p, n = all_valid_triplets(np.array([0, 0, 0]))  # no negatives
    assert a.size == p.size == n.size == 0
    a, p, n = all_valid_triplets(np.array([0, 1]), anchor_index=np.array([], dtype=np.int64))
    assert a.size == 0


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"anchor_index": np.array([5])}, ValueError, "row 5"),
        ({"anchor_index": np.array([1, 1])}, ValueError, "more than once"),
        ({"anchor_index": np.array([0.5])}, TypeError, "integer"),
        ({"anchor_index": np.array([[0]])}, ValueError, "1-D"),
    ],
)
def test_anchor_index_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        all_valid_triplets(np.array([0, 0, 1]), **kwargs)


def test_empty_label_row_rejected():
    with pytest.raises(ValueError, match="label row 1"):
        all_valid_triplets(np.array([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="label row 1"):
        sample_triplets(np.array([[1, 0], [0, 0]]), 1, 0)


def test_sample_triplets_valid_deterministic_and_uniform():
    rng = np.random.default_rng(4)
    Y = _random_multilabel(rng, 20, 5)
    a, p, n = sample_triplets(Y, 50, np.random.default_rng(0))
    valid = set(_ref_triplets(Y))
    assert all(t in valid for t in zip(a.tolist(), p.tolist(), n.tolist()))
    eligible = sorted({t[0] for t in valid})
    assert np.array_equal(a, np.repeat(eligible, 50))
    a2, p2, n2 = sample_triplets(Y, 50, 0)
    assert np.array_equal(p, p2) and np.array_equal(n, n2)
    # uniform positive choice: anchor 0 of [0,0,0,1] has positives {1,2}, roughly half each
    a, p, n = sample_triplets(np.array([0, 0, 0, 1]), 4000, 1, anchor_index=np.array([0]))
    assert set(p.tolist()) == {1, 2} and set(n.tolist()) == {3}
    assert 0.45 < (p == 1).mean() < 0.55


def test_sample_triplets_errors_and_empty():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="per_anchor"):
            sample_triplets(np.array([0, 1]), bad, 0)
    a, p, n = sample_triplets(np.array([0, 1]), 3, 0)  # nobody has a positive
    assert a.size == 0 and a.dtype == np.int64


def test_sampler_single_label_batches():
    labels = np.repeat(np.arange(10), 20)
    s = ClassBalancedBatchSampler(labels, classes_per_batch=4, images_per_class=5, seed=1)
    assert len(s) == 200 // 20
    batches = list(s)
    assert len(batches) == len(s)
    for b in batches:
        assert b.shape == (20,) and b.dtype == np.int64
        assert len(set(b.tolist())) == 20
        counts = np.bincount(labels[b], minlength=10)
        assert sorted(counts[counts > 0].tolist()) == [5, 5, 5, 5]
        a, _, _ = all_valid_triplets(labels[b])
        assert set(a.tolist()) == set(range(20))  # every anchor has a positive and a negative


def test_sampler_epochs_are_deterministic_and_differ():
    labels = np.repeat(np.arange(6), 10)
    s1 = ClassBalancedBatchSampler(labels, 3, 4, seed=7, num_batches=5)
    s2 = ClassBalancedBatchSampler(labels, 3, 4, seed=7, num_batches=5)
    assert len(s1) == 5
    e0 = [b.tolist() for b in s1]
    assert e0 == [b.tolist() for b in s2] == [b.tolist() for b in s1]
    s1.set_epoch(1)
    s2.set_epoch(1)
    e1 = [b.tolist() for b in s1]
    assert e1 != e0 and e1 == [b.tolist() for b in s2]


def test_sampler_multi_label_no_duplicates():
    rng = np.random.default_rng(2)
    Y = _random_multilabel(rng, 60, 5, density=0.5)
    s = ClassBalancedBatchSampler(Y, 3, 4, seed=0, num_batches=20)
    for b in s:
        assert b.size == 12 and len(set(b.tolist())) == 12
        sub = Y[b]
        has_pos = [(sub[i] & np.delete(sub, i, 0)).any() for i in range(12)]
        assert all(has_pos)


def test_sampler_small_class_repeats_only_when_needed():
    labels = np.array([0, 0, 1, 1, 1, 1, 1, 1])
    s = ClassBalancedBatchSampler(labels, 2, 3, seed=0, num_batches=3)
    for b in s:
        assert b.size == 6
        assert set(b[labels[b] == 0].tolist()) == {0, 1}  # both class-0 items, one repeated
        assert len(set(b[labels[b] == 1].tolist())) == 3


def test_sampler_errors():
    labels = np.array([0, 0, 1, 2])
    with pytest.raises(ValueError, match="only 1 classes"):
        ClassBalancedBatchSampler(labels, 2, 2)
    with pytest.raises(ValueError, match="images_per_class"):
        ClassBalancedBatchSampler(labels, 1, 1)
    with pytest.raises(ValueError, match="classes_per_batch"):
        ClassBalancedBatchSampler(labels, 0, 2)
    with pytest.raises(ValueError, match="num_batches"):
        ClassBalancedBatchSampler(labels, 1, 2, num_batches=0)
