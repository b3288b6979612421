"""The input pipeline: ids, epochs, hosts, padding, determinism, bad images, the TFDS glue."""

import io
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import NUM_DEVICES
from PIL import Image

from lln_jax.data import datasets, input_pipeline, labeled_splits, observed_labels
from lln_jax.data.datasets import prepared
from lln_jax.run import sharding

NUM, CLASSES, SIZE = 10, 4, 8


def _png(value: int, size: int = 6) -> bytes:
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[:, : size // 2] = value  # Left half bright: a flip is visible.
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _source(num=NUM):
    rng = np.random.default_rng(0)
    labels = (rng.random((num, CLASSES)) < 0.5).astype(np.int8)
    return [{"image": _png(10 + i), "labels": labels[i]} for i in range(num)]


def _split(num=NUM):
    source = _source(num)
    labels = np.stack([record["labels"] for record in source])
    rows = np.arange(num)
    return labeled_splits.Split(source, rows, labels, observed_labels.single_positive(labels), "t")


def _all(split, **kwargs):
    return list(input_pipeline.batches(split, image_size=SIZE, seed=3, **kwargs))


def test_every_epoch_visits_every_example_once_and_pads_the_last_batch():
    split = _split()
    per_epoch = input_pipeline.steps_per_epoch(NUM, 4)
    assert per_epoch == 3
    got = _all(split, batch_size=4, train=True, start=0, stop=2 * per_epoch)
    for epoch in range(2):
        epoch_batches = got[epoch * per_epoch : (epoch + 1) * per_epoch]
        ids = np.concatenate([b["example_id"][b["mask"] > 0] for b in epoch_batches])
        np.testing.assert_array_equal(np.sort(ids), np.arange(NUM))
        np.testing.assert_array_equal(epoch_batches[-1]["mask"], [1, 1, 0, 0])
    first = np.concatenate([b["example_id"] for b in got[:per_epoch]])
    second = np.concatenate([b["example_id"] for b in got[per_epoch:]])
    assert not np.array_equal(first, second)  # A new order every epoch.


def test_observed_labels_are_looked_up_and_fixed_across_epochs():
    split = _split()
    for batch in _all(split, batch_size=4, train=True, start=0, stop=9):
        np.testing.assert_array_equal(batch["labels_obs"], split.labels_obs[batch["example_id"]])
        np.testing.assert_array_equal(batch["labels_true"], split.labels_true[batch["example_id"]])


def test_a_batch_is_a_pure_function_of_seed_and_step():
    split = _split()
    whole = _all(split, batch_size=4, train=True, start=0, stop=6)
    resumed = _all(split, batch_size=4, train=True, start=4, stop=6)
    for a, b in zip(whole[4:], resumed, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_flips_are_random_per_epoch_and_example_and_reproducible():
    split = _split()
    got = _all(split, batch_size=10, train=True, start=0, stop=4)
    flipped = np.array([[b["image"][i, 0, 0, 0] == 0 for i in range(NUM)] for b in got])
    assert 0 < flipped.mean() < 1
    again = _all(split, batch_size=10, train=True, start=0, stop=4)
    np.testing.assert_array_equal(got[3]["image"], again[3]["image"])
    evaluated = _all(split, batch_size=10, train=False, start=0, stop=1)[0]
    assert np.all(evaluated["image"][:, 0, 0, 0] > 0)  # Never flipped in evaluation.


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_ids_are_global_and_dense_across_emulated_hosts(process_count):
    split = _split()
    per_epoch = input_pipeline.steps_per_epoch(NUM, 8)
    hosts = [
        _all(split, batch_size=8, train=True, start=0, stop=per_epoch,
             process_index=p, process_count=process_count)
        for p in range(process_count)
    ]  # fmt: skip
    ids = []
    for step in range(per_epoch):
        local = [hosts[p][step] for p in range(process_count)]
        assert all(len(b["example_id"]) == 8 // process_count for b in local)
        mask = np.concatenate([b["mask"] for b in local])
        ids.append(np.concatenate([b["example_id"] for b in local])[mask > 0])
    np.testing.assert_array_equal(np.sort(np.concatenate(ids)), np.arange(NUM))


def test_eval_pass_is_ordered_and_masked():
    split = _split()
    got = _all(split, batch_size=4, train=False, start=0, stop=3)
    np.testing.assert_array_equal(np.concatenate([b["example_id"] for b in got])[:NUM], range(NUM))
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in got]), [1] * NUM + [0, 0])


def test_a_corrupt_image_names_its_row():
    split = _split()
    split.source[7]["image"] = b"not an image"
    with pytest.raises(ValueError, match="cannot decode image t row 7"):
        _all(split, batch_size=10, train=False, start=0, stop=1)


def test_a_batch_that_does_not_split_over_hosts_is_refused():
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        _all(_split(), batch_size=4, train=True, start=0, stop=1, process_index=0, process_count=3)


def test_to_global_shards_the_batch_over_the_devices():
    mesh = sharding.create_mesh()
    batch = _all(_split(16), batch_size=16, train=False, start=0, stop=1)[0]
    global_batch = input_pipeline.to_global(batch, sharding.data_sharding(mesh))
    assert global_batch["image"].shape == (16, SIZE, SIZE, 3)
    assert len(global_batch["image"].sharding.device_set) == NUM_DEVICES
    np.testing.assert_array_equal(jax.device_get(global_batch["example_id"]), np.arange(16))


