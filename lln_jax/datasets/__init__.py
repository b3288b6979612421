"""Data set registry: our name -> how TFDS finds (and, where possible, prepares) it."""

import pathlib
from typing import NamedTuple

import tensorflow_datasets as tfds

from lln_jax.datasets import coco, cub, digit_mosaics, formatted, voc
from lln_jax.datasets.manual import ManualBuilder


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


def builder(name: str, data_dir: str | None, *, check_counts: bool = True):
    """The TFDS builder of `name` over `data_dir` (TFDS's default directory when None)."""
    spec = get(name)
    options = {"check_counts": check_counts} if issubclass(spec.builder_cls, ManualBuilder) else {}
    return spec.builder_cls(
        config=spec.builder_config, data_dir=data_dir, file_format="array_record", **options
    )


def prepare(
    name: str,
    data_dir: str | None,
    *,
    manual_dir: str | None = None,
    check_counts: bool = True,
) -> tfds.core.DatasetBuilder:
    """Prepares `name` once (from a package, or from the files in `manual_dir`).

    Raises:
      FileNotFoundError: a data set that needs downloaded files is not prepared and no
        `manual_dir` is given, or the manual dir lacks a file (the message says what to
        download, from where, and where to put it).
      ValueError: the number of images differs from the spec's (with `check_counts`).
    """
    spec, data_builder = get(name), builder(name, data_dir, check_counts=check_counts)
    if data_builder.is_prepared():
        return data_builder
    if not spec.needs_download:
        data_builder.download_and_prepare()
        return data_builder
    if manual_dir is None:
        raise FileNotFoundError(
            f"data set {name!r} is not prepared under {data_builder.data_dir}; run "
            f"`python -m lln_jax.prepare {name} --manual_dir=DIR` first.\n"
            f"{spec.builder_cls.MANUAL_DOWNLOAD_INSTRUCTIONS}"
        )
    data_builder.check_manual_dir(pathlib.Path(manual_dir))
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    data_builder.download_and_prepare(download_config=download_config)
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
