"""The embedded benchmark: multi-label mosaics of real handwritten digits, as a TFDS builder.

Each image tiles `GRID x GRID` of scikit-learn's bundled 8x8 handwritten digits (1,797 real
scans, shipped inside the package, so nothing is downloaded); its label vector marks the
digits present. With 4 cells an image has about 3.4 positives of 10, so the single-positive
protocol leaves about 2.4 false negatives per image: a hard case for assume-negative
training, which learns to call present digits absent. The source digits of the `train`
split (cut into train/val by the spec's split) and of the `test` split are disjoint.
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets

NUM_CLASSES = 10
GRID = 2
CELL = 8  # scikit-learn's digits are 8x8 with values 0..16.
TEST_POOL_FRACTION = 1 / 3
POOL_SEED, TRAIN_SEED, TEST_SEED = 0, 1, 2


def _disjoint_pools(num_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """Splits the digit scans into a train pool and a test pool that share no image."""
    perm = np.random.RandomState(POOL_SEED).permutation(num_digits)
    num_test = round(TEST_POOL_FRACTION * num_digits)
    return np.sort(perm[num_test:]), np.sort(perm[:num_test])


def mosaic(cells: np.ndarray) -> np.ndarray:
    """`[GRID*GRID, 8, 8]` digit scans in 0..16 -> `[8*GRID, 8*GRID, 3]` uint8 RGB."""
    rows = [np.concatenate(list(cells[r * GRID : (r + 1) * GRID]), axis=1) for r in range(GRID)]
    gray = np.round(np.concatenate(rows, axis=0) * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(gray[:, :, None], 3, axis=2)


@dataclasses.dataclass
class DigitMosaicsConfig(tfds.core.BuilderConfig):
    """How many mosaics each split holds."""

    num_train: int = 3000
    num_test: int = 1000


class DigitMosaics(tfds.core.GeneratorBasedBuilder):
    """Mosaics of handwritten digits with the set of digits present as labels."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "2x2 mosaics of scikit-learn's digits."}
    BUILDER_CONFIGS = [
        DigitMosaicsConfig(name="full", description="3,000 train and 1,000 test mosaics."),
        DigitMosaicsConfig(
            name="small",
            description="300 train and 200 test mosaics, for smoke runs.",
            num_train=300,
            num_test=200,
        ),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        size = CELL * GRID
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "labels": tfds.features.Tensor(shape=(NUM_CLASSES,), dtype=np.int8),
                    "example_id": np.int64,
                }
            ),
            # Records stay in key (= row) order: the weak-label protocol walks rows in order.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The digits ship inside scikit-learn.
        digits = sklearn_datasets.load_digits()
        train_pool, test_pool = _disjoint_pools(len(digits.target))
        return {
            "train": self._generate_examples(
                digits, train_pool, self.builder_config.num_train, TRAIN_SEED
            ),
            "test": self._generate_examples(
                digits, test_pool, self.builder_config.num_test, TEST_SEED
            ),
        }

    def _generate_examples(self, digits, pool: np.ndarray, count: int, seed: int):
        rng = np.random.RandomState(seed)
        for row in range(count):
            picks = rng.choice(pool, GRID * GRID)
            labels = np.zeros(NUM_CLASSES, np.int8)
            labels[digits.target[picks]] = 1
            yield row, {"image": mosaic(digits.images[picks]), "labels": labels, "example_id": row}
