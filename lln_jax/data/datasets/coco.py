"""MS COCO 2014 (80 classes), from the official annotation JSON and image folders.

As the official code formats it: the images that appear in the instance annotations
(images without any object are left out), every annotation's category positive (crowd
annotations included), rows sorted by the image id *as a string*, class index = position in
the JSON's category list. Train is `train2014` (82,081 images with objects, cut into train
and val), test is `val2014` (40,137).
"""

import json

from etils import epath

from lln_jax.data.datasets import manual

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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._categories_seen: tuple[epath.Path, list] | None = None

    def _check_categories(self, path: epath.Path, categories: list) -> None:
        """The class index is a position in the category list: every split must agree."""
        if len(categories) != NUM_CATEGORIES:
            raise ValueError(f"{path}: {len(categories)} categories, expected {NUM_CATEGORIES}")
        if self._categories_seen is None:
            self._categories_seen = (path, categories)
            return
        first_path, first = self._categories_seen
        if [c["id"] for c in first] != [c["id"] for c in categories]:
            raise ValueError(
                f"the category lists of {first_path} and {path} differ; the class index is the "
                "position in that list, so both files must come from the same COCO release"
            )

    def read_split(self, root: epath.Path, source_split: str) -> manual.Rows:
        path = root / "annotations" / f"instances_{source_split}.json"
        instances = json.loads(path.read_text())
        self._check_categories(path, instances["categories"])
        category_index = {c["id"]: i for i, c in enumerate(instances["categories"])}
        file_names = {image["id"]: image["file_name"] for image in instances["images"]}
        positives: dict[int, set[int]] = {}
        for annotation in instances["annotations"]:  # Crowd annotations count too.
            image_id, category_id = annotation["image_id"], annotation["category_id"]
            if image_id not in file_names:
                raise ValueError(f"{path}: an annotation names image_id {image_id}, not in images")
            if category_id not in category_index:
                raise ValueError(f"{path}: an annotation names category_id {category_id}")
            positives.setdefault(image_id, set()).add(category_index[category_id])
        image_ids = sorted(positives, key=str)
        labels = manual.label_matrix([sorted(positives[i]) for i in image_ids], NUM_CATEGORIES)
        images = [root / source_split / file_names[i] for i in image_ids]
        return list(zip(images, labels, strict=True))
