"""Pre-resized stores: written at preparation, read by runs that then only decode."""

import io
import json
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lln_jax.config import checks as config_checks
from lln_jax.data import datasets, image_storage, input_pipeline, labeled_splits, preprocessing
from lln_jax.data.datasets import prepared, resized

SIZE = 24


def _write_formatted(root: pathlib.Path) -> pathlib.Path:
    """The official code's formatted files over JPEGs of assorted sizes (none square)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 4)):
        names = np.array([f"{split}_{i}.jpg" for i in range(count)])
        for name in names:
            shape = (int(rng.integers(30, 70)), int(rng.integers(30, 70)), 3)
            path = root / "images" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = _smooth_image(rng, shape)
            Image.fromarray(pixels).save(path, "JPEG", quality=90)
        labels = (rng.random((count, 5)) < 0.4).astype(np.int64)
        labels[:, 0] = 1  # Every image has a positive.
        np.save(root / f"formatted_{split}_images.npy", names)
        np.save(root / f"formatted_{split}_labels.npy", labels)
    return root


def _smooth_image(rng, shape) -> np.ndarray:
    """Gradients and a rectangle, like a photo's large smooth regions and an edge."""
    rows, cols = np.meshgrid(
        np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij"
    )
    channels = [rows, cols, (rows + cols) / 2]
    pixels = np.stack([c * rng.uniform(80, 200) + rng.uniform(0, 50) for c in channels], axis=-1)
    top, left = rng.integers(0, shape[0] // 2), rng.integers(0, shape[1] // 2)
    pixels[top : top + shape[0] // 3, left : left + shape[1] // 3] = rng.uniform(0, 255, 3)
    return pixels.astype(np.uint8)


@pytest.fixture(name="data_dir")
def _data_dir(tmp_path) -> str:
    manual = _write_formatted(tmp_path / "manual")
    data_dir = str(tmp_path / "data")
    datasets.prepare("formatted", data_dir, manual_dir=str(manual), check_counts=False)
    return data_dir


def _splits(data_dir, storage=None):
    return labeled_splits.create_splits(
        *datasets.open_splits("formatted", data_dir, storage=storage),
        label_setting="single_positive", observed_seed=1200, split_seed=1200, val_frac=0.2,
    )  # fmt: skip


def _batches(split, size=SIZE):
    return list(
        input_pipeline.batches(
            split, batch_size=4, image_size=size, seed=3, train=True, start=0, stop=4,
            num_threads=1, process_index=0, process_count=1,
        )
    )  # fmt: skip


def test_raw_storage_gives_the_batches_of_the_originals_bit_for_bit(data_dir):
    storage = image_storage.Storage(SIZE, "raw")
    entry = datasets.write_resized("formatted", data_dir, storage, num_threads=2)
    assert entry["splits"]["train"]["count"] == 10
    assert entry["splits"]["train"]["bytes"] == 10 * (
        SIZE * SIZE * 3 + len(f"P6\n{SIZE} {SIZE}\n255\n")
    )
    originals, stored = _splits(data_dir), _splits(data_dir, storage)
    assert isinstance(stored["train"].source, resized.ResizedSource)
    for name in ("train", "val", "test"):
        for expected, got in zip(_batches(originals[name]), _batches(stored[name]), strict=True):
            assert expected.keys() == got.keys()
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name} {key}")


def _stored_error(data_dir, storage) -> tuple[float, int]:
    """Mean absolute pixel error of a store against resizing the originals; its bytes."""
    entry = datasets.write_resized("formatted", data_dir, storage, num_threads=2)
    train, _ = datasets.open_splits("formatted", data_dir, storage=storage)
    originals, _ = datasets.open_splits("formatted", data_dir)
    errors, total = [], 0
    for row in range(len(train.source)):
        payload = train.source[row]["image"]
        total += len(payload)
        assert Image.open(io.BytesIO(payload)).format == "JPEG"
        got = preprocessing.load_image(payload, size=SIZE, flip=False, name="stored")
        want = preprocessing.load_image(
            originals.source[row]["image"], size=SIZE, flip=False, name="original"
        )
        assert got.shape == (SIZE, SIZE, 3)
        errors.append(np.abs(got.astype(int) - want).mean())
    assert total == entry["splits"]["train"]["bytes"]
    return float(np.mean(errors)), total


def test_jpeg_storage_holds_the_resized_images_at_the_stated_quality(data_dir):
    error_95, bytes_95 = _stored_error(data_dir, image_storage.parse("jpeg95", SIZE))
    error_20, bytes_20 = _stored_error(data_dir, image_storage.parse("jpeg20", SIZE))
    assert error_95 < 3  # Of 255 levels, on 24x24 images with an edge (chroma at half size).
    assert error_95 < error_20 / 2 and bytes_95 > bytes_20


def test_a_run_asking_for_a_store_that_was_not_written_gets_the_command(data_dir):
    storage = image_storage.Storage(SIZE, "jpeg90")
    command = rf"python -m lln_jax\.prepare formatted --data_dir={data_dir} --image_size=24"
    with pytest.raises(
        resized.StoreError, match=rf"no resized-24-jpeg90 store.*{command} --storage=jpeg90"
    ):
        datasets.open_splits("formatted", data_dir, storage=storage)
    datasets.write_resized("formatted", data_dir, storage, num_threads=1)
    with pytest.raises(resized.StoreError, match="no resized-32-jpeg90"):  # Another size.
        datasets.open_splits("formatted", data_dir, storage=storage._replace(size=32))


def test_a_store_that_does_not_match_the_records_is_refused(data_dir):
    storage = image_storage.Storage(SIZE, "raw")
    datasets.write_resized("formatted", data_dir, storage, num_threads=1)
    builder = datasets.builder("formatted", data_dir)
    record_path = pathlib.Path(builder.data_dir) / prepared.RECORD
    record = json.loads(record_path.read_text())
    record["resized"][storage.name]["splits"]["train"]["count"] = 11
    record_path.write_text(json.dumps(record))
    with pytest.raises(resized.StoreError, match=r"holds 10 images \(its record says 11\)"):
        datasets.open_splits("formatted", data_dir, storage=storage)
    (pathlib.Path(builder.data_dir) / storage.name / "train.array_record").unlink()
    with pytest.raises(resized.StoreError, match=r"train\.array_record is missing"):
        datasets.open_splits("formatted", data_dir, storage=storage)


def test_an_interrupted_store_is_never_read_and_the_next_write_replaces_it(data_dir, monkeypatch):
    storage = image_storage.Storage(SIZE, "raw")
    calls = []

    def fail_on_the_test_split(payload, storage, *, name):
        calls.append(name)
        if name.startswith("test"):
            raise KeyboardInterrupt  # As if the preparation were stopped there.
        return original_encode(payload, storage, name=name)

    original_encode = image_storage.encode
    monkeypatch.setattr(image_storage, "encode", fail_on_the_test_split)
    with pytest.raises(KeyboardInterrupt):
        datasets.write_resized("formatted", data_dir, storage, num_threads=1)
    with pytest.raises(resized.StoreError, match="no resized-24-raw store"):
        datasets.open_splits("formatted", data_dir, storage=storage)
    monkeypatch.setattr(image_storage, "encode", original_encode)
    datasets.write_resized("formatted", data_dir, storage, num_threads=1)
    train, test = datasets.open_splits("formatted", data_dir, storage=storage)
    assert (len(train.source), len(test.source)) == (10, 4)
    directory = pathlib.Path(datasets.builder("formatted", data_dir).data_dir)
    assert not list(directory.glob("*.incomplete"))


def test_preparing_the_data_again_drops_its_stores(data_dir, tmp_path):
    storage = image_storage.Storage(SIZE, "raw")
    datasets.write_resized("formatted", data_dir, storage, num_threads=1)
    builder = datasets.builder("formatted", data_dir)
    record_path = pathlib.Path(builder.data_dir) / prepared.RECORD
    record = json.loads(record_path.read_text())
    del record["resized"]  # What a fresh preparation writes.
    record_path.write_text(json.dumps(record))
    with pytest.raises(resized.StoreError, match="no resized-24-raw store"):
        datasets.open_splits("formatted", data_dir, storage=storage)


def test_a_stored_split_travels_to_grain_worker_processes(data_dir):
    storage = image_storage.Storage(SIZE, "raw")
    datasets.write_resized("formatted", data_dir, storage, num_threads=1)
    train, _ = datasets.open_splits("formatted", data_dir, storage=storage)
    copy = pickle.loads(pickle.dumps(train.source))
    assert copy[3]["image"] == train.source[3]["image"]


def test_storage_names_are_checked():
    assert image_storage.parse("original", 448) is None
    assert image_storage.parse("jpeg100", 448).quality == 100
    assert image_storage.parse("raw", 448).quality is None
    for bad in ("jpeg0", "jpeg101", "png", "JPEG95", ""):
        with pytest.raises(ValueError, match=r"'raw' or 'jpeg<1\.\.100>'"):
            image_storage.parse(bad, 448)


def test_a_wrong_storage_in_the_config_fails_before_the_data_is_opened():
    from lln_jax.config import defaults

    config = defaults.create_config(
        "runlocal", dataset="formatted", optimizer="adam", learning_rate=1e-4,
        recipes={"ll_r": {"delta_rel": 0.002}},
    )  # fmt: skip
    config.data.storage = "jpeg"
    with pytest.raises(config_checks.ConfigError, match=r"data\.storage='jpeg'; valid"):
        config_checks.check(config)


def test_a_run_config_reads_the_store_it_names(data_dir):
    from lln_jax.config import defaults

    config = defaults.create_config(
        "runlocal", dataset="formatted", optimizer="adam", learning_rate=1e-4,
        recipes={"ll_r": {"delta_rel": 0.002}},
    )  # fmt: skip
    config.data.update(data_dir=data_dir, allow_unchecked_counts=True, image_size=SIZE)
    config.data.storage = "raw"
    with pytest.raises(resized.StoreError, match="no resized-24-raw store"):
        labeled_splits.open_splits(config.data)
    datasets.write_resized("formatted", data_dir, image_storage.Storage(SIZE, "raw"))
    splits = labeled_splits.open_splits(config.data)
    assert all(isinstance(s.source, resized.ResizedSource) for s in splits.values())


@pytest.mark.slow
def test_the_prepare_command_writes_a_store_and_refuses_a_bad_encoding(tmp_path):
    manual, data_dir = _write_formatted(tmp_path / "manual"), tmp_path / "data"
    command = [
        sys.executable, "-m", "lln_jax.prepare", "formatted", f"--data_dir={data_dir}",
        f"--manual_dir={manual}", "--nocheck_counts", f"--image_size={SIZE}",
    ]  # fmt: skip
    refused = subprocess.run([*command, "--storage=png"], capture_output=True, text=True)
    assert refused.returncode != 0 and "--storage=png: give jpeg<1..100> or raw" in refused.stderr
    assert not data_dir.exists()  # Refused before anything was prepared.
    done = subprocess.run([*command, "--storage=jpeg90"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resized-24-jpeg90 train: 10 images" in done.stderr
    train, test = datasets.open_splits(
        "formatted", str(data_dir), allow_unchecked_counts=True,
        storage=image_storage.Storage(SIZE, "jpeg90"),
    )  # fmt: skip
    assert (len(train.source), len(test.source)) == (10, 4)
