"""Data set registry: our name -> how TFDS finds (and, where possible, prepares) it."""

from typing import NamedTuple

import tensorflow_datasets as tfds

from lln_jax.datasets import digit_mosaics


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
}


def get(name: str) -> DatasetSpec:
    """The spec of data set `name`; an unknown name lists the valid ones."""
    if name not in DATASETS:
        raise ValueError(f"Unknown data set {name!r}; valid data sets: {sorted(DATASETS)}")
    return DATASETS[name]


def builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `name` over `data_dir` (TFDS's default directory when None)."""
    spec = get(name)
    return spec.builder_cls(
        config=spec.builder_config, data_dir=data_dir, file_format="array_record"
    )


def prepare(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Prepares `name` where it needs no download; otherwise checks it is prepared."""
    spec, data_builder = get(name), builder(name, data_dir)
    if not spec.needs_download:
        data_builder.download_and_prepare()
    elif not data_builder.is_prepared():
        raise FileNotFoundError(
            f"data set {name!r} is not prepared under {data_builder.data_dir}; "
            f"run `python -m lln_jax.prepare {name}` first"
        )
    return data_builder


def open_splits(name: str, data_dir: str | None) -> tuple:
    """Prepares (where possible) and opens `(train_source, test_source)` of `name`.

    Sources are random-access by row; `image` stays encoded (bytes), so that the input
    pipeline decodes and resizes it in one step.
    """
    spec, data_builder = get(name), prepare(name, data_dir)
    decoders = {"image": tfds.decode.SkipDecoding()}
    return tuple(
        data_builder.as_data_source(split=split, decoders=decoders)
        for split in (spec.train_split, spec.test_split)
    )
