"""The data set builders on tiny data sets written in each real on-disk format."""

import json
import pathlib

import numpy as np
import pytest
from conftest import load_config
from PIL import Image

from lln_jax.data import datasets, labeled_splits, observed_labels
from lln_jax.data.datasets import prepared, voc
from lln_jax.training import trainer


def _jpeg(path: pathlib.Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(20, 60)), int(rng.integers(20, 60)))
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path, "JPEG")


def _labels_of(name, data_dir, split="train"):
    """A split's labels read from its records, checked against its label file."""
    train, test = datasets.open_splits(name, str(data_dir), allow_unchecked_counts=True)
    opened = train if split == "train" else test
    from_records = prepared.labels_from_records(opened.source)
    np.testing.assert_array_equal(opened.labels["labels"], from_records)
    np.testing.assert_array_equal(
        opened.labels["example_id"], prepared.labels_from_records(opened.source, "example_id")
    )
    return from_records, opened.source


def _prepare(name, tmp_path, manual):
    return datasets.prepare(
        name, str(tmp_path / "data"), manual_dir=str(manual), check_counts=False
    )


# ----------------------------------------------------------------------------- VOC


VOC_TRAIN = {  # image id -> {class: flag}; unlisted classes are -1.
    "2008_000003": {"aeroplane": 1, "person": 0},
    "2008_000001": {"person": 1, "dog": 1},
    "2008_000002": {"cat": 0},  # Only a difficult object: dropped.
    "2008_000010": {"bird": 1, "tvmonitor": 1},
    "2008_000005": {"sheep": 1},
}
VOC_VAL = {"2009_000001": {"train": 1}, "2009_000002": {"sofa": 1, "chair": 0}}


def _write_voc(root: pathlib.Path) -> pathlib.Path:
    devkit = root / "VOCdevkit" / "VOC2012"
    for split, images in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        for name in voc.CLASS_NAMES:
            lines = [f"{i} {flags.get(name, -1):>2}" for i, flags in images.items()]
            path = devkit / "ImageSets" / "Main" / f"{name}_{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(lines) + "\n")
        for seed, image_id in enumerate(images):
            _jpeg(devkit / "JPEGImages" / f"{image_id}.jpg", seed)
    return root


def _row(*classes, names=voc.CLASS_NAMES):
    row = np.zeros(len(names), np.int8)
    row[[names.index(c) for c in classes]] = 1
    return row


def test_voc_rows_classes_and_the_difficult_rule(tmp_path):
    _prepare("voc2012", tmp_path, _write_voc(tmp_path / "manual"))
    labels, source = _labels_of("voc2012", tmp_path / "data")
    expected = np.stack([
        _row("dog", "person"),  # 2008_000001
        _row("aeroplane"),  # 2008_000003: the difficult person is negative
        _row("sheep"),  # 2008_000005
        _row("bird", "tvmonitor"),  # 2008_000010; 2008_000002 (difficult only) dropped
    ])  # fmt: skip
    np.testing.assert_array_equal(labels, expected)
    assert [int(source[i]["example_id"]) for i in range(4)] == [0, 1, 2, 3]
    test_labels, _ = _labels_of("voc2012", tmp_path / "data", "test")
    np.testing.assert_array_equal(test_labels, np.stack([_row("train"), _row("sofa")]))


def test_a_corrupt_image_names_the_file_and_leaves_nothing_finished(tmp_path):
    manual = _write_voc(tmp_path / "manual")
    bad = manual / "VOCdevkit/VOC2012/JPEGImages/2008_000010.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"cannot decode image .*2008_000010\.jpg"):
        _prepare("voc2012", tmp_path, manual)
    builder = datasets.builder("voc2012", str(tmp_path / "data"))
    assert not builder.is_prepared()
    with pytest.raises(FileNotFoundError, match="not prepared"):
        datasets.open_splits("voc2012", str(tmp_path / "data"))


def test_a_missing_manual_dir_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)VOCtrainval_11-May-2012\.tar.*VOCdevkit"):
        datasets.prepare("voc2012", str(tmp_path / "data"), manual_dir=str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError, match=r"(?s)prepare coco2014 --manual_dir.*cocodataset"):
        datasets.prepare("coco2014", str(tmp_path / "data"))


def test_counts_are_checked_against_the_spec(tmp_path):
    manual = _write_voc(tmp_path / "manual")
    with pytest.raises(ValueError, match="found 4 images, the spec expects 5717"):
        datasets.prepare("voc2012", str(tmp_path / "data"), manual_dir=str(manual))


