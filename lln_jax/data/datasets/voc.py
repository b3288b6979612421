"""Pascal VOC 2012 (20 classes), from the official devkit in a manual dir.

As the official code formats it: for each split, the per-class files
`ImageSets/Main/<class>_<split>.txt` mark an image 1 (present), 0 (only "difficult"
instances) or -1 (absent); a class is positive only where the file says 1. Images without
a positive are dropped; rows are sorted by file name. Train is the official `train` split
(5,717 images, cut into train and val), test the official `val` split (5,823).
"""

from etils import epath

from lln_jax.data.datasets import manual

CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
DEVKIT = epath.Path("VOCdevkit/VOC2012")


class Voc2012(manual.ManualBuilder):
    """Pascal VOC 2012 classification, single-label-per-file formatting of the official code."""

    NUM_CLASSES = len(CLASS_NAMES)
    EXPECTED_COUNTS = {"train": 5717, "test": 5823}
    REQUIRED_FILES = (
        str(DEVKIT / "ImageSets/Main/aeroplane_train.txt"),
        str(DEVKIT / "ImageSets/Main/aeroplane_val.txt"),
        str(DEVKIT / "JPEGImages"),
    )
    SOURCE_SPLITS = {"train": "train", "test": "val"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download VOCtrainval_11-May-2012.tar from "
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and extract it into the manual dir, "
        "so that it holds VOCdevkit/VOC2012/{ImageSets,JPEGImages}."
    )

    def read_split(self, root: epath.Path, source_split: str) -> manual.Rows:
        positives: dict[str, list[int]] = {}
        for index, name in enumerate(CLASS_NAMES):
            path = root / DEVKIT / "ImageSets/Main" / f"{name}_{source_split}.txt"
            if not path.exists():
                raise FileNotFoundError(
                    f"{self.name}: missing {path}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                )
            for line in path.read_text().splitlines():
                if not line.strip():
                    continue
                image_id, flag = line.split()
                classes = positives.setdefault(image_id, [])
                if int(flag) == 1:
                    classes.append(index)
        image_ids = sorted(i for i, classes in positives.items() if classes)
        labels = manual.label_matrix([positives[i] for i in image_ids], len(CLASS_NAMES))
        images = [root / DEVKIT / "JPEGImages" / f"{i}.jpg" for i in image_ids]
        return list(zip(images, labels, strict=True))
