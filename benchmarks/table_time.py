"""The work in a sweep's cells, and the wall time it takes on N chips at a per-chip rate.

Counts every cell's images from its own config and its data set's stated sizes: training
is `num_epochs` passes over the train split (the last batch padded) plus LinearInit's
epochs, evaluation one val pass per epoch and one test pass. No early stop is assumed, so
the work is an upper bound. One run per chip (`lln_jax.sweep`): the cells spread over the
chips, and the time is the work over the chips' summed rate, or the longest cell when that
is longer. Two rates per chip:

- the bf16 peak, at `--gflop_per_image` (XLA's flops for one training image at 448, from the
  compiled step: `python -m lln_jax.plan` or `benchmarks/train_step.py --topologies`;
  scaled by the image area for other sizes; an evaluation image counts a third, the forward
  pass): a lower bound on the time;
- `--images_per_s`: a training rate per chip at 448, measured or published.

    python benchmarks/table_time.py --chips=4 --peak_tflops=275 --images_per_s=1130   # a v4-8
"""

import argparse
import importlib.util
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_SIZE = 448
FORWARD_SHARE = 1 / 3  # Forward of forward + backward (the backward is about twice it).


def _module(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(argument: str):
    path, _, arg = argument.partition(":")
    return _module(ROOT / path).get_config(arg or None)


def cell_images(config) -> tuple[float, float]:
    """(training images, evaluation images) of one run, in 448-pixel equivalents."""
    from lln_jax.data import datasets

    builder_cls = datasets.get(config.data.name).builder_cls
    _, num_train = datasets.stated_size(config.data.name, config.data.val_frac)
    num_val = builder_cls.EXPECTED_COUNTS["train"] - num_train
    num_test = builder_cls.EXPECTED_COUNTS["test"]
    batch = config.data.batch_size
    epoch = math.ceil(num_train / batch) * batch
    linear = config.linear_init
    linear_epoch = math.ceil(num_train / linear.batch_size) * linear.batch_size
    area = (config.data.image_size / REFERENCE_SIZE) ** 2
    train = (config.num_epochs * epoch + linear.num_epochs * linear_epoch) * area
    evaluate = ((config.num_epochs + linear.num_epochs) * num_val + num_test) * area
    return train, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="configs/sweeps/paper_table.py")
    parser.add_argument("--chips", type=int, required=True)
    parser.add_argument("--gflop_per_image", type=float, default=97.5)
    parser.add_argument("--peak_tflops", type=float, required=True)
    parser.add_argument("--images_per_s", type=float, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    cells = _module(ROOT / args.sweep).CELLS
    work = [cell_images(_config(cell.config)) for cell in cells]
    train, evaluate = (sum(column) for column in zip(*work, strict=True))
    print(
        f"{len(cells)} cells: {train / 1e6:.1f} M training and {evaluate / 1e6:.1f} M "
        f"evaluation images (448-pixel equivalents, every epoch run)"
    )
    # An evaluation image costs FORWARD_SHARE of a training image.
    equivalent = [t + FORWARD_SHARE * e for t, e in work]
    rates = {"at the bf16 peak (lower bound)": args.peak_tflops * 1e3 / args.gflop_per_image}
    if args.images_per_s:
        rates[f"at {args.images_per_s:g} training images/s per chip"] = args.images_per_s
    for name, rate in rates.items():
        hours = max(sum(equivalent) / args.chips, max(equivalent)) / rate / 3600
        print(f"{args.chips} chips {name}: {hours:.1f} h ({rate:.0f} images/s per chip)")


if __name__ == "__main__":
    main()
