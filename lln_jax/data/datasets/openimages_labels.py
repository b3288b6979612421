"""OpenImages V3's observed labels from `annotations-human.csv`, streamed and kept sparse.

SPEC.md section 12: the rows are the split's ImageIDs in ascending string order; for each
trainable class (file order of `classes-trainable.txt` is the class index), +1 where a
Confidence-1 row exists (it wins over a conflicting Confidence-0 row; conflicts are
counted), -1 where only Confidence-0 rows exist, 0 elsewhere. Rows of other classes are
dropped; an image with no trainable row stays as an all-unobserved row unless
`require_trainable` drops it. Nothing here holds a dense `[N, C]` matrix: the labels are
CSR arrays, O(the number of labels).
"""

import csv
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TextIO

import numpy as np

HEADER = ("ImageID", "Source", "LabelName", "Confidence")


class SparseLabels(NamedTuple):
    """Observed labels in CSR form, one row per image.

    Attributes:
      image_ids: `[N]` the rows' ImageIDs, ascending.
      indptr: `[N + 1]` int64; row `i`'s labels are `indptr[i]:indptr[i + 1]`.
      classes: `[L]` int32 class indices, ascending within a row.
      values: `[L]` int8, +1 (verified present) or -1 (verified absent).
      num_classes: C.
      conflicts: (image, class) pairs with both a Confidence-1 and a Confidence-0 row.
      without_trainable: images listed with no trainable row (kept unless required).
    """

    image_ids: np.ndarray
    indptr: np.ndarray
    classes: np.ndarray
    values: np.ndarray
    num_classes: int
    conflicts: int
    without_trainable: int

    def dense_rows(self, rows: np.ndarray) -> np.ndarray:
        """`[len(rows), C]` int8 labels of the given rows only (a batch's)."""
        out = np.zeros((len(rows), self.num_classes), np.int8)
        for out_row, row in enumerate(rows):
            start, stop = self.indptr[row], self.indptr[row + 1]
            out[out_row, self.classes[start:stop]] = self.values[start:stop]
        return out


def read_annotations(stream: TextIO) -> Iterable[tuple[str, str, str]]:
    """`(ImageID, LabelName, Confidence)` of each row of an `annotations-human.csv`."""
    reader = csv.reader(stream)
    header = tuple(next(reader, ()))
    if header != HEADER:
        raise ValueError(f"annotations-human.csv must start with {','.join(HEADER)}, got {header}")
    for line, row in enumerate(reader, start=2):
        if len(row) != len(HEADER):
            raise ValueError(f"annotations-human.csv line {line}: {len(row)} fields, not 4")
        yield row[0], row[2], row[3]


def observed_labels(
    trainable: Sequence[str],
    annotations: Iterable[tuple[str, str, str]],
    *,
    require_trainable: bool = False,
) -> SparseLabels:
    """The SPEC's label encoding of one split, from its annotation rows (any order)."""
    class_index = {name: index for index, name in enumerate(trainable)}
    if len(class_index) != len(trainable):
        raise ValueError("classes-trainable.txt lists a class twice")
    all_images, positive, negative = set(), set(), set()
    for image_id, label_name, confidence in annotations:
        all_images.add(image_id)
        index = class_index.get(label_name)
        if index is None:
            continue
        if confidence not in ("0", "1"):
            raise ValueError(f"{image_id} {label_name}: Confidence {confidence!r} is not 0 or 1")
        (positive if confidence == "1" else negative).add((image_id, index))
    conflicts = len(positive & negative)
    signs = dict.fromkeys(negative - positive, -1) | dict.fromkeys(positive, 1)
    labelled = {image_id for image_id, _ in signs}
    image_ids = sorted(labelled if require_trainable else all_images)
    row_of = {image_id: row for row, image_id in enumerate(image_ids)}
    keys = sorted(signs, key=lambda key: (row_of[key[0]], key[1]))
    counts = np.bincount([row_of[image_id] for image_id, _ in keys], minlength=len(image_ids))
    return SparseLabels(
        image_ids=np.asarray(image_ids, dtype=object),
        indptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        classes=np.asarray([index for _, index in keys], np.int32),
        values=np.asarray([signs[key] for key in keys], np.int8),
        num_classes=len(trainable),
        conflicts=conflicts,
        without_trainable=len(all_images) - len(labelled),
    )
