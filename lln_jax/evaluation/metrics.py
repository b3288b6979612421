"""Evaluation: per-class average precision and mAP (SPEC.md section 5), on the host.

`mean_average_precision` is a plain numpy function over a whole split; the clu metric
`MeanAveragePrecision` collects scores, true labels and the padding mask across eval steps
and calls it. Nothing here runs inside a jitted step.
"""

import flax
import jax
import numpy as np
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils


def average_precisions(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class non-interpolated average precision, as scikit-learn computes it.

    `AP = sum_n (R_n - R_{n-1}) P_n` over the distinct score thresholds in descending order;
    tied scores form one threshold. A class with no positive has AP 0.

    Args:
      scores: `[N, C]` scores (any monotone transform of the logits gives the same AP,
        except where it creates ties; the evaluation passes sigmoid scores).
      labels: `[N, C]` true labels in {0, 1}.

    Returns:
      `[C]` float64 APs in [0, 1].
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal [N, C]")
    num_rows = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    hits = np.take_along_axis(labels, order, axis=0).astype(np.float64)
    precision = np.cumsum(hits, axis=0) / np.arange(1, num_rows + 1)[:, None]
    # Every row of a group of tied scores takes the precision at the group's last row.
    is_group_end = np.ones_like(sorted_scores, dtype=bool)
    is_group_end[:-1] = sorted_scores[1:] != sorted_scores[:-1]
    end_row = np.where(is_group_end, np.arange(num_rows)[:, None], num_rows)
    end_row = np.minimum.accumulate(end_row[::-1], axis=0)[::-1]
    precision_at_threshold = np.take_along_axis(precision, end_row, axis=0)
    num_positives = hits.sum(axis=0)
    ap = (hits * precision_at_threshold).sum(axis=0) / np.maximum(num_positives, 1.0)
    return np.where(num_positives > 0, ap, 0.0)


def mean_average_precision(
    scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """mAP in percent: 100 * mean over all C classes of the per-class AP.

    Args:
      scores: `[N, C]` scores.
      labels: `[N, C]` true labels in {0, 1}.
      mask: optional `[N]`; rows where it is 0 (padding) are left out.

    Returns:
      mAP in [0, 100]; classes without a positive count as 0 and stay in the mean.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != scores.shape[:1]:
            raise ValueError(f"mask must be [{scores.shape[0]}], got {mask.shape}")
        keep = mask > 0
        scores, labels = scores[keep], labels[keep]
    return float(100.0 * np.mean(average_precisions(scores, labels)))


# mAP over observed labels (SPEC.md section 12): which classes enter the mean.
OBSERVED_MAP_CONVENTIONS = ("ll", "imcl", "csl")


def observed_average_precisions(scores: np.ndarray, labels_obs: np.ndarray) -> np.ndarray:
    """Per-class AP over each class's observed rows (+1 or -1), against `label == +1`.

    An unobserved row is scored -inf (below every real score) as a negative: it ranks after
    every observed row, so it changes no precision at an observed positive.
    """
    scores, labels_obs = np.asarray(scores, np.float64), np.asarray(labels_obs)
    if scores.shape != labels_obs.shape:
        raise ValueError(f"scores {scores.shape} and labels_obs {labels_obs.shape} must match")
    observed = labels_obs != 0
    return average_precisions(np.where(observed, scores, -np.inf), labels_obs == 1)


def kept_classes(labels_obs: np.ndarray, convention: str) -> np.ndarray:
    """`[C]` bool: the classes a convention's mean includes.

    `ll`: every class with an observed row; `imcl`: every class; `csl`: every class with an
    observed positive and an observed negative.
    """
    labels_obs = np.asarray(labels_obs)
    if convention == "ll":
        return (labels_obs != 0).any(axis=0)
    if convention == "imcl":
        return np.ones(labels_obs.shape[1], bool)
    if convention == "csl":
        return (labels_obs == 1).any(axis=0) & (labels_obs == -1).any(axis=0)
    raise ValueError(f"unknown convention {convention!r}; valid: {OBSERVED_MAP_CONVENTIONS}")


def observed_mean_average_precision(
    scores: np.ndarray, labels_obs: np.ndarray, convention: str = "ll"
) -> float:
    """mAP in percent over observed labels: the mean AP of the classes `convention` keeps."""
    kept = kept_classes(labels_obs, convention)
    aps = observed_average_precisions(scores, labels_obs)
    return float(100.0 * aps[kept].mean()) if kept.any() else float("nan")


def frequency_groups(train_labels_obs: np.ndarray, num_groups: int = 5) -> list[np.ndarray]:
    """Class indices in `num_groups` groups by observed train positives, the rarest first.

    Classes sorted ascending by their count (ties: the lower index first), then cut into
    consecutive groups with `numpy.array_split`.
    """
    positives = (np.asarray(train_labels_obs) == 1).sum(axis=0)
    order = np.argsort(positives, kind="stable")
    return np.array_split(order, num_groups)


def grouped_observed_map(
    scores: np.ndarray, labels_obs: np.ndarray, groups: list[np.ndarray], convention: str = "ll"
) -> list[float]:
    """Each group's mAP over observed labels, in the convention, over its own classes."""
    aps = observed_average_precisions(scores, labels_obs)
    kept = kept_classes(labels_obs, convention)
    maps = []
    for group in groups:
        in_mean = group[kept[group]]
        maps.append(float(100.0 * aps[in_mean].mean()) if len(in_mean) else float("nan"))
    return maps


def unobserved_losses(
    scores: np.ndarray, labels_true: np.ndarray, labels_obs: np.ndarray
) -> dict[str, float]:
    """Mean assume-negative loss `-log(1 - p)` of the unobserved entries, by their truth.

    The paper's diagnosis: under assume-negative training the loss of the *false negatives*
    (unobserved true positives) first stays large, then falls as the model memorises them.

    Args:
      scores: `[N, C]` sigmoid scores.
      labels_true: `[N, C]` clean labels in {0, 1}.
      labels_obs: `[N, C]` observed labels in {-1, 0, 1}.

    Returns:
      `{"false_negative": ..., "true_negative": ...}`, NaN where a set is empty.
    """
    scores = np.clip(np.asarray(scores, np.float64), 0.0, 1.0 - 1e-7)
    loss = -np.log1p(-scores)
    unobserved = np.asarray(labels_obs) == 0
    positive = np.asarray(labels_true) == 1
    sets = {"false_negative": unobserved & positive, "true_negative": unobserved & ~positive}
    return {name: float(loss[m].mean()) if m.any() else float("nan") for name, m in sets.items()}


def gather_to_host(tree):
    """Brings (possibly multi-host sharded) global arrays to every host as numpy arrays."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    return multihost_utils.process_allgather(tree, tiled=True)


_COLLECTED = ("scores", "labels", "example_id", "mask")


@flax.struct.dataclass
class MeanAveragePrecision(clu_metrics.CollectingMetric.from_outputs(_COLLECTED)):
    """clu metric: collects `scores`, true `labels`, `example_id` and `mask` across steps;
    computes mAP.

    Merge it on the host (outside jit), from outputs passed through `gather_to_host`.
    """

    @classmethod
    def from_model_output(cls, **outputs) -> "MeanAveragePrecision":
        # Kept as numpy: clu's version makes device arrays of host data (a needless copy).
        return cls({name: (np.asarray(outputs[name]),) for name in _COLLECTED})

    def arrays(self) -> dict[str, np.ndarray]:
        """The collected rows without padding, in example-id (split) order.

        Rows arrive in the order of the gathered batches, which follows the mesh's devices;
        sorting by id makes them line up with the split's own label matrices on any mesh.
        """
        values = super().compute()
        keep = values["mask"] > 0
        order = np.argsort(values["example_id"][keep], kind="stable")
        return {name: values[name][keep][order] for name in ("scores", "labels", "example_id")}

    def compute(self) -> float:
        values = self.arrays()
        return mean_average_precision(values["scores"], values["labels"])


@flax.struct.dataclass
class TrainMetrics(clu_metrics.Collection):
    """Per-step training metrics, merged on device and computed at log time."""

    loss: clu_metrics.Average.from_output("loss")
    k: clu_metrics.LastValue.from_output("k")
    modified_fraction: clu_metrics.Average.from_output("modified_fraction")
    grad_norm: clu_metrics.Average.from_output("grad_norm")
    param_norm: clu_metrics.LastValue.from_output("param_norm")
    update_norm: clu_metrics.Average.from_output("update_norm")
    # Per step: entries selected (rejected or corrected), those of them that are truly
    # positive, and the batch's unobserved true positives (the false negatives); their
    # totals over an epoch give the selection's precision and recall.
    selected: clu_metrics.Average.from_output("selected")
    selected_false_negatives: clu_metrics.Average.from_output("selected_false_negatives")
    false_negatives: clu_metrics.Average.from_output("false_negatives")


SELECTION_COUNTS = ("selected", "selected_false_negatives", "false_negatives")


def selection_totals(train_metrics: TrainMetrics) -> dict[str, float]:
    """The totals of the selection counts over the merged steps (a host transfer)."""
    totals = jax.device_get({name: getattr(train_metrics, name).total for name in SELECTION_COUNTS})
    return {name: float(value) for name, value in totals.items()}


def selection_quality(totals: dict[str, float]) -> dict[str, float | None]:
    """Precision (true positives among the selected) and recall (selected among the false
    negatives) of the selected entries; None where undefined (nothing selected, or none)."""
    selected, hits = totals["selected"], totals["selected_false_negatives"]
    return {
        "precision": hits / selected if selected > 0 else None,
        "recall": hits / totals["false_negatives"] if totals["false_negatives"] > 0 else None,
    }
