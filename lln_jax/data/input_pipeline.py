"""Input: `tfds.data_source` -> grain -> global `jax.Array` batches.

The input position is not saved: a training batch is a pure function of `(seed, step)`.
Epoch `e` visits the train rows in the order of a permutation seeded by `(seed, e)`, its
last batch padded (mask 0) so that no example is dropped or seen twice, and a random flip
seeded by `(seed, e, example_id)`. A run restored at step `s` therefore starts its input at
`s` and sees exactly the batches an uninterrupted run would have seen.

Batch schema (the arrays of one global batch of `B` rows; each process loads its slice):
  - `image`: uint8 `[B, H, W, 3]`, pixels in [0, 255] (the model normalises them);
  - `labels_obs`: int8 `[B, C]`, +1 observed positive, 0 unobserved, -1 observed negative;
  - `labels_true`: int8 `[B, C]`, the clean labels (evaluation only);
  - `example_id`: int32 `[B]`, global and dense in `[0, N)` over the split;
  - `mask`: float32 `[B]`, 1 for real rows, 0 for padding.

Observed labels are sampled once, from the whole official train split in file order (as the
official label files are), and only looked up here; they never change between epochs.
"""

import functools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from absl import flags

from lln_jax.data import observed_labels, preprocessing

Batch = dict[str, np.ndarray]

LABEL_SETTINGS: dict[str, Callable[..., np.ndarray]] = {
    "single_positive": lambda labels, seed: observed_labels.single_positive(labels["labels"], seed),
    "full": lambda labels, seed: observed_labels.fully_observed(labels["labels"]),
    # The observed labels stored with the data (the official `_labels_obs.npy` files).
    "stored": lambda labels, seed: _stored_observed(labels),
}


class LabeledSource(NamedTuple):
    """Records and their label matrices (read once, without the images).

    Attributes:
      source: records with `image` (encoded bytes), indexable by row.
      labels: `labels` `[N, C]` {0, 1}, and `labels_obs` `[N, C]` where the data stores them.
    """

    source: Any
    labels: dict[str, np.ndarray]


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
    train: LabeledSource,
    test: LabeledSource,
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


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Batches in one pass over a split, the padded last one included."""
    return math.ceil(num_examples / batch_size)


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def _flip(seed: int, epoch: int, example_id: int) -> bool:
    return bool(np.random.default_rng([seed, epoch, example_id]).random() < 0.5)


def local_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    if batch_size % process_count:
        raise ValueError(f"batch size {batch_size} is not divisible by {process_count} processes")
    per_process = batch_size // process_count
    return slice(process_index * per_process, (process_index + 1) * per_process)


class _BatchLoader:
    """Loads this process's slice of global batch `index` (picklable for grain workers)."""

    def __init__(self, split, *, batch_size, image_size, seed, train, process_index, process_count):
        self.split, self.batch_size, self.image_size = split, batch_size, image_size
        self.seed, self.train = seed, train
        self.local = local_slice(batch_size, process_index, process_count)
        self.steps_per_epoch = steps_per_epoch(split.num_examples, batch_size)

    def positions(self, index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """Example ids of global batch `index` (padding repeats a real id), mask, epoch."""
        epoch, within = divmod(index, self.steps_per_epoch)
        num = self.split.num_examples
        order = _epoch_order(self.seed, epoch, num) if self.train else np.arange(num)
        ids = order[within * self.batch_size : (within + 1) * self.batch_size]
        mask = np.zeros(self.batch_size, np.float32)
        mask[: len(ids)] = 1.0
        ids = np.concatenate([ids, np.full(self.batch_size - len(ids), ids[0])])
        return ids, mask, epoch

    def __call__(self, index: int) -> Batch:
        ids, mask, epoch = self.positions(index)
        ids, mask = ids[self.local], mask[self.local]
        images = [
            preprocessing.load_image(
                self.split.source[int(self.split.rows[i])]["image"],
                size=self.image_size,
                flip=self.train and _flip(self.seed, epoch, int(i)),
                name=f"{self.split.name} row {int(self.split.rows[i])}",
            )
            for i in ids
        ]
        return {
            "image": np.stack(images),
            "labels_obs": self.split.labels_obs[ids],
            "labels_true": self.split.labels_true[ids],
            "example_id": ids.astype(np.int32),
            "mask": mask,
        }


def batches(
    split: Split,
    *,
    batch_size: int,
    image_size: int,
    seed: int,
    train: bool,
    start: int,
    stop: int,
    num_threads: int = 2,
    num_workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[Batch]:
    """This process's slices of global batches `start..stop-1`, as numpy.

    For training, batch `i` belongs to epoch `i // steps_per_epoch`; for evaluation, pass
    `train=False, start=0, stop=steps_per_epoch(...)` for one ordered, padded pass.
    Batches load in `num_threads` threads (of each of `num_workers` worker processes, or
    of this process when `num_workers` is 0).
    """
    loader = _BatchLoader(
        split,
        batch_size=batch_size,
        image_size=image_size,
        seed=seed,
        train=train,
        process_index=jax.process_index() if process_index is None else process_index,
        process_count=jax.process_count() if process_count is None else process_count,
    )
    dataset = grain.MapDataset.range(start, stop).map(loader)
    iterator = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    )
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # A program's flags are the program's to parse.
            raise RuntimeError(
                "num_workers > 0 starts grain's worker processes, which read absl flags: "
                "parse them first (absl.app.run, or flags.FLAGS.mark_as_parsed() in a "
                "notebook)"
            )
        iterator = iterator.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(iterator)


def to_global(batch: Batch, sharding: jax.sharding.Sharding) -> dict[str, jax.Array]:
    """Assembles every process's local slices into global arrays sharded over the batch."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value) for key, value in batch.items()
    }


class TimedBatches:
    """The batch iterator, timing how long the loop waits for each batch.

    The train step is dispatched asynchronously, so the loop only waits here when input is
    slower than the accelerator: a large wait fraction means the run is input-bound.
    """

    def __init__(self, batches):
        self._batches = iter(batches)
        self._waited, self._count, self._since = 0.0, 0, time.perf_counter()

    def __iter__(self):
        return self

    def __next__(self):
        start = time.perf_counter()
        batch = next(self._batches)
        self._waited += time.perf_counter() - start
        self._count += 1
        return batch

    def take_scalars(self) -> dict[str, float]:
        """The mean wait per step and the waited fraction of the time since the last call."""
        elapsed = max(time.perf_counter() - self._since, 1e-9)
        scalars = {
            "train/input_wait_ms": 1000.0 * self._waited / max(self._count, 1),
            "train/input_wait_fraction": self._waited / elapsed,
        }
        self._waited, self._count, self._since = 0.0, 0, time.perf_counter()
        return scalars
