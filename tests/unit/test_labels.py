import numpy as np
import pytest

from qadwh_ray.core.labels import as_label_matrix, relevance


def test_class_indices_to_one_hot():
    Y = as_label_matrix(np.array([2, 0, 1]), num_classes=4)
    assert Y.dtype == np.uint8 and Y.shape == (3, 4)
    np.testing.assert_array_equal(Y.argmax(1), [2, 0, 1])
    assert as_label_matrix(np.array([0, 3])).shape == (2, 4)


def test_matrix_and_bool_accepted():
    Y = np.array([[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(as_label_matrix(Y), Y)
    np.testing.assert_array_equal(as_label_matrix(Y.astype(bool)), Y)


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([0, 5]), "class index 5"),
        (np.array([-1, 0]), "class index -1"),
        (np.array([[1, 0], [0, 0]]), "label row 1"),
        (np.array([[2, 0]]), "0 and 1"),
        (np.zeros((2, 2, 2)), "shape"),
    ],
)
def test_rejects(labels, match):
    with pytest.raises(ValueError, match=match):
        as_label_matrix(labels, num_classes=3 if labels.ndim == 1 else None)


def test_float_indices_rejected():
    with pytest.raises(TypeError):
        as_label_matrix(np.array([0.0, 1.0]))


def test_relevance_matches_loop():
    rng = np.random.default_rng(0)
    Q = (rng.random((7, 5)) < 0.3).astype(np.uint8)
    D = (rng.random((11, 5)) < 0.3).astype(np.uint8)
    R = relevance(Q, D)
    for i in range(7):
        for j in range(11):
            assert R[i, j] == any(Q[i, c] and D[j, c] for c in range(5))
    with pytest.raises(ValueError):
        relevance(Q, D[:, :4])
