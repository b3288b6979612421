"""The common part of the builders over files the user downloads by hand (a manual dir).

A builder reads its labels from the official files into rows of `(image path, label
vector)` in the official code's row order; this base class checks that the files are where
the instructions say, decodes every image once (a corrupt file is an error that names it,
never a silent skip), and writes the original encoded bytes with the label vector and a
stable example id (the row). TFDS writes into an `incomplete.*` directory and renames it
only when every split is complete, so a failed preparation never looks finished.
"""

import abc
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from lln_jax.data import preprocessing

Rows = list[tuple[epath.Path, np.ndarray]]


class ManualBuilder(tfds.core.GeneratorBasedBuilder):
    """Base: subclasses set the class attributes and implement `read_split`.

    Attributes:
      NUM_CLASSES: the length of the label vector (None: read from the files).
      EXPECTED_COUNTS: rows per split in the full data set (SPEC.md section 4), checked
        before anything is written unless the builder is made with `check_counts=False`.
      REQUIRED_FILES: paths (relative to the manual dir) that must exist.
      SOURCE_SPLITS: our split name -> the official split it is read from.
      MANUAL_DOWNLOAD_INSTRUCTIONS: what to download, from where, and where to put it.
    """

    VERSION = tfds.core.Version("1.0.0")
    NUM_CLASSES: int | None = None
    EXPECTED_COUNTS: dict[str, int] = {}
    REQUIRED_FILES: Sequence[str] = ()
    SOURCE_SPLITS: dict[str, str] = {"train": "train", "test": "val"}

    def __init__(self, *, check_counts: bool = True, **kwargs):
        self.check_counts = check_counts
        super().__init__(**kwargs)

    @abc.abstractmethod
    def read_split(self, root: epath.Path, source_split: str) -> Rows:
        """`(image path, [C] label vector in {0, 1})` rows in the official row order."""

    def _features(self) -> dict:
        return {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "labels": tfds.features.Tensor(shape=(self.NUM_CLASSES,), dtype=np.int8),
            "example_id": np.int64,
        }

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=type(self).__doc__,
            features=tfds.features.FeaturesDict(self._features()),
            disable_shuffling=True,  # Records stay in row order.
        )

    def check_manual_dir(self, root: epath.Path) -> None:
        """Raises FileNotFoundError with the download instructions if a file is missing."""
        missing = [name for name in self.REQUIRED_FILES if not (root / name).exists()]
        if missing:
            raise FileNotFoundError(
                f"{self.name}: missing {', '.join(str(root / m) for m in missing)}.\n"
                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
            )

    def _split_generators(self, dl_manager):
        root = epath.Path(dl_manager.manual_dir)
        self.check_manual_dir(root)
        sources = self.SOURCE_SPLITS
        rows = {split: self.read_split(root, source) for split, source in sources.items()}
        for split, split_rows in rows.items():
            self._check_count(split, len(split_rows))
            logging.info("%s", label_report(f"{self.name} {split}", _labels_of(split_rows)))
        return {split: self._generate_examples(rows[split], sources[split]) for split in rows}

    def _check_count(self, split: str, count: int) -> None:
        expected = self.EXPECTED_COUNTS.get(split)
        if self.check_counts and expected is not None and count != expected:
            raise ValueError(
                f"{self.name} {split}: found {count} images, the spec expects {expected}; "
                "check the manual dir (or prepare with --nocheck_counts for a subset)"
            )

    def _generate_examples(self, rows: Rows, source_split: str) -> Iterator[tuple[int, dict]]:
        for row, (path, labels) in enumerate(rows):
            yield row, {**self._example(row, path, labels), **self.extra(source_split, row)}

    def extra(self, source_split: str, row: int) -> dict:
        """Features beyond image, labels and id that a subclass stores (none by default)."""
        del source_split, row
        return {}

    def _example(self, row: int, path: epath.Path, labels: np.ndarray) -> dict:
        try:
            encoded = path.read_bytes()
        except OSError as error:
            raise FileNotFoundError(f"{self.name}: cannot read image {path}: {error}") from error
        preprocessing.decode(encoded, name=str(path))  # Fails loudly on a corrupt file.
        return {"image": encoded, "labels": labels.astype(np.int8), "example_id": row}


def _labels_of(rows: Rows) -> np.ndarray:
    return np.stack([labels for _, labels in rows]) if rows else np.zeros((0, 0), np.int8)


def label_report(title: str, labels: np.ndarray) -> str:
    """Images, positives per image, images without a positive, and per-class counts."""
    if labels.size == 0:
        return f"{title}: no images"
    per_class = labels.sum(axis=0)
    return (
        f"{title}: {len(labels)} images, {labels.shape[1]} classes, "
        f"{labels.sum(axis=1).mean():.2f} positives per image, "
        f"{int((labels.sum(axis=1) == 0).sum())} images without a positive; "
        f"positives per class: {' '.join(str(int(c)) for c in per_class)}"
    )


def label_matrix(positives: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """Rows of positive class indices -> an `[N, C]` int8 matrix in {0, 1}."""
    matrix = np.zeros((len(positives), num_classes), np.int8)
    for row, classes in enumerate(positives):
        matrix[row, list(classes)] = 1
    return matrix
