"""Data set registry: our name -> how TFDS finds (and, where possible, prepares) it.

Beside TFDS's files, a preparation writes `preparation.json` and the label files into the
builder's directory (`prepared.py`): whether the image counts were checked against the
spec, from which manual dir, and every split's label matrices with their checksums. A subset
prepared with `check_counts=False` can then never pass for the full data set, and a run
starts from the label files without reading an image.
"""

from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from lln_jax.data import image_storage
from lln_jax.data.datasets import (
    coco,
    cub,
    digit_mosaics,
    formatted,
    prepared,
    records,
    resized,
    staging,
    voc,
)
from lln_jax.data.datasets.manual import ManualBuilder


class DatasetSpec(NamedTuple):
    """How a data set is stored.

    Attributes:
      builder_cls: the TFDS builder class.
      builder_config: the name of its builder config, if it has several.
      train_split: the official train split, cut into train and val.
      test_split: the split reported as test (the official val or test split).
      needs_download: False where `prepare` builds it from files inside a package.
    """

    builder_cls: type[tfds.core.DatasetBuilder]
    builder_config: str | None
    train_split: str
    test_split: str
    needs_download: bool


DATASETS: dict[str, DatasetSpec] = {
    "digit_mosaics": DatasetSpec(digit_mosaics.DigitMosaics, "full", "train", "test", False),
    "digit_mosaics_small": DatasetSpec(digit_mosaics.DigitMosaics, "small", "train", "test", False),
    "voc2012": DatasetSpec(voc.Voc2012, None, "train", "test", True),
    "coco2014": DatasetSpec(coco.Coco2014, None, "train", "test", True),
    "cub": DatasetSpec(cub.Cub, None, "train", "test", True),
    "nuswide": DatasetSpec(formatted.NusWide, None, "train", "test", True),
    "formatted": DatasetSpec(formatted.Formatted, None, "train", "test", True),
}


