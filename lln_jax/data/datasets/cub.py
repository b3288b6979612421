"""CUB-200-2011 with its 312 binary attributes as labels, from the official archive.

As the official code formats it: the `is_present` column of
`attributes/image_attribute_labels.txt` (certainty ignored), `train_test_split.txt` decides
the split, rows in image-id order. Train is the official train split (5,994 images, cut
into train and val), test the official test split (5,794).
"""

import numpy as np
from etils import epath

from lln_jax.data.datasets import manual

NUM_ATTRIBUTES = 312
ROOT = epath.Path("CUB_200_2011")


class Cub(manual.ManualBuilder):
    """CUB-200-2011 attribute prediction (312 attributes)."""

    NUM_CLASSES = NUM_ATTRIBUTES
    EXPECTED_COUNTS = {"train": 5994, "test": 5794}
    REQUIRED_FILES = (
        str(ROOT / "images.txt"),
        str(ROOT / "train_test_split.txt"),
        str(ROOT / "attributes/image_attribute_labels.txt"),
        str(ROOT / "images"),
    )
    SOURCE_SPLITS = {"train": "1", "test": "0"}  # The `is_training_image` flag.
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download CUB_200_2011.tgz from https://data.caltech.edu/records/65de6-vzc84 and "
        "extract it into the manual dir, so that it holds CUB_200_2011/{images.txt,"
        "train_test_split.txt,attributes/image_attribute_labels.txt,images/}."
    )

    def read_split(self, root: epath.Path, source_split: str) -> manual.Rows:
        base = root / ROOT
        paths = dict(_pairs(base / "images.txt"))
        is_train = dict(_pairs(base / "train_test_split.txt"))
        image_ids = sorted((i for i, flag in is_train.items() if flag == source_split), key=int)
        row_of = {image_id: row for row, image_id in enumerate(image_ids)}
        labels = np.zeros((len(image_ids), NUM_ATTRIBUTES), np.int8)
        with (base / "attributes/image_attribute_labels.txt").open() as lines:
            for line in lines:
                # <image_id> <attribute_id> <is_present> <certainty_id> <time>; a few lines of
                # the official file carry an extra field, so only the first three are read.
                fields = line.split()
                if len(fields) >= 3 and fields[0] in row_of and fields[2] == "1":
                    labels[row_of[fields[0]], int(fields[1]) - 1] = 1
        images = [base / "images" / paths[i] for i in image_ids]
        return list(zip(images, labels, strict=True))


def _pairs(path: epath.Path) -> list[tuple[str, str]]:
    """`<id> <value>` lines -> pairs of strings."""
    return [tuple(line.split(maxsplit=1)) for line in path.read_text().splitlines() if line.strip()]