def test_a_missing_class_file_says_what_to_download(tmp_path):
    manual = _write_voc(tmp_path / "manual")
    (manual / "VOCdevkit/VOC2012/ImageSets/Main/sheep_train.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)sheep_train\.txt.*VOCtrainval_11-May-2012"):
        _prepare("voc2012", tmp_path, manual)


def test_a_successful_preparation_removes_what_a_killed_one_left(tmp_path):
    stale = tmp_path / "data" / "voc2012" / "incomplete.K1LLED_1.0.0"
    (stale / "voc2012-train.array_record-00000-of-00001").parent.mkdir(parents=True)
    (stale / "voc2012-train.array_record-00000-of-00001").write_bytes(b"half")
    _prepare("voc2012", tmp_path, _write_voc(tmp_path / "manual"))
    assert not stale.exists()
    assert datasets.builder("voc2012", str(tmp_path / "data")).is_prepared()


# ----------------------------------------------------------------------------- COCO


def _write_coco(root: pathlib.Path) -> pathlib.Path:
    # 80 categories whose JSON order is not their id order: the index is the position.
    ids = list(np.random.default_rng(0).permutation(np.arange(1, 91))[:80].tolist())
    categories = [{"id": i, "name": f"c{i}"} for i in ids]
    splits = {
        "train2014": {
            "images": [5, 10, 100, 7, 3],  # 3 has no annotation: left out.
            "annotations": [
                (10, ids[2], 1),  # A crowd annotation still counts.
                (100, ids[0], 0), (100, ids[0], 0), (100, ids[79], 0),
                (5, ids[5], 0), (7, ids[1], 0), (7, ids[3], 1),
            ],
        },
        "val2014": {"images": [42, 8], "annotations": [(42, ids[4], 0), (8, ids[6], 0)]},
    }  # fmt: skip
    for split, content in splits.items():
        images = [{"id": i, "file_name": f"COCO_{split}_{i:012d}.jpg"} for i in content["images"]]
        annotations = [
            {"id": n, "image_id": i, "category_id": c, "iscrowd": crowd}
            for n, (i, c, crowd) in enumerate(content["annotations"])
        ]
        path = root / "annotations" / f"instances_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )
        for seed, image in enumerate(images):
            _jpeg(root / split / image["file_name"], seed)
    return root


def test_coco_rows_by_string_id_category_position_and_crowd(tmp_path):
    _prepare("coco2014", tmp_path, _write_coco(tmp_path / "manual"))
    labels, _ = _labels_of("coco2014", tmp_path / "data")
    expected = np.zeros((4, 80), np.int8)
    for row, positives in enumerate([[2], [0, 79], [5], [1, 3]]):  # ids "10", "100", "5", "7"
        expected[row, positives] = 1
    np.testing.assert_array_equal(labels, expected)
    test_labels, _ = _labels_of("coco2014", tmp_path / "data", "test")
    np.testing.assert_array_equal(np.argmax(test_labels, axis=1), [4, 6])  # "42", "8"


def test_coco_train_and_val_category_lists_must_agree(tmp_path):
    manual = _write_coco(tmp_path / "manual")
    val_path = manual / "annotations" / "instances_val2014.json"
    val = json.loads(val_path.read_text())
    val["categories"][3], val["categories"][4] = val["categories"][4], val["categories"][3]
    val_path.write_text(json.dumps(val))
    with pytest.raises(ValueError, match=r"train2014\.json and .*instances_val2014\.json"):
        _prepare("coco2014", tmp_path, manual)


def test_a_coco_annotation_of_an_unknown_image_names_the_file_and_id(tmp_path):
    manual = _write_coco(tmp_path / "manual")
    train_path = manual / "annotations" / "instances_train2014.json"
    train = json.loads(train_path.read_text())
    train["annotations"].append({**train["annotations"][0], "id": 99, "image_id": 424242})
    train_path.write_text(json.dumps(train))
    with pytest.raises(ValueError, match=r"instances_train2014\.json: .*image_id 424242"):
        _prepare("coco2014", tmp_path, manual)


# ----------------------------------------------------------------------------- CUB