def get(name: str) -> DatasetSpec:
    """The spec of data set `name`; an unknown name lists the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; valid data sets: {sorted(DATASETS)}")
    return DATASETS[name]


def stated_size(name: str, val_frac: float) -> tuple[int | None, int | None]:
    """(classes, train rows after the val cut) as data set `name` states them, without its
    files; None where it states none (a data set of the user's own)."""
    builder_cls = get(name).builder_cls
    official = getattr(builder_cls, "EXPECTED_COUNTS", {}).get("train")
    return getattr(builder_cls, "NUM_CLASSES", None), official and round(official * (1 - val_frac))


def builder(name: str, data_dir: str | None, *, check_counts: bool = True):
    """The TFDS builder of `name` over `data_dir` (TFDS's default directory when None)."""
    spec = get(name)
    options = {"check_counts": check_counts} if issubclass(spec.builder_cls, ManualBuilder) else {}
    return spec.builder_cls(
        config=spec.builder_config, data_dir=data_dir, file_format="array_record", **options
    )


PREPARATION_RECORD = prepared.RECORD
# What refuses a run before it starts, with the command that fixes it.
NOT_READY_ERRORS = (prepared.LabelFileError, resized.StoreError)


class DataNotPreparedError(FileNotFoundError):
    """A data set that needs downloaded files is not prepared; the message says how."""


class LabeledSource(NamedTuple):
    """Records and their label matrices (read once, without the images).

    Attributes:
      source: records with `image` (encoded bytes), indexable by row.
      labels: `labels` `[N, C]` {0, 1}, and `labels_obs` `[N, C]` where the data stores them.
    """

    source: Any
    labels: dict[str, np.ndarray]


def _expected_counts(data_builder) -> dict[str, int]:
    return getattr(data_builder, "EXPECTED_COUNTS", {})


def _split_counts(data_builder) -> dict[str, int]:
    return {split: info.num_examples for split, info in data_builder.info.splits.items()}


def _sources(data_builder) -> dict[str, Any]:
    decoders = {"image": tfds.decode.SkipDecoding()}
    return {
        split: data_builder.as_data_source(split=split, decoders=decoders)
        for split in data_builder.info.splits
    }


def _write_preparation(data_builder, *, counts_checked: bool, manual_dir: str | None) -> None:
    """The preparation record and the label files (one read of every record)."""
    label_files = prepared.write_label_files(data_builder, _sources(data_builder))
    prepared.write_record(
        data_builder,
        {
            "counts_checked": counts_checked,
            "manual_dir": manual_dir,
            "counts": _split_counts(data_builder),
            "label_files": label_files,
        },
    )


def _upgrade(name: str, data_builder) -> None:
    """Writes the label files of data prepared before they existed, keeping its record."""
    logging.info("%s: writing the label files once (reads every record)", name)
    record = prepared.read_record(data_builder)
    counts_checked = (
        record["counts_checked"]
        if record is not None
        else all(
            _split_counts(data_builder).get(s) == n
            for s, n in _expected_counts(data_builder).items()
        )
    )
    manual_dir = None if record is None else record.get("manual_dir")
    _write_preparation(data_builder, counts_checked=counts_checked, manual_dir=manual_dir)


def _remove_stale_incomplete(data_builder) -> None:
    """Removes `incomplete.*` directories that a killed preparation left beside this one."""
    version_dir = epath.Path(data_builder.data_dir)
    pattern = f"{tfds.core.constants.INCOMPLETE_PREFIX}*_{version_dir.name}"
    for stale in version_dir.parent.glob(pattern):
        logging.info("Removing %s, left by an interrupted preparation", stale)
        stale.rmtree()


def check_counts_verified(name: str, data_builder) -> None:
    """Refuses prepared data whose image counts are not known to be the spec's.

    Raises:
      ValueError: naming the data dir and how it was prepared, if it was prepared with
        `check_counts=False` (a subset), or if it carries no record and its counts differ.
    """
    expected = _expected_counts(data_builder)
    record = prepared.read_record(data_builder)
    if not expected or (record is not None and record["counts_checked"]):
        return
    counts = _split_counts(data_builder)
    if record is None and all(counts.get(s) == n for s, n in expected.items()):
        return
    how = (
        f"prepared with --nocheck_counts from {record['manual_dir']}"
        if record is not None
        else "prepared without a record of a count check"
    )
    raise ValueError(
        f"{data_builder.data_dir} holds {name} {how}: {counts} images per split, the spec "
        f"expects {expected}. To train on this subset anyway set "
        "--config.data.allow_unchecked_counts=True; for the full data set delete that "
        f"directory and run `python -m lln_jax.prepare {name} --manual_dir=DIR`."
    )


def prepare(
    name: str,
    data_dir: str | None,
    *,
    manual_dir: str | None = None,
    check_counts: bool = True,
    upgrade: bool = True,
) -> tfds.core.DatasetBuilder:
    """Prepares `name` once (from a package, or from the files in `manual_dir`).

    With `check_counts`, data prepared earlier must have had its counts checked too; with
    `upgrade`, label files missing or stale (checked against their checksums) are written
    again (one read of every record). A bucket gets the prepared data through a local
    directory (`staging.py`), without TFDS's downloads.

    Raises:
      FileNotFoundError: a data set that needs downloaded files is not prepared and no
        `manual_dir` is given, or the manual dir lacks a file (the message says what to
        download, from where, and where to put it).
      ValueError: the number of images differs from the spec's (with `check_counts`), now
        or when the data was prepared.
    """
    spec, data_builder = get(name), builder(name, data_dir, check_counts=check_counts)
    if data_builder.is_prepared():
        if check_counts:
            check_counts_verified(name, data_builder)
        bad = prepared.bad_label_files(data_builder) if upgrade else []
        if bad:
            logging.warning("%s: %s missing or stale; rewriting", name, ", ".join(bad))
            _upgrade(name, data_builder)
        return data_builder
    if spec.needs_download and manual_dir is None:
        raise DataNotPreparedError(
            f"data set {name!r} is not prepared under {data_builder.data_dir}; run "
            f"`python -m lln_jax.prepare {name} --manual_dir=DIR` first.\n"
            f"{spec.builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    if spec.needs_download:
        data_builder.check_manual_dir(epath.Path(manual_dir))
    with staging.staged(data_builder.data_dir_root, skip=("downloads",)) as local_root:
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        local = builder(name, local_root, check_counts=check_counts)
        local.download_and_prepare(download_config=config)
        counts_checked = check_counts or not _expected_counts(local)
        _write_preparation(local, counts_checked=counts_checked, manual_dir=manual_dir)
    data_builder = builder(name, data_dir, check_counts=check_counts)
    _remove_stale_incomplete(data_builder)
    return data_builder


def write_resized(
    name: str, data_dir: str | None, storage: image_storage.Storage, *, num_threads: int = 8
) -> dict:
    """Writes the pre-resized store of prepared data set `name` (`resized.py`).

    Returns:
      The store's entry in the preparation record (per split: count and bytes).

    Raises:
      FileNotFoundError: the data set is not prepared yet (the message says how).
    """
    data_builder = builder(name, data_dir)
    if not data_builder.is_prepared():
        raise FileNotFoundError(
            f"{name} is not prepared under {data_builder.data_dir}; prepare it first "
            f"(`python -m lln_jax.prepare {name} --manual_dir=DIR`)"
        )
    return resized.write(data_builder, _sources(data_builder), storage, num_threads=num_threads)


def open_splits(
    name: str,
    data_dir: str | None,
    *,
    allow_unchecked_counts: bool = False,
    storage: image_storage.Storage | None = None,
) -> tuple[LabeledSource, LabeledSource]:
    """Prepares (where possible) and opens the `(train, test)` splits of `name`.

    Each is a `LabeledSource`: records (random access by row; `image` stays encoded, so that
    the input pipeline decodes and resizes it in one step) and the label matrices, read from
    the label files, never from an image. Data prepared without the count check is refused
    unless `allow_unchecked_counts`; data a package builds (the embedded benchmark) gets its
    label files here if it lacks them, other data by `python -m lln_jax.prepare`. With a
    `storage`, the images come from that pre-resized store, which must have been written.
    """
    spec = get(name)
    data_builder = prepare(
        name, data_dir, check_counts=not allow_unchecked_counts, upgrade=not spec.needs_download
    )
    command = f"python -m lln_jax.prepare {name} --data_dir={data_builder.data_dir_root}"
    manual = " --manual_dir=DIR" if spec.needs_download else ""
    sources = {
        split: records.named(data_builder, split, source, command + manual)
        for split, source in _sources(data_builder).items()
    }
    if storage is not None:
        store_command = f"{command} --image_size={storage.size} --storage={storage.encoding}"
        sources = {
            split: resized.open_split(
                data_builder, storage, split, num_records=len(source), command=store_command
            )
            for split, source in sources.items()
        }
    return tuple(
        LabeledSource(
            sources[split],
            prepared.read_labels(
                data_builder, split, num_records=len(sources[split]), rewrite_command=command
            ),
        )
        for split in (spec.train_split, spec.test_split)
    )
