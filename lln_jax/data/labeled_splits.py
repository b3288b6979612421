"""The splits of a run: the official train split labelled by a label setting, cut into
train and val, and the test split (SPEC.md section 4). No record is read here: the images
stay in their sources until the pipeline loads a batch.
"""

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lln_jax.data import image_storage, observed_labels

if TYPE_CHECKING:  # TFDS is heavy: the data sets load when the data opens, not with the
    # config checks, which read `LABEL_SETTINGS` before anything heavy is imported.
    from lln_jax.data.datasets import LabeledSource

LABEL_SETTINGS: dict[str, Callable[..., np.ndarray]] = {
    "single_positive": lambda labels, seed: observed_labels.single_positive(labels["labels"], seed),
    "full": lambda labels, seed: observed_labels.fully_observed(labels["labels"]),
    # The observed labels stored with the data (the official `_labels_obs.npy` files).
    "stored": lambda labels, seed: _stored_observed(labels),
}


class Split(NamedTuple):
    """One split: a random-access source and the rows of it that the split uses.

    Attributes:
      source: records with `image` (encoded bytes) and `labels`, indexable by row.
      rows: `[N]` indices into `source`; position `i` has example id `i`.
      labels_true: `[N, C]` int8 clean labels.
      labels_obs: `[N, C]` int8 observed labels (what training sees).
      name: for messages.
    """

    source: Any
    rows: np.ndarray
    labels_true: np.ndarray
    labels_obs: np.ndarray
    name: str

    @property
    def num_examples(self) -> int:
        return len(self.rows)


def _stored_observed(labels: dict[str, np.ndarray]) -> np.ndarray:
    if "labels_obs" not in labels:
        raise KeyError("the data set stores no 'labels_obs'; choose another label_setting")
    labels_obs, labels_true = labels["labels_obs"].astype(np.int8), labels["labels"]
    if labels_obs.shape != labels_true.shape or not np.isin(labels_obs, (-1, 0, 1)).all():
        raise ValueError(f"stored labels_obs must be {labels_true.shape} in {{-1, 0, 1}}")
    return labels_obs


def create_splits(
    train: "LabeledSource",
    test: "LabeledSource",
    *,
    label_setting: str,
    observed_seed: int,
    split_seed: int,
    val_frac: float,
) -> dict[str, Split]:
    """Train, val and test splits per SPEC.md section 4.

    The official train split is labelled by `label_setting` in file order, then cut into
    train and val; val and test are evaluated against their true labels. `train` and `test`
    are `LabeledSource`s (`datasets.open_splits` gives them): no record is read here.
    """
    if label_setting not in LABEL_SETTINGS:
        raise ValueError(
            f"Unknown label_setting {label_setting!r}; valid: {sorted(LABEL_SETTINGS)}"
        )
    train_source, test_source = train.source, test.source
    labels_all = observed_labels.validate_labels_true(train.labels["labels"].astype(np.int8))
    labels_obs_all = LABEL_SETTINGS[label_setting](train.labels, observed_seed)
    train_rows, val_rows = observed_labels.train_val_split(len(labels_all), val_frac, split_seed)
    test_labels = observed_labels.validate_labels_true(test.labels["labels"].astype(np.int8))
    return {
        "train": Split(
            train_source, train_rows, labels_all[train_rows], labels_obs_all[train_rows], "train"
        ),
        # Val's observed labels (sampled as train's) serve model selection without clean labels.
        "val": Split(train_source, val_rows, labels_all[val_rows], labels_obs_all[val_rows], "val"),
        "test": Split(
            test_source,
            np.arange(len(test_labels)),
            test_labels,
            np.zeros_like(test_labels),
            "test",
        ),
    }


def open_splits(data_config: ml_collections.ConfigDict) -> dict[str, Split]:
    """Opens the data set named by `data_config` (preparing it where possible); its splits.

    With several processes, process 0 prepares (or upgrades) the data while the others wait,
    so that they never write the same files at once.
    """
    from lln_jax.data import datasets

    open_sources = functools.partial(
        datasets.open_splits,
        data_config.name,
        data_config.data_dir,
        allow_unchecked_counts=data_config.allow_unchecked_counts,
        storage=image_storage.parse(data_config.storage, data_config.image_size),
    )
    if jax.process_count() > 1:
        if jax.process_index() == 0:
            open_sources()
        multihost_utils.sync_global_devices("lln_jax: the data is prepared")
    train, test = open_sources()
    return create_splits(
        train,
        test,
        label_setting=data_config.label_setting,
        observed_seed=data_config.observed_seed,
        split_seed=data_config.split_seed,
        val_frac=data_config.val_frac,
    )