def _write_cub(root: pathlib.Path, num_images=6) -> tuple[pathlib.Path, np.ndarray]:
    base = root / "CUB_200_2011"
    (base / "attributes").mkdir(parents=True)
    rng = np.random.default_rng(1)
    present = (rng.random((num_images, 312)) < 0.1).astype(np.int8)
    is_train = [1, 0, 1, 1, 0, 1]
    paths = [f"00{i % 2 + 1}.Bird/Bird_{i + 1}.jpg" for i in range(num_images)]
    (base / "images.txt").write_text("".join(f"{i + 1} {p}\n" for i, p in enumerate(paths)))
    (base / "train_test_split.txt").write_text(
        "".join(f"{i + 1} {t}\n" for i, t in enumerate(is_train))
    )
    lines = []
    for i in range(num_images):
        for a in range(312):
            certainty = int(rng.integers(1, 5))
            extra = " 0" if (i, a) == (2, 7) else ""  # The official file's odd lines.
            lines.append(f"{i + 1} {a + 1} {present[i, a]} {certainty} 12.5{extra}\n")
    (base / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    for seed, path in enumerate(paths):
        _jpeg(base / "images" / path, seed)
    return root, present[np.asarray(is_train) == 1], present[np.asarray(is_train) == 0]


def test_cub_attributes_split_and_row_order(tmp_path):
    manual, train_expected, test_expected = _write_cub(tmp_path / "manual")
    _prepare("cub", tmp_path, manual)
    labels, _ = _labels_of("cub", tmp_path / "data")
    np.testing.assert_array_equal(labels, train_expected)
    test_labels, _ = _labels_of("cub", tmp_path / "data", "test")
    np.testing.assert_array_equal(test_labels, test_expected)


def test_a_subset_prepared_without_the_count_check_never_passes_for_the_full_set(tmp_path):
    manual, _, _ = _write_cub(tmp_path / "manual")
    data_dir = str(tmp_path / "data")
    _prepare("cub", tmp_path, manual)  # --nocheck_counts
    refusal = rf"(?s)cub/1\.0\.0 holds cub prepared with --nocheck_counts from {manual}.*5994"
    with pytest.raises(ValueError, match=refusal):  # A later plain `prepare cub`.
        datasets.prepare("cub", data_dir, manual_dir=str(manual))
    config = _config("cub", data_dir)
    config.data.allow_unchecked_counts = False
    with pytest.raises(ValueError, match=r"(?s)--nocheck_counts.*allow_unchecked_counts=True"):
        trainer.train_and_evaluate(config, str(tmp_path / "work"))
    # Prepared with no record of a check (as before the record existed): the counts decide.
    builder = datasets.builder("cub", data_dir)
    (pathlib.Path(builder.data_dir) / datasets.PREPARATION_RECORD).unlink()
    with pytest.raises(ValueError, match=r"without a record of a count check: .*'train': 4"):
        datasets.open_splits("cub", data_dir)
    datasets.prepare("cub", data_dir, manual_dir=str(manual), check_counts=False)  # Upgrade.
    with pytest.raises(ValueError, match=r"prepared with --nocheck_counts"):  # Recorded now.
        datasets.open_splits("cub", data_dir)
    assert len(datasets.open_splits("cub", data_dir, allow_unchecked_counts=True)[0].source) == 4


# ----------------------------------------------------------------------------- formatted


def _write_formatted(root: pathlib.Path, num_classes=81, with_observed=True):
    rng = np.random.default_rng(2)
    for split, count in (("train", 12), ("val", 4)):
        names = np.array([f"Flickr/{split}_{i}.jpg" for i in range(count)])
        labels = (rng.random((count, num_classes)) < 0.05).astype(np.int64)
        labels[0] = 0  # NUS-WIDE has images without a positive.
        np.save(root / f"formatted_{split}_images.npy", names)
        np.save(root / f"formatted_{split}_labels.npy", labels)
        for seed, name in enumerate(names):
            _jpeg(root / "images" / name, seed)
    train_labels = np.load(root / "formatted_train_labels.npy")
    observed = observed_labels.single_positive(train_labels, seed=7)
    if with_observed:
        np.save(root / "formatted_train_labels_obs.npy", observed)
    return root, train_labels, observed


def test_formatted_files_and_stored_observed_labels(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    _, train_labels, observed = _write_formatted(manual)
    _prepare("nuswide", tmp_path, manual)
    labels, source = _labels_of("nuswide", tmp_path / "data")
    np.testing.assert_array_equal(labels, train_labels)
    np.testing.assert_array_equal(prepared.labels_from_records(source, "labels_obs"), observed)
    splits = labeled_splits.create_splits(
        *datasets.open_splits("nuswide", str(tmp_path / "data"), allow_unchecked_counts=True),
        label_setting="stored", observed_seed=0, split_seed=1200, val_frac=0.2,
    )  # fmt: skip
    train_rows, _ = observed_labels.train_val_split(12)
    np.testing.assert_array_equal(splits["train"].labels_obs, observed[train_rows])


def test_prepared_weak_labels_and_split_follow_the_protocol(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    _, train_labels, _ = _write_formatted(manual, num_classes=5, with_observed=False)
    _prepare("formatted", tmp_path, manual)
    splits = labeled_splits.create_splits(
        *datasets.open_splits("formatted", str(tmp_path / "data")),
        label_setting="single_positive", observed_seed=1200, split_seed=1200, val_frac=0.2,
    )  # fmt: skip
    train_rows, val_rows = observed_labels.train_val_split(12, 0.2, 1200)
    np.testing.assert_array_equal(splits["train"].rows, train_rows)
    np.testing.assert_array_equal(splits["val"].rows, val_rows)
    expected = observed_labels.single_positive(train_labels, 1200)
    np.testing.assert_array_equal(splits["train"].labels_obs, expected[train_rows])
    np.testing.assert_array_equal(splits["val"].labels_true, train_labels[val_rows])


# ----------------------------------------------------------------------------- training


def _config(name, data_dir):
    # The tiny sets are prepared as subsets: unchecked counts.
    return load_config(
        f"{name}.py", "scheme=ll_cp,runlocal", num_epochs=1,
        **{"data.data_dir": data_dir, "data.allow_unchecked_counts": True},
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["voc", "coco", "cub", "nuswide"])
def test_one_short_epoch_on_each_tiny_prepared_set(tmp_path, config_name):
    manual = tmp_path / "manual"
    manual.mkdir()
    name = {"voc": "voc2012", "coco": "coco2014", "cub": "cub", "nuswide": "nuswide"}
    writers = {
        "voc": _write_voc,
        "coco": _write_coco,
        "cub": _write_cub,
        "nuswide": _write_formatted,
    }
    writers[config_name](manual)
    _prepare(name[config_name], tmp_path, manual)
    config = _config(config_name, str(tmp_path / "data"))
    trainer.train_and_evaluate(config, str(tmp_path / "work"))
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    assert len(results["val_map"]) == 1 and 0.0 <= results["test_map"] <= 100.0


# ----------------------------------------------------------------------------- label files


def test_start_up_reads_the_label_files_and_no_record(tmp_path, monkeypatch):
    manual, _, _ = _write_cub(tmp_path / "manual")
    _prepare("cub", tmp_path, manual)
    reads = []
    source_class = type(datasets.builder("cub", str(tmp_path / "data")).as_data_source("train"))
    for method in ("__getitem__", "__getitems__"):
        original = getattr(source_class, method)
        monkeypatch.setattr(
            source_class, method, lambda self, key, _f=original: reads.append(key) or _f(self, key)
        )
    config = _config("cub", str(tmp_path / "data"))
    splits = labeled_splits.open_splits(config.data)
    assert reads == []  # Neither an image nor a label was read from the records.
    assert splits["train"].num_examples + splits["val"].num_examples == 4


def _label_file(data_dir, name="cub", split="train"):
    builder = datasets.builder(name, str(data_dir))
    return pathlib.Path(builder.data_dir) / f"labels-{split}.npz", builder


def _prepared_cub(tmp_path):
    """The tiny CUB prepared without the count check: its manual dir, data dir, train label
    file and builder."""
    manual, _, _ = _write_cub(tmp_path / "manual")
    _prepare("cub", tmp_path, manual)
    data_dir = tmp_path / "data"
    return (manual, data_dir, *_label_file(data_dir))


def test_a_stale_or_mismatching_label_file_is_refused(tmp_path):
    manual, _, _ = _write_cub(tmp_path / "manual")
    _prepare("cub", tmp_path, manual)
    data_dir = tmp_path / "data"
    path, builder = _label_file(data_dir)
    original = path.read_bytes()
    with np.load(path) as loaded:
        edited = {key: loaded[key] for key in loaded.files}
    edited["labels"][0, 0] ^= 1
    np.savez(path, **edited)
    rewrite = rf"python -m lln_jax\.prepare cub --data_dir={data_dir}"
    with pytest.raises(
        prepared.LabelFileError, match=rf"(?s)labels-train\.npz .*checksum.*{rewrite}"
    ):
        datasets.open_splits("cub", str(data_dir), allow_unchecked_counts=True)
    path.write_bytes(original)
    record_path = pathlib.Path(builder.data_dir) / prepared.RECORD
    record = json.loads(record_path.read_text())
    record["label_files"]["train"]["count"] = 5  # As if the records had changed.
    record_path.write_text(json.dumps(record))
    with pytest.raises(prepared.LabelFileError, match=r"holds 4 rows, its record says 5"):
        datasets.open_splits("cub", str(data_dir), allow_unchecked_counts=True)


def test_data_prepared_before_label_files_is_refused_then_upgraded_by_prepare(tmp_path):
    manual, train_expected, _ = _write_cub(tmp_path / "manual")
    _prepare("cub", tmp_path, manual)
    data_dir = tmp_path / "data"
    path, builder = _label_file(data_dir)
    record_path = pathlib.Path(builder.data_dir) / prepared.RECORD
    record = json.loads(record_path.read_text())
    del record["label_files"]
    record_path.write_text(json.dumps(record))
    path.unlink()
    with pytest.raises(prepared.LabelFileError, match=r"older version.*lln_jax\.prepare cub"):
        datasets.open_splits("cub", str(data_dir), allow_unchecked_counts=True)
    datasets.prepare("cub", str(data_dir), manual_dir=str(manual), check_counts=False)
    assert path.exists()
    upgraded = json.loads(record_path.read_text())
    assert upgraded["counts_checked"] is False  # The upgrade keeps what the record said.
    train_split, _ = datasets.open_splits("cub", str(data_dir), allow_unchecked_counts=True)
    np.testing.assert_array_equal(train_split.labels["labels"], train_expected)


def test_a_manual_dir_on_gs_is_read_through_the_path_layer(tmp_path, fake_gcs):
    """The official files may sit in a bucket: every read goes through etils.epath."""
    manual = fake_gcs / "bucket" / "manual"
    manual.mkdir(parents=True)
    _, train_labels, observed = _write_formatted(manual)
    data_dir = str(tmp_path / "data")
    datasets.prepare("nuswide", data_dir, manual_dir="gs://bucket/manual", check_counts=False)
    train_split, _ = datasets.open_splits("nuswide", data_dir, allow_unchecked_counts=True)
    np.testing.assert_array_equal(train_split.labels["labels"], train_labels)
    np.testing.assert_array_equal(train_split.labels["labels_obs"], observed)
    assert not (tmp_path / "gs:").exists()  # Nothing went to a local directory named gs:.


def test_prepare_verifies_every_label_file_and_rewrites_a_bad_one(tmp_path):
    manual, data_dir, path, _ = _prepared_cub(tmp_path)
    original = path.read_bytes()
    path.write_bytes(original[: len(original) // 2])  # A copy cut short.
    with pytest.raises(prepared.LabelFileError, match=r"labels-train\.npz .*checksum"):
        datasets.open_splits("cub", str(data_dir), allow_unchecked_counts=True)
    # What the message says to run (this subset was prepared without the count check).
    datasets.prepare("cub", str(data_dir), manual_dir=str(manual), check_counts=False)
    assert path.read_bytes() == original
    datasets.open_splits("cub", str(data_dir), allow_unchecked_counts=True)


def test_a_corrupt_record_names_its_file_and_the_preparation(tmp_path):
    _, data_dir, _, builder = _prepared_cub(tmp_path)
    (record_file,) = pathlib.Path(builder.data_dir).glob("*-train.array_record-*")
    payload = bytearray(record_file.read_bytes())
    start = len(payload) // 25  # Inside the first chunk of records (the rest is padding).
    payload[start : start + 64] = bytes(byte ^ 0xFF for byte in payload[start : start + 64])
    record_file.write_bytes(bytes(payload))  # Bits flipped, as by a bad disk or copy.
    train_split, _ = datasets.open_splits("cub", str(data_dir), allow_unchecked_counts=True)
    with pytest.raises(OSError) as raised:
        for row in range(len(train_split.source)):
            train_split.source[row]
    message = str(raised.value)
    assert message.startswith(f"{record_file}: record ")
    assert f"python -m lln_jax.prepare cub --data_dir={data_dir} --manual_dir=DIR" in message
