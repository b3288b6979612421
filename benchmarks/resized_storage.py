"""How far pre-resized storage moves a trained model, and how many bytes it stores.

Trains LL-R (3 seeds) on two data sets, once decoding the original images and once from a
pre-resized store (`python -m lln_jax.prepare NAME --image_size=32 --storage=jpeg95`):

- the embedded benchmark (16x16 PNG mosaics, trained at 32x32);
- a real-format fixture: the same mosaics written as the official code's formatted files
  (`formatted_*_images.npy`, `formatted_*_labels.npy`) over 64x48 JPEGs (quality 90), so the
  training resize really shrinks and squeezes them, as it does COCO's photos.

Every run is the real command line, one process per run; runs whose `results.json` exists
are kept. Prints a table and writes it to `--out`.

    python benchmarks/resized_storage.py --seeds=0,1,2 --runs=runs/resized_storage
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

import numpy as np
from PIL import Image

from lln_jax.data import datasets, image_storage, preprocessing
from lln_jax.data.datasets import resized

IMAGE_SIZE = 32  # The embedded benchmark's training size (configs/digits.py).
CONFIG = "configs/digits.py:scheme=ll_r"


def write_fixture(root: pathlib.Path, data_dir: str) -> None:
    """The embedded benchmark's mosaics as formatted files over 64x48 JPEGs."""
    train, test = datasets.open_splits("digit_mosaics", data_dir)
    (root / "images").mkdir(parents=True)
    for split, opened in (("train", train), ("val", test)):
        names = []
        for row in range(len(opened.source)):
            pixels = preprocessing.decode(opened.source[row]["image"], name=str(row))
            name = f"{split}_{row:05d}.jpg"
            pixels.resize((64, 48), Image.BICUBIC).save(root / "images" / name, quality=90)
            names.append(name)
        np.save(root / f"formatted_{split}_images.npy", np.array(names))
        np.save(root / f"formatted_{split}_labels.npy", opened.labels["labels"].astype(np.int64))


def bytes_per_image(name: str, data_dir: str, storage) -> float:
    """Mean stored bytes per train image (originals: the records' encoded images)."""
    if storage is not None:
        entry = resized.entry(datasets.builder(name, data_dir), storage)
        split = entry["splits"]["train"]
        return split["bytes"] / split["count"]
    train, _ = datasets.open_splits(name, data_dir, allow_unchecked_counts=True)
    return float(np.mean([len(train.source[r]["image"]) for r in range(len(train.source))]))


def run(overrides: list[str], workdir: pathlib.Path) -> dict:
    results = workdir / "results.json"
    if not results.exists():
        command = [
            sys.executable, "-m", "lln_jax.main", f"--config={CONFIG}", *overrides,
            f"--workdir={workdir}",
        ]  # fmt: skip
        print("$", " ".join(command), flush=True)
        started = time.time()
        with (workdir.parent / f"{workdir.name}.log").open("w") as log:
            subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        print(f"  {time.time() - started:.0f} s", flush=True)
    return json.loads(results.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--storage", default="jpeg95")
    parser.add_argument("--runs", default="runs/resized_storage")
    parser.add_argument("--out", default="benchmarks/results/resized_storage.json")
    args = parser.parse_args()
    runs = pathlib.Path(args.runs).resolve()
    data_dir = str(runs / "data")
    storage = image_storage.parse(args.storage, IMAGE_SIZE)
    datasets.prepare("digit_mosaics", data_dir)
    if not (runs / "fixture").exists():
        write_fixture(runs / "fixture", data_dir)
    datasets.prepare("formatted", data_dir, manual_dir=str(runs / "fixture"), check_counts=False)
    sets = {
        "embedded (16x16 PNG)": ("digit_mosaics", []),
        "formatted fixture (64x48 JPEG)": (
            "formatted",
            ["--config.data.name=formatted", "--config.data.allow_unchecked_counts=True"],
        ),
    }
    rows = []
    for title, (name, extra) in sets.items():
        if resized.entry(datasets.builder(name, data_dir), storage) is None:
            datasets.write_resized(name, data_dir, storage, num_threads=2)
        for kind in (image_storage.ORIGINAL, args.storage):
            maps = [
                run(
                    [*extra, f"--config.data.data_dir={data_dir}", f"--config.seed={seed}",
                     f"--config.data.storage={kind}"],
                    runs / f"{name}-{kind}-seed{seed}",
                )["test_map"]
                for seed in (int(s) for s in args.seeds.split(","))
            ]  # fmt: skip
            stored = None if kind == image_storage.ORIGINAL else storage
            rows.append({
                "data": title, "storage": kind, "test_map": maps,
                "bytes_per_image": bytes_per_image(name, data_dir, stored),
            })  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": CONFIG, "seeds": args.seeds, "rows": rows}, indent=2))
    print("| data | storage | bytes per image | test mAP per seed | mean ± std |")
    print("|---|---|---|---|---|")
    for row in rows:
        maps = row["test_map"]
        print(
            f"| {row['data']} | {row['storage']} | {row['bytes_per_image']:.0f} | "
            f"{' / '.join(f'{m:.2f}' for m in maps)} | {np.mean(maps):.2f} ± {np.std(maps):.2f} |"
        )


if __name__ == "__main__":
    main()
