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
import queue
import threading
import time
from collections.abc import Iterator

import grain
import jax
import numpy as np
from absl import flags

from lln_jax.data import preprocessing
from lln_jax.data.labeled_splits import Split

Batch = dict[str, np.ndarray]


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
    """Assembles every process's local slices into global arrays sharded over the batch.

    The whole batch in one call: on one process it is one batched transfer, not one per
    array (a fifth of the loop's host time per step on a small model).
    """
    return jax.make_array_from_process_local_data(sharding, batch)


class _End:
    """What the prefetch thread leaves in the queue last: the end, or the error it met."""

    def __init__(self, error: BaseException | None = None):
        self.error = error


class DevicePrefetch:
    """Global batches assembled `size` ahead in a thread, so that the loop's thread only
    dispatches: the input iterator's bookkeeping and the host-to-device transfer (together
    over half the loop's host time per step on a small model) overlap the steps.

    The batches and their order are those of `batches`; an error in the input is raised by
    the `next` that would have returned the batch. Use as a context manager, or `close()`:
    a loop that stops early stops the thread.
    """

    def __init__(self, batches, sharding: jax.sharding.Sharding, size: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=size)
        self._closed = threading.Event()
        self._end: _End | None = None
        self._thread = threading.Thread(
            target=self._fill, args=(iter(batches), sharding), name="device-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fill(self, batches, sharding) -> None:
        try:
            for batch in batches:
                if not self._put(to_global(batch, sharding)):
                    return
        except BaseException as error:  # Re-raised in the loop's thread, by `__next__`.
            self._put(_End(error))
            return
        self._put(_End())

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, jax.Array]:
        item = self._end or self._queue.get()
        if isinstance(item, _End):
            self._end = item
            if item.error is not None:
                raise item.error
            raise StopIteration
        return item

    def close(self) -> None:
        self._closed.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


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
