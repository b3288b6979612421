"""Evaluation of a split: the ordered pass over it, and its mAP against clean or observed labels.

`ordered_pass` is the one loop over a whole split in row order that evaluation, the
false-negative diagnosis and LinearInit's feature extraction share: padded global batches,
the step's outputs brought to the host, the padding dropped and the rows put back in split
order by their example ids (the gathered rows follow the mesh's device order).
"""

from collections.abc import Callable, Iterator

import jax
import numpy as np

from lln_jax.data import input_pipeline, labeled_splits
from lln_jax.evaluation import metrics
from lln_jax.training.experiment import Experiment, Loading
from lln_jax.training.train_state import TrainState


def _no_stop(index: int) -> None:
    del index


def ordered_pass(
    jit_step: Callable,
    state,
    split: labeled_splits.Split,
    *,
    batch_size: int,
    loading: Loading,
    data_sharding: jax.sharding.Sharding,
    check_stop: Callable[[int], None] = _no_stop,
) -> Iterator[dict[str, np.ndarray]]:
    """The host outputs of `jit_step` on each padded batch of `split`, in batch order.

    `check_stop(batch_index)` runs before every batch and may raise to stop the pass.
    """
    num_batches = input_pipeline.steps_per_epoch(split.num_examples, batch_size)
    batches = input_pipeline.batches(
        split,
        batch_size=batch_size,
        image_size=loading.image_size,
        seed=0,
        train=False,
        start=0,
        stop=num_batches,
        num_threads=loading.num_threads,
        num_workers=loading.num_workers,
    )
    for index, batch in enumerate(batches):
        check_stop(index + 1)
        outputs = jit_step(state, input_pipeline.to_global(batch, data_sharding))
        yield metrics.gather_to_host(outputs)


def in_split_order(outputs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """`outputs`' `name` rows of the real examples, ordered by example id."""
    keep = [o["mask"] > 0 for o in outputs]
    rows = np.concatenate([o[name][k] for o, k in zip(outputs, keep, strict=True)])
    ids = np.concatenate([o["example_id"][k] for o, k in zip(outputs, keep, strict=True)])
    return rows[np.argsort(ids, kind="stable")]


def predict(experiment: Experiment, state: TrainState, split_name: str) -> np.ndarray:
    """`[N, C]` sigmoid scores of a whole split, in row order, on the host."""
    collected = metrics.MeanAveragePrecision.empty()
    for outputs in ordered_pass(
        experiment.eval_step, state, experiment.splits[split_name],
        batch_size=experiment.loading.eval_batch_size, loading=experiment.loading,
        data_sharding=experiment.data_sharding,
    ):  # fmt: skip
        collected = collected.merge(metrics.MeanAveragePrecision.from_model_output(**outputs))
    return collected.arrays()["scores"]


def evaluate(
    experiment: Experiment, state: TrainState, split_name: str, labels: str = "true"
) -> float:
    """mAP (percent) on a whole split against its true or its observed labels.

    Against observed labels, the observed positives are the positives (SPEC.md 9).
    """
    scores = predict(experiment, state, split_name)
    split = experiment.splits[split_name]
    if labels == "true":
        return metrics.mean_average_precision(scores, split.labels_true)
    observed_positive = (split.labels_obs == 1).astype(np.int8)
    return metrics.mean_average_precision(scores, observed_positive)


def unobserved_train_losses(experiment: Experiment, state: TrainState) -> dict[str, float]:
    """The losses of the train split's false and true negatives (a diagnosis)."""
    scores = predict(experiment, state, "train")
    train = experiment.splits["train"]
    return metrics.unobserved_losses(scores, train.labels_true, train.labels_obs)
