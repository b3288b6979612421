"""Pre-resized stores: every image stored once at the training size.

A run at 448 spends most of its input time decoding full-size JPEGs and resizing them;
`python -m lln_jax.prepare NAME --image_size=448 [--storage=jpeg95|raw]` does that once and
writes, beside the prepared data, one ArrayRecord file per split with each image already
resized and encoded (`image_storage.py`: JPEG of a given quality, or raw pixels).

A run with `--config.data.storage=jpeg95` then only decodes (and flips). The store is
`resized-<size>-<storage>/` in the builder's directory, listed in `preparation.json` with
each split's record count and bytes; it is written under a temporary name and listed only
when complete, so an interrupted preparation is never read. Re-preparing the data set
rewrites `preparation.json` and so drops the store.
"""

import concurrent.futures
import os
import time
from typing import Any

from absl import logging
from array_record.python import array_record_data_source, array_record_module
from etils import epath

from lln_jax.data import image_storage
from lln_jax.data.datasets import prepared, staging
from lln_jax.data.image_storage import Storage

_CHUNK = 256  # Images resized in parallel before being written in order.


class StoreError(ValueError):
    """The pre-resized store a run asks for is missing or does not match the records."""


def _write_split(source: Any, path: epath.Path, storage: Storage, split: str, pool) -> int:
    """Writes `split`'s images in row order; returns the bytes written."""
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
    total, started, count = 0, time.monotonic(), len(source)

    def one(row: int) -> bytes:
        return image_storage.encode(source[row]["image"], storage, name=f"{split} row {row}")

    for start in range(0, count, _CHUNK):
        for payload in pool.map(one, range(start, min(start + _CHUNK, count))):
            writer.write(payload)
            total += len(payload)
        done = min(start + _CHUNK, count)
        rate = done / max(time.monotonic() - started, 1e-9)
        logging.info(
            "%s %s: %d/%d images, %.0f/s, %.0f s left",
            storage.name, split, done, count, rate, (count - done) / rate,
        )  # fmt: skip
    writer.close()
    return total


def write(data_builder, sources: dict[str, Any], storage: Storage, *, num_threads: int) -> dict:
    """Writes the store of every split and lists it in the preparation record.

    Returns:
      The store's entry: size, encoding, and per split its file, count and bytes.
    """
    directory = epath.Path(data_builder.data_dir)
    final, partial = directory / storage.name, directory / f"{storage.name}.incomplete"
    for stale in (final, partial):
        if stale.exists():
            stale.rmtree()
    # A bucket has no directory rename (TF's GCS client copies object by object and fails on
    # a prefix): there the files go to their final place, and the record alone lists them.
    remote = staging.is_remote(directory)
    written_to = final if remote else partial
    written_to.mkdir(parents=True)
    splits = {}
    with (
        staging.staged(written_to) as local,
        concurrent.futures.ThreadPoolExecutor(num_threads) as pool,
    ):
        for split, source in sources.items():
            path = epath.Path(local) / f"{split}.array_record"
            written = _write_split(source, path, storage, split, pool)
            splits[split] = {"file": path.name, "count": len(source), "bytes": written}
    if not remote:
        partial.rename(final)
    entry = {"size": storage.size, "encoding": storage.encoding, "splits": splits}
    record = prepared.read_record(data_builder) or {}
    record.setdefault("resized", {})[storage.name] = entry
    prepared.write_record(data_builder, record)
    return entry


def entry(data_builder, storage: Storage) -> dict | None:
    """The store's entry in the preparation record, or None if it was not written."""
    return ((prepared.read_record(data_builder) or {}).get("resized") or {}).get(storage.name)


class ResizedSource:
    """A split's pre-resized images by row, as records with one key, `image`."""

    def __init__(self, path: epath.Path):
        self._records = array_record_data_source.ArrayRecordDataSource([os.fspath(path)])

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, row: int) -> dict[str, bytes]:
        return {"image": self._records[row]}


def open_split(
    data_builder, storage: Storage, split: str, *, num_records: int, command: str
) -> ResizedSource:
    """The store's images of `split`, checked against its record and the split's records.

    Raises:
      StoreError: the store was never written (or the data set was prepared again since),
        or its file is missing or holds another number of images; the message gives `command`.
    """
    directory = epath.Path(data_builder.data_dir) / storage.name
    split_entry = ((entry(data_builder, storage) or {}).get("splits") or {}).get(split)
    if split_entry is None:
        raise StoreError(
            f"{data_builder.data_dir} holds no {storage.name} store for split {split!r}; "
            f"write it once with `{command}`"
        )
    path = directory / split_entry["file"]
    if not path.exists():
        raise StoreError(f"{path} is missing; rewrite the store with `{command}`")
    source = ResizedSource(path)
    if not split_entry["count"] == len(source) == num_records:
        raise StoreError(
            f"{path} holds {len(source)} images (its record says {split_entry['count']}) "
            f"where the split has {num_records} records; "
            f"rewrite it with `{command}`"
        )
    return source
