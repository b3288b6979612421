"""The single-positive protocol and the split: structure and the official random stream."""

import numpy as np
import pytest

from lln_jax.data import observed_labels


def _random_labels(num_rows=200, num_classes=12, seed=0):
    labels = np.random.default_rng(seed).random((num_rows, num_classes)) < 0.25
    labels[:5] = False  # Some images without any positive.
    return labels.astype(np.int8)


def test_one_observed_positive_per_image_chosen_among_its_true_positives():
    labels = _random_labels()
    labels_obs = observed_labels.single_positive(labels)
    has_positive = labels.any(axis=1)
    np.testing.assert_array_equal((labels_obs == 1).sum(axis=1), has_positive.astype(int))
    assert np.all(labels[labels_obs == 1] == 1)
    assert set(np.unique(labels_obs)) <= {0, 1}


def test_the_negative_shuffle_consumes_random_numbers():
    """Dropping the negatives' shuffle, as a naive port would, changes later rows."""
    labels = _random_labels()
    rng = np.random.RandomState(observed_labels.OBSERVED_SEED)
    naive = np.zeros_like(labels)
    for row, values in enumerate(labels):
        positives = np.flatnonzero(values == 1)
        rng.shuffle(positives)
        if positives.size:
            naive[row, positives[0]] = 1
    assert not np.array_equal(naive, observed_labels.single_positive(labels))


def test_the_seed_matters_and_the_result_is_reproducible():
    labels = _random_labels()
    first = observed_labels.single_positive(labels, seed=1)
    np.testing.assert_array_equal(first, observed_labels.single_positive(labels, seed=1))
    assert not np.array_equal(first, observed_labels.single_positive(labels, seed=2))


def test_fully_observed_marks_negatives_minus_one():
    got = observed_labels.fully_observed(np.array([[1, 0, 1]]))
    np.testing.assert_array_equal(got, [[1, -1, 1]])


@pytest.mark.parametrize("bad", [np.array([[0, 2]]), np.array([[-1, 1]]), np.array([1, 0])])
def test_bad_true_labels_are_refused(bad):
    with pytest.raises(ValueError, match="labels_true"):
        observed_labels.single_positive(bad)


@pytest.mark.parametrize("num_examples", [0, 1, 7, 10, 5717])
def test_split_partitions_the_rows(num_examples):
    train, val = observed_labels.train_val_split(num_examples)
    assert len(val) == round(0.2 * num_examples)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(num_examples))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_split_of_voc_has_the_spec_sizes():
    train, val = observed_labels.train_val_split(5717)
    assert (len(train), len(val)) == (4574, 1143)


def test_split_refuses_a_bad_fraction():
    with pytest.raises(ValueError, match="val_frac"):
        observed_labels.train_val_split(10, val_frac=1.5)
