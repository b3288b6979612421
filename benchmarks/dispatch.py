"""How fast the training loop dispatches steps when the step itself costs ~nothing.

The real loop (`training/loop.py`: the input pipeline, the device prefetch thread that
assembles the global batches, the jitted step, metric merging, a log point every 50 steps)
over the embedded benchmark's full train split (2,400 mosaics, batch 8: 300 steps an
epoch), with the model replaced by a ~zero-cost one (the mean pixel into the linear head).
Read at the log points of one epoch (each waits for the device), the epoch's end and its
evaluation left out: the loop thread's CPU time per step (`time.thread_time`: what the host
spends to keep the device fed; the input's decoding and the transfer run in other threads)
and the wall time per step, once with the input decoded as in training and once with it
preloaded (what the loop sustains when the input keeps up; on a CPU the "device" step runs
on the same cores). The budget: ResNet-50 at 448 and batch 8 takes about 5 ms a step on an
H100 (from MLPerf's rates), so a loop thread that spends under 0.5 ms per step keeps such an
accelerator busy 10x over.

    python benchmarks/dispatch.py                      # every core
    taskset -c 0 python benchmarks/dispatch.py         # one host core
"""

import argparse
import functools
import json
import os
import pathlib
import tempfile
import time

import embedded  # This folder's: the CPU's model and ISA.
import flax.linen as nn
import jax
import jax.numpy as jnp

from lln_jax import models
from lln_jax.config import defaults
from lln_jax.data import datasets, input_pipeline
from lln_jax.training import experiment, initial_state, loop, trainer

H100_RESNET50_448_BATCH8_MS = 5.0
BUDGET_FRACTION = 0.1
LOG_EVERY = 50


class ZeroCost(nn.Module):
    """A classifier of ~zero cost with the model protocol: the mean pixel into the head."""

    num_classes: int
    dtype: object = jnp.float32
    boost_alpha: float = 1.0

    @nn.compact
    def __call__(self, images, train: bool = False, mask=None, features_only: bool = False):
        del train, mask
        pooled = jnp.mean(images.astype(jnp.float32) / 255.0, axis=(1, 2))
        if features_only:
            return pooled
        return nn.Dense(self.num_classes, name=models.HEAD_NAME)(pooled)


class _TimedWriter:
    """A metric writer that notes when each log point's scalars arrive."""

    def __init__(self):
        self.times: dict[int, float] = {}
        self.cpu_times: dict[int, float] = {}  # The loop thread's CPU time (its host cost).

    def write_scalars(self, step, scalars):
        if "train/loss" in scalars:
            self.times[int(step)] = time.perf_counter()
            self.cpu_times[int(step)] = time.thread_time()

    def __getattr__(self, name):  # Every other writer call is a no-op here.
        return lambda *args, **kwargs: None


def _config(data_dir: str, batch_size: int):
    config = defaults.create_config(
        "scheme=ll_r", dataset="digit_mosaics", optimizer="adam", learning_rate=1e-3,
        recipes={"ll_r": {"delta_rel": 0.02}}, num_epochs=1, image_size=32,
        batch_size=batch_size, model="zero_cost", head_lr_multiplier=1.0,
    )  # fmt: skip
    config.data.update(data_dir=data_dir, eval_batch_size=200, num_threads=2)
    config.log_every_steps = LOG_EVERY
    config.checkpoint.every_steps = 10**6
    return config


def _preloaded(batches) -> list:
    """The epoch's input batches, loaded before the clock starts."""
    return list(batches)


