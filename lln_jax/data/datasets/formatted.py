"""Data sets given as the official code's formatted files, and NUS-WIDE in that form.

The manual dir holds `formatted_{train,val}_images.npy` (image paths relative to the
manual dir's `images/` folder, in row order), `formatted_{train,val}_labels.npy` (`[N, C]`
in {0, 1}) and, optionally, `formatted_train_labels_obs.npy` (`[N, C]` in {-1, 0, 1}), the
official observed labels, which are stored too (`label_setting='stored'` trains on them
instead of sampling them). `train` is cut into train and val; `val` is the test set.
Anyone who already has these files uses them as they are.
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from lln_jax.data.datasets import manual

_FILES = (
    "formatted_train_images.npy", "formatted_train_labels.npy",
    "formatted_val_images.npy", "formatted_val_labels.npy", "images",
)  # fmt: skip


class Formatted(manual.ManualBuilder):
    """The official code's formatted `.npy` files over an image folder."""

    REQUIRED_FILES = _FILES
    SOURCE_SPLITS = {"train": "train", "test": "val"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put formatted_{train,val}_{images,labels}.npy (and, optionally, "
        "formatted_train_labels_obs.npy) in the manual dir, and the images they name under "
        "its images/ folder."
    )

    def __init__(self, **kwargs):
        self._observed: dict[str, np.ndarray] = {}  # Filled by read_split, per source split.
        super().__init__(**kwargs)

    def _features(self) -> dict:
        features = super()._features()
        features["labels_obs"] = tfds.features.Tensor(shape=(self.NUM_CLASSES,), dtype=np.int8)
        return features

    def read_split(self, root: epath.Path, source_split: str) -> manual.Rows:
        names = _load_npy(root / f"formatted_{source_split}_images.npy")
        labels = _load_npy(root / f"formatted_{source_split}_labels.npy")
        if len(names) != len(labels) or labels.ndim != 2:
            raise ValueError(
                f"{self.name} {source_split}: {len(names)} image names but labels of shape "
                f"{labels.shape}"
            )
        if self.NUM_CLASSES is not None and labels.shape[1] != self.NUM_CLASSES:
            raise ValueError(f"{self.name}: {labels.shape[1]} classes, expected {self.NUM_CLASSES}")
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{self.name} {source_split}: labels must be in {{0, 1}}")
        self._observed[source_split] = self._read_observed(root, source_split, labels.shape)
        return [(root / "images" / str(n), row) for n, row in zip(names, labels, strict=True)]

    def extra(self, source_split: str, row: int) -> dict:
        return {"labels_obs": self._observed[source_split][row]}

    def _read_observed(self, root: epath.Path, source_split: str, shape) -> np.ndarray:
        path = root / f"formatted_{source_split}_labels_obs.npy"
        if not path.exists():
            return np.zeros(shape, np.int8)
        observed = _load_npy(path)
        if observed.shape != shape or not np.isin(observed, (-1, 0, 1)).all():
            raise ValueError(f"{path}: must be {shape} in {{-1, 0, 1}}, got {observed.shape}")
        return observed.astype(np.int8)


class NusWide(Formatted):
    """NUS-WIDE (81 concepts) in Cole et al.'s re-crawl, from their formatted files."""

    NUM_CLASSES = 81
    EXPECTED_COUNTS = {"train": 150000, "test": 60260}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "NUS-WIDE is not downloadable from its authors any more: get Cole et al.'s re-crawl "
        "(formatted_{train,val}_{images,labels}.npy and the image folder) as described at "
        "https://github.com/elijahcole/single-positive-multi-label, put the .npy files in "
        "the manual dir and the images under its images/ folder."
    )


def _load_npy(path: epath.Path) -> np.ndarray:
    """A `.npy` file through epath (a local path or a `gs://` one)."""
    return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
