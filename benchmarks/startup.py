"""Start-up cost of the data: label matrices from the label files against from the records.

Generates a `formatted` data set of `--records` train records with ~50 KB JPEG payloads
(noise images, as many distinct ones as `--distinct`, hard-linked to fill the manual dir),
prepares it, drops the page cache where the OS allows (so that the records are read from
disk, as on a fresh host), and times in one run:

- before: the label matrices read record by record (what every start did before label
  files: the images come along, since a record holds both);
- after: `datasets.open_splits` + `labeled_splits.create_splits` (the label files only).

The rest of the start-up (building the model, compiling the step) does not depend on the
number of records.

    python benchmarks/startup.py --records=100000 --out=benchmarks/results/startup.json
"""

import argparse
import io
import json
import os
import pathlib
import platform
import subprocess
import tempfile
import time

import numpy as np
from PIL import Image

from lln_jax.data import datasets, labeled_splits
from lln_jax.data.datasets import prepared

NUM_CLASSES = 81


def _payloads(count: int, seed: int = 0) -> list[bytes]:
    """Distinct JPEGs of about 50 KB (noise compresses poorly: 224x224 at quality 90)."""
    rng = np.random.default_rng(seed)
    payloads = []
    for _ in range(count):
        pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        payloads.append(buffer.getvalue())
    return payloads


def write_formatted(root: pathlib.Path, records: int, distinct: int) -> float:
    """The manual dir of a formatted data set; returns the mean payload size in bytes."""
    payloads = _payloads(distinct)
    originals = root / "originals"
    originals.mkdir(parents=True)
    for i, payload in enumerate(payloads):
        (originals / f"{i}.jpg").write_bytes(payload)
    images = root / "images"
    images.mkdir()
    names = [f"img_{i:07d}.jpg" for i in range(records)]
    for i, name in enumerate(names):
        os.link(originals / f"{i % distinct}.jpg", images / name)
    rng = np.random.default_rng(1)
    for split, rows in (("train", names), ("val", names[:64])):
        labels = (rng.random((len(rows), NUM_CLASSES)) < 0.03).astype(np.int64)
        np.save(root / f"formatted_{split}_images.npy", np.array(rows))
        np.save(root / f"formatted_{split}_labels.npy", labels)
    return float(np.mean([len(p) for p in payloads]))


def _drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        pathlib.Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=256)
    parser.add_argument("--workdir", default=None, help="where the data goes (a temp dir)")
    parser.add_argument("--out", default="benchmarks/results/startup.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = pathlib.Path(tmp)
        payload_bytes = write_formatted(root / "manual", args.records, args.distinct)
        data_dir = str(root / "data")
        prepare_s, _ = _timed(
            lambda: datasets.prepare("formatted", data_dir, manual_dir=str(root / "manual"))
        )
        cold = _drop_page_cache()
        after_s, (train, test) = _timed(lambda: datasets.open_splits("formatted", data_dir))
        split_options = dict(
            label_setting="single_positive", observed_seed=1200, split_seed=1200, val_frac=0.2
        )
        splits_s, _ = _timed(lambda: labeled_splits.create_splits(train, test, **split_options))
        _drop_page_cache()
        before_s, from_records = _timed(lambda: prepared.labels_from_records(train.source))
        assert np.array_equal(from_records, train.labels["labels"])
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "records": args.records,
        "payload_bytes_mean": payload_bytes,
        "page_cache_dropped": cold,
        "prepare_s": prepare_s,
        "before_labels_from_records_s": before_s,
        "after_open_splits_s": after_s,
        "after_create_splits_s": splits_s,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