def measure(data_dir: str, workdir: str, batch_size: int, preload: bool) -> dict:
    """One epoch of the real loop: wall time and the loop thread's CPU time per step.

    With `preload`, the input's batches are loaded before the loop starts (the loop still
    takes them through its device prefetch), so the wall time is the loop's, not the
    decoder's: what it sustains when the input keeps up.
    """
    models.MODELS["zero_cost"] = ZeroCost
    writer = _TimedWriter()
    from clu import metric_writers

    original_writer, original_batches = metric_writers.create_default_writer, loop.train_batches
    metric_writers.create_default_writer = lambda *args, **kwargs: writer
    if preload:
        loop.train_batches = lambda *a, **k: iter(_preloaded(original_batches(*a, **k)))
    try:
        trainer.train_and_evaluate(_config(data_dir, batch_size), workdir)
    finally:
        metric_writers.create_default_writer = original_writer
        loop.train_batches = original_batches
    logged = sorted(writer.times)
    first, last = logged[0], logged[-1]  # The first interval holds the compile.

    def per_step_ms(times):
        return 1e3 * (times[last] - times[first]) / (last - first)

    return {
        "steps_timed": last - first,
        "wall_ms_per_step": per_step_ms(writer.times),
        "loop_thread_ms_per_step": per_step_ms(writer.cpu_times),
    }


def _per_step_ms(fn, steps: int) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return 1e3 * (time.perf_counter() - started) / steps


def parts(data_dir: str, batch_size: int, steps: int = 250) -> dict:
    """The loop's pieces alone: the input pipeline, the transfer, the step, the merge."""
    models.MODELS["zero_cost"] = ZeroCost
    built = experiment.build(_config(data_dir, batch_size))
    batches = loop.train_batches(built, 0)
    input_ms = _per_step_ms(lambda: next(batches), steps)
    batch = next(batches)
    to_global = functools.partial(input_pipeline.to_global, batch, built.data_sharding)
    state = initial_state.fresh_state(built)
    global_batch = to_global()
    state, metrics, _ = built.train_step(state, global_batch)  # Compiled here.
    holder = {"state": state}

    def step():
        holder["state"], out, _ = built.train_step(holder["state"], global_batch)
        return out

    merge = jax.jit(lambda merged, update: merged.merge(update))
    merge(metrics, metrics)
    return {
        "input_ms_per_step": input_ms,
        "transfer_ms_per_step": _per_step_ms(to_global, steps),
        "step_dispatch_and_run_ms": _per_step_ms(step, steps),
        "merge_ms_per_step": _per_step_ms(lambda: merge(metrics, metrics), steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/dispatch.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = str(pathlib.Path(tmp) / "tfds")
        datasets.prepare("digit_mosaics", data_dir)
        result = {
            name: measure(data_dir, str(pathlib.Path(tmp) / name), args.batch_size, preload)
            for name, preload in (("decoded_input", False), ("preloaded_input", True))
        }
        result["alone"] = parts(data_dir, args.batch_size)
    budget = BUDGET_FRACTION * H100_RESNET50_448_BATCH8_MS
    host_ms = result["decoded_input"]["loop_thread_ms_per_step"]
    result.update(
        batch_size=args.batch_size,
        cores=len(os.sched_getaffinity(0)),
        machine=f"{embedded.cpu_model_and_isa()}, jax {jax.__version__}",
        budget_ms=budget,
        within_budget=host_ms <= budget,
        headroom=H100_RESNET50_448_BATCH8_MS / host_ms,
    )
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    decoded, preloaded, alone = (
        result[k] for k in ("decoded_input", "preloaded_input", "alone")
    )  # fmt: skip
    print(
        f"the loop thread's host time per step: {host_ms:.3f} ms on {result['cores']} cores "
        f"({decoded['steps_timed']} steps); an H100's ResNet-50 448 batch-8 step is "
        f"~{H100_RESNET50_448_BATCH8_MS:g} ms: {result['headroom']:.1f}x headroom "
        f"(budget {budget:g} ms: {'met' if result['within_budget'] else 'NOT met'})\n"
        f"wall time per step: {decoded['wall_ms_per_step']:.3f} ms decoding the input, "
        f"{preloaded['wall_ms_per_step']:.3f} ms with it preloaded (loop thread "
        f"{preloaded['loop_thread_ms_per_step']:.3f} ms)\n"
        f"alone, per step: input {alone['input_ms_per_step']:.3f} ms, transfer "
        f"{alone['transfer_ms_per_step']:.3f} ms, step {alone['step_dispatch_and_run_ms']:.3f}"
        f" ms, metric merge {alone['merge_ms_per_step']:.3f} ms"
    )


if __name__ == "__main__":
    main()
