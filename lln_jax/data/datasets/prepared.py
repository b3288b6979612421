"""What a preparation writes beside TFDS's files, so that a run starts without reading images.

- `preparation.json`: whether the image counts were checked against the spec, the manual
  dir, the record count of every split, and for every split its label file's name, record
  count and sha256.
- `labels-<split>.npz`: the split's label matrices in record order: `labels` `[N, C]` int8,
  `example_id` `[N]`, and `labels_obs` `[N, C]` where the data set stores observed labels.

A run reads only the label files (megabytes, where the records are gigabytes of images) and
checks each against its checksum and against the number of records; a stale, edited or
mismatching file is refused with the command that rewrites it. Every path goes through
`etils.epath`, so a `gs://` data dir works the same way.
"""

import hashlib
import io
import json
from typing import Any

import numpy as np
from etils import epath

from lln_jax.run.atomic_write import write_atomic

RECORD = "preparation.json"
LABEL_KEYS = ("labels", "example_id", "labels_obs")


class LabelFileError(ValueError):
    """A label file is missing, stale or does not match the records."""


def _directory(data_builder) -> epath.Path:
    return epath.Path(data_builder.data_dir)


def read_record(data_builder) -> dict[str, Any] | None:
    """The preparation record, or None for data prepared before records existed."""
    path = _directory(data_builder) / RECORD
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        message = f"{path} is not valid JSON ({error}); run the preparation again"
        raise ValueError(message) from error


def write_record(data_builder, record: dict[str, Any]) -> None:
    path = _directory(data_builder) / RECORD
    write_atomic(path, json.dumps(record, indent=2, sort_keys=True) + "\n")


def labels_from_records(source: Any, key: str = "labels") -> np.ndarray:
    """`[len(source)]` + shape of `key`, read record by record (images included: slow)."""
    if len(source) and key not in source[0]:
        raise KeyError(f"the data set stores no {key!r}")
    return np.stack([np.asarray(source[row][key]) for row in range(len(source))])


def write_label_files(data_builder, sources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Reads every split's labels from its records once; writes `labels-<split>.npz`.

    Returns:
      The record's `label_files` entry: per split its file name, record count and sha256.
    """
    entries = {}
    for split, source in sources.items():
        keys = [k for k in LABEL_KEYS if not len(source) or k in source[0]]
        arrays = {key: labels_from_records(source, key) for key in keys}
        arrays["labels"] = arrays["labels"].astype(np.int8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
        name = f"labels-{split}.npz"
        write_atomic(_directory(data_builder) / name, payload)
        entries[split] = {
            "file": name,
            "count": len(source),
            "sha256": hashlib.sha256(payload).hexdigest(),
        }
    return entries


def has_label_files(data_builder) -> bool:
    record = read_record(data_builder)
    return bool(record and record.get("label_files"))


def bad_label_files(data_builder) -> list[str]:
    """The label files the record lists that are missing or do not match their checksum
    (every split's file when the record lists none)."""
    directory, record = _directory(data_builder), read_record(data_builder) or {}
    entries = record.get("label_files") or {}
    if not entries:
        return [f"labels-{split}.npz" for split in data_builder.info.splits]
    bad = []
    for entry in entries.values():
        path = directory / entry["file"]
        payload = path.read_bytes() if path.exists() else b""
        if hashlib.sha256(payload).hexdigest() != entry["sha256"]:
            bad.append(entry["file"])
    return bad


def read_labels(
    data_builder, split: str, *, num_records: int, rewrite_command: str
) -> dict[str, np.ndarray]:
    """The label matrices of `split`, checked against their checksum and the record count.

    Raises:
      LabelFileError: no label file (data prepared before they existed), a checksum that
        differs (a stale or edited file), or counts that differ from the records'; the
        message names the file and gives `rewrite_command`.
    """
    directory = _directory(data_builder)
    entry = ((read_record(data_builder) or {}).get("label_files") or {}).get(split)
    if entry is None:
        raise LabelFileError(
            f"{directory} holds no label file for split {split!r} (prepared by an older "
            f"version); write them once with `{rewrite_command}`"
        )
    path = directory / entry["file"]
    payload = path.read_bytes() if path.exists() else b""
    if hashlib.sha256(payload).hexdigest() != entry["sha256"]:
        raise LabelFileError(
            f"{path} is missing or does not match its checksum in {directory / RECORD} (stale "
            f"or edited); rewrite it with `{rewrite_command}`"
        )
    with np.load(io.BytesIO(payload)) as loaded:
        arrays = {key: loaded[key] for key in loaded.files}
    counts = {len(arrays["labels"]), entry["count"], num_records}
    if len(counts) != 1:
        raise LabelFileError(
            f"{path} holds {len(arrays['labels'])} rows, its record says {entry['count']} and "
            f"the split has {num_records} records; rewrite it with `{rewrite_command}`"
        )
    return arrays
