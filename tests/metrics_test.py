"""AP and mAP against hand-computed cases and scikit-learn; the clu metric."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from lln_jax.evaluation import metrics


def test_ap_by_hand():
    # Ranking: +, -, +, -  ->  precisions at the hits 1/1 and 2/3.
    scores = np.array([[0.9], [0.8], [0.7], [0.1]])
    labels = np.array([[1], [0], [1], [0]])
    np.testing.assert_allclose(metrics.average_precisions(scores, labels), [(1 + 2 / 3) / 2])


def test_tied_scores_form_one_threshold():
    # The two tied rows (one hit, one miss) share precision 2/3, whatever their order.
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    for labels in ([[1], [1], [0], [0]], [[1], [0], [1], [0]]):
        np.testing.assert_allclose(metrics.average_precisions(scores, np.array(labels)), [5 / 6])


def test_class_without_positives_counts_as_zero_and_stays_in_the_mean():
    scores = np.array([[0.9, 0.3], [0.1, 0.8]])
    labels = np.array([[1, 0], [0, 0]])
    np.testing.assert_allclose(metrics.average_precisions(scores, labels), [1.0, 0.0])
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(50.0)


@pytest.mark.parametrize("seed", range(5))
def test_matches_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=(60, 7)) / 5.0  # Few distinct values: many ties.
    labels = (rng.random((60, 7)) < 0.3).astype(int)
    labels[0] = 1  # Every class has a positive, so scikit-learn's AP is defined.
    expected = [average_precision_score(labels[:, c], scores[:, c]) for c in range(7)]
    np.testing.assert_allclose(metrics.average_precisions(scores, labels), expected, atol=1e-12)


def test_mask_leaves_padding_out():
    scores = np.array([[0.9], [0.8], [0.95]])
    labels = np.array([[1], [0], [0]])
    assert metrics.mean_average_precision(scores, labels, mask=np.array([1, 1, 0])) == 100.0
    assert metrics.mean_average_precision(scores, labels) == pytest.approx(50.0)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="scores"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="mask"):
        metrics.mean_average_precision(np.zeros((3, 2)), np.zeros((3, 2)), mask=np.ones(2))


def test_clu_metric_gathers_across_steps_like_the_whole_split():
    rng = np.random.default_rng(0)
    scores = rng.random((10, 4)).astype(np.float32)
    labels = (rng.random((10, 4)) < 0.4).astype(np.int32)
    # Two eval steps of 8 rows; the second is padded with 6 rows of junk.
    padded_scores = np.concatenate([scores, rng.random((6, 4)).astype(np.float32)])
    padded_labels = np.concatenate([labels, np.ones((6, 4), np.int32)])
    mask = np.r_[np.ones(10), np.zeros(6)]
    ids = np.r_[np.arange(10), np.zeros(6, int)]  # Padding repeats a real id.
    metric = metrics.MeanAveragePrecision.empty()
    for rows in (slice(0, 8), slice(8, 16)):
        outputs = {
            "scores": jnp.asarray(padded_scores[rows]),
            "labels": jnp.asarray(padded_labels[rows]),
            "example_id": jnp.asarray(ids[rows]),
            "mask": jnp.asarray(mask[rows]),
        }
        update = metrics.MeanAveragePrecision.from_model_output(**metrics.gather_to_host(outputs))
        metric = metric.merge(update)
    assert metric.compute() == pytest.approx(metrics.mean_average_precision(scores, labels))


def test_collected_rows_come_back_in_split_order_whatever_the_device_order():
    """On a pod the gathered batch follows the mesh's devices, not the processes' slices."""
    rng = np.random.default_rng(1)
    scores = rng.random((12, 3)).astype(np.float32)
    labels = (rng.random((12, 3)) < 0.5).astype(np.int32)
    ids = np.arange(12)
    # Two batches of 6, each gathered with its halves swapped (process 1's devices first).
    metric = metrics.MeanAveragePrecision.empty()
    for batch in (np.r_[3:6, 0:3], np.r_[9:12, 6:9]):
        update = metrics.MeanAveragePrecision.from_model_output(
            scores=scores[batch], labels=labels[batch], example_id=ids[batch], mask=np.ones(6)
        )
        metric = metric.merge(update)
    arrays = metric.arrays()
    np.testing.assert_array_equal(arrays["example_id"], ids)
    np.testing.assert_array_equal(arrays["scores"], scores)  # Pairs with split-order labels.
    np.testing.assert_array_equal(arrays["labels"], labels)


def test_selection_precision_and_recall():
    quality = metrics.selection_quality(
        {"selected": 8.0, "selected_false_negatives": 6.0, "false_negatives": 24.0}
    )
    assert quality == {"precision": 0.75, "recall": 0.25}
    nothing = {"selected": 0.0, "selected_false_negatives": 0.0, "false_negatives": 0.0}
    assert metrics.selection_quality(nothing) == {"precision": None, "recall": None}
