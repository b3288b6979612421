"""Input throughput: decoded, resized (448x448), flipped images per second.

Writes real photographs (scikit-learn's two bundled sample photos, cropped, flipped and
resized into COCO-like 640x480 JPEGs) as the official code's formatted files, prepares them
with the `formatted` builder, adds the pre-resized stores (`prepare --image_size=448`,
`jpeg95` and `raw`), and times for each storage (1) the per-image work on one core
(`preprocessing.load_image`: decode, resize where needed, flip), (2) the whole grain
pipeline of training batches with 1 and 2 threads in the process, and with 1 and 2 worker
processes of one thread each, and (3) the official code's
input: a PyTorch `DataLoader` over the same JPEG files with PIL, `Resize((448, 448))`,
`RandomHorizontalFlip`, `ToTensor` and `Normalize`, with the same numbers of workers (needs
`pip install -e '.[bench]'`; skipped without torchvision).

    python benchmarks/input_pipeline.py --images=256 --out=benchmarks/results/input_pipeline.json
"""

import argparse
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

import numpy as np
from absl import flags as absl_flags
from PIL import Image
from sklearn.datasets import load_sample_images

from lln_jax.data import datasets, image_storage, input_pipeline, labeled_splits, preprocessing


def write_photos(root: pathlib.Path, count: int, seed: int = 0) -> None:
    """`count` 640x480 JPEG crops of real photos, as formatted files with random labels."""
    rng = np.random.default_rng(seed)
    photos = load_sample_images().images  # Two 427x640 RGB photographs.
    names = []
    (root / "images").mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        top, left = rng.integers(0, 100), rng.integers(0, 160)
        crop = Image.fromarray(photo[top : top + 320, left : left + 480])
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        name = f"photo_{i:05d}.jpg"
        crop.resize((640, 480), Image.BILINEAR).save(root / "images" / name, quality=90)
        names.append(name)
    for split, rows in (("train", names), ("val", names[:16])):
        labels = (rng.random((len(rows), 20)) < 0.1).astype(np.int64)
        np.save(root / f"formatted_{split}_images.npy", np.array(rows))
        np.save(root / f"formatted_{split}_labels.npy", labels)


def per_core_rate(encoded: list[bytes], size: int, repeats: int) -> float:
    """Images per second of decode + resize + flip in this one thread."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i, data in enumerate(encoded):
            preprocessing.load_image(data, size=size, flip=i % 2 == 0, name="bench")
        rates.append(len(encoded) / (time.perf_counter() - start))
    return statistics.median(rates)


def pipeline_rate(
    split, *, size: int, batch_size: int, workers: int, threads: int, batches: int
) -> float:
    """Images per second through `input_pipeline.batches` (after its first batch)."""
    iterator = input_pipeline.batches(
        split, batch_size=batch_size, image_size=size, seed=0, train=True,
        start=0, stop=batches + 1, num_threads=threads, num_workers=workers,
        process_index=0, process_count=1,
    )  # fmt: skip
    next(iterator)  # Start-up (worker processes, first reads) is not throughput.
    start = time.perf_counter()
    count = sum(len(batch["image"]) for batch in iterator)
    return count / (time.perf_counter() - start)


def torch_rate(image_dir: pathlib.Path, *, size: int, batch_size: int, workers: int) -> float:
    """Images per second through the official code's PyTorch input (after its first batch)."""
    import torch
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.Resize((size, size)),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    ])  # fmt: skip
    paths = sorted(image_dir.glob("*.jpg"))

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, index):
            with Image.open(paths[index]) as image:
                return transform(image.convert("RGB"))

    loader = torch.utils.data.DataLoader(
        Photos(), batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True
    )
    iterator = iter(loader)
    next(iterator)
    start = time.perf_counter()
    count = sum(len(batch) for batch in iterator)
    return count / (time.perf_counter() - start)


def storage_rates(data_dir: pathlib.Path, encoding: str, args) -> dict:
    """Bytes per image, the per-core rate and the pipeline's rates of one storage."""
    storage = image_storage.parse(encoding, args.size)
    entry = None
    if storage is not None:
        entry = datasets.write_resized("formatted", str(data_dir), storage, num_threads=2)
    train, test = datasets.open_splits("formatted", str(data_dir), storage=storage)
    splits = labeled_splits.create_splits(
        train, test, label_setting="single_positive",
        observed_seed=1200, split_seed=1200, val_frac=0.0,
    )  # fmt: skip
    encoded = [train.source[i]["image"] for i in range(len(train.source))]
    rates = {
        "bytes_per_image": statistics.mean(len(e) for e in encoded),
        "per_core_images_per_s": per_core_rate(encoded[:128], args.size, repeats=3),
        "pipeline_images_per_s": {},
    }
    if entry is not None:
        assert entry["splits"]["train"]["count"] == len(encoded)
    batches = args.images // args.batch_size - 1
    for workers, threads in ((0, 1), (0, 2), (1, 1), (2, 1)):
        rates["pipeline_images_per_s"][f"{threads} threads, {workers} workers"] = pipeline_rate(
            splits["train"], size=args.size, batch_size=args.batch_size,
            workers=workers, threads=threads, batches=batches,
        )  # fmt: skip
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/results/input_pipeline.json")
    args = parser.parse_args()
    absl_flags.FLAGS.mark_as_parsed()  # argparse's program: grain's workers read absl's flags.
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        write_photos(root / "manual", args.images)
        datasets.prepare(
            "formatted", str(root / "data"), manual_dir=str(root / "manual"), check_counts=False
        )
        report = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "image": "640x480 JPEG (quality 90) of real photos",
            "output": f"{args.size}x{args.size} uint8, random flip",
            "storage": {},
        }
        for encoding in (image_storage.ORIGINAL, "jpeg95", "raw"):
            report["storage"][encoding] = storage_rates(root / "data", encoding, args)
        try:
            import torchvision  # noqa: F401
        except ImportError:
            print("torchvision is not installed: the PyTorch DataLoader is not timed")
        else:
            report["pytorch_images_per_s"] = {
                str(w): torch_rate(root / "manual" / "images", size=args.size,
                                   batch_size=args.batch_size, workers=w)
                for w in (0, 1, 2)
            }  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"machine: {report['machine']}; {report['image']} -> {report['output']}")
    settings = list(report["storage"][image_storage.ORIGINAL]["pipeline_images_per_s"])
    print(f"| storage | bytes per image | one core, per image | {' | '.join(settings)} |")
    print("|---" * (3 + len(settings)) + "|")
    for encoding, rates in report["storage"].items():
        pipeline = " | ".join(f"{rates['pipeline_images_per_s'][k]:.1f}" for k in settings)
        print(
            f"| {encoding} | {rates['bytes_per_image']:.0f} | "
            f"{rates['per_core_images_per_s']:.1f} | {pipeline} |"
        )
    print("\n| PyTorch DataLoader: num_workers | images/s |\n|---|---|")
    for workers, rate in report.get("pytorch_images_per_s", {}).items():
        print(f"| {workers} | {rate:.1f} |")


if __name__ == "__main__":
    main()
