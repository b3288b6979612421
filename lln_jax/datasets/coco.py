"""MS COCO 2014 (80 classes), from the official annotation JSON and image folders.

As the official code formats it: the images that appear in the instance annotations
(images without any object are left out), every annotation's category positive (crowd
annotations included), rows sorted by the image id *as a string*, class index = position in
the JSON's category list. Train is `train2014` (82,081 images with objects, cut into train
and val), test is `val2014` (40,137).
"""

import json
import pathlib

from lln_jax.datasets import manual

NUM_CATEGORIES = 80  # In the order of the JSON's category list.


class Coco2014(manual.ManualBuilder):
    """MS COCO 2014 multi-label classification, formatted as the official code does."""

    NUM_CLASSES = NUM_CATEGORIES
    EXPECTED_COUNTS = {"train": 82081, "test": 40137}
    REQUIRED_FILES = (
        "annotations/instances_train2014.json",
        "annotations/instances_val2014.json",
        "train2014",
        "val2014",
    )
    SOURCE_SPLITS = {"train": "train2014", "test": "val2014"}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download train2014.zip, val2014.zip and annotations_trainval2014.zip from "
        "https://cocodataset.org/#download and extract them into the manual dir, so that "
        "it holds train2014/, val2014/ and annotations/instances_{train,val}2014.json."
    )

    def read_split(self, root: pathlib.Path, source_split: str) -> manual.Rows:
        path = root / "annotations" / f"instances_{source_split}.json"
        instances = json.loads(path.read_text())
        category_index = {c["id"]: i for i, c in enumerate(instances["categories"])}
        if len(category_index) != NUM_CATEGORIES:
            raise ValueError(f"{path}: {len(category_index)} categories, expected {NUM_CATEGORIES}")
        file_names = {image["id"]: image["file_name"] for image in instances["images"]}
        positives: dict[int, set[int]] = {}
        for annotation in instances["annotations"]:  # Crowd annotations count too.
            positives.setdefault(annotation["image_id"], set()).add(
                category_index[annotation["category_id"]]
            )
        image_ids = sorted(positives, key=str)
        labels = manual.label_matrix([sorted(positives[i]) for i in image_ids], NUM_CATEGORIES)
        images = [root / source_split / file_names[i] for i in image_ids]
        return list(zip(images, labels, strict=True))