def test_device_prefetch_gives_the_batches_in_order_on_the_devices():
    mesh = sharding.create_mesh()
    host_batches = _all(_split(16), batch_size=16, train=True, start=0, stop=3)
    with input_pipeline.DevicePrefetch(host_batches, sharding.data_sharding(mesh)) as prefetch:
        global_batches = list(prefetch)
        assert next(prefetch, None) is None  # The end stays the end.
    assert len(global_batches) == 3
    for host, device in zip(host_batches, global_batches, strict=True):
        assert isinstance(device["image"], jax.Array)
        for key in host:
            np.testing.assert_array_equal(jax.device_get(device[key]), host[key])


def test_device_prefetch_raises_the_input_error_in_the_loop_and_stops_when_closed():
    mesh = sharding.create_mesh()
    batch = _all(_split(16), batch_size=16, train=False, start=0, stop=1)[0]

    def failing():
        yield batch
        raise ValueError("cannot decode image train row 7")

    with input_pipeline.DevicePrefetch(failing(), sharding.data_sharding(mesh)) as prefetch:
        next(prefetch)
        with pytest.raises(ValueError, match="train row 7"):
            next(prefetch)
    produced = []

    def endless():
        while True:
            produced.append(1)
            yield batch

    prefetch = input_pipeline.DevicePrefetch(endless(), sharding.data_sharding(mesh), size=2)
    next(prefetch)
    prefetch.close()  # A loop that stops early: the thread ends, the input is not drained.
    assert not prefetch._thread.is_alive() and len(produced) <= 5


def test_the_tfds_glue_on_the_embedded_data_set(tmp_path):
    train, test = datasets.open_splits("digit_mosaics_small", str(tmp_path))
    assert [int(train.source[i]["example_id"]) for i in range(5)] == list(range(5))  # In order.
    splits = labeled_splits.create_splits(
        train, test,
        label_setting="single_positive", observed_seed=1200, split_seed=1200, val_frac=0.2,
    )  # fmt: skip
    sizes = {name: split.num_examples for name, split in splits.items()}
    assert sizes == {"train": 240, "val": 60, "test": 200}
    labels_all = prepared.labels_from_records(train.source)
    train_rows, val_rows = observed_labels.train_val_split(300)
    np.testing.assert_array_equal(splits["train"].rows, train_rows)
    np.testing.assert_array_equal(splits["val"].rows, val_rows)
    np.testing.assert_array_equal(
        splits["train"].labels_obs, observed_labels.single_positive(labels_all)[train_rows]
    )
    batch = _all(splits["train"], batch_size=8, train=True, start=0, stop=1)[0]
    assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8


def test_unknown_data_set_and_label_setting_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"'imagenet'.*digit_mosaics"):
        datasets.get("imagenet")
    with pytest.raises(ValueError, match=r"'partial'.*\['full', 'single_positive', 'stored'\]"):
        unlabeled = datasets.LabeledSource(_source(), {"labels": np.zeros((NUM, CLASSES))})
        labeled_splits.create_splits(
            unlabeled, unlabeled, label_setting="partial",
            observed_seed=0, split_seed=0, val_frac=0.2,
        )  # fmt: skip


def test_worker_processes_give_the_same_batches(tmp_path):
    train, test = datasets.open_splits("digit_mosaics_small", str(tmp_path))
    splits = labeled_splits.create_splits(
        train, test, label_setting="single_positive", observed_seed=1200, split_seed=1200,
        val_frac=0.2,
    )  # fmt: skip
    common = dict(batch_size=16, image_size=SIZE, seed=3, train=True, start=2, stop=6)
    in_process = list(input_pipeline.batches(splits["train"], **common))
    with_workers = list(input_pipeline.batches(splits["train"], num_workers=2, **common))
    assert len(in_process) == len(with_workers) == 4
    for a, b in zip(in_process, with_workers, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_the_wait_for_input_is_timed_per_step():
    import time

    def slow_batches():
        for index in range(4):
            time.sleep(0.05)  # Input slower than the "step" below: the loop waits for it.
            yield index

    timed = input_pipeline.TimedBatches(slow_batches())
    assert list(timed) == [0, 1, 2, 3]
    scalars = timed.take_scalars()
    assert 45.0 <= scalars["train/input_wait_ms"] <= 150.0
    assert 0.8 <= scalars["train/input_wait_fraction"] <= 1.0
    assert timed.take_scalars()["train/input_wait_ms"] == 0.0  # Reset after each take.


def test_workers_refuse_to_start_before_the_program_parsed_its_flags():
    """Library code never parses a program's flags; it says what to do instead."""
    program = (
        "import numpy as np\n"
        "from lln_jax.data import input_pipeline, labeled_splits\n"
        "split = labeled_splits.Split(None, np.arange(4), np.zeros((4, 2), np.int8),\n"
        "                             np.zeros((4, 2), np.int8), 'train')\n"
        "input_pipeline.batches(split, batch_size=2, image_size=8, seed=0, train=True,\n"
        "                       start=0, stop=2, num_workers=1)\n"
    )
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          env=environment, timeout=120)  # fmt: skip
    assert done.returncode == 1
    assert "parse them first (absl.app.run, or flags.FLAGS.mark_as_parsed()" in done.stderr
