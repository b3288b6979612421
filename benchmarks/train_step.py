"""The training step of ResNet-50, lln_jax against the official PyTorch code, in one run.

Times forward, backward and optimizer update on random data of the paper's shapes
(80 classes, single positive labels), after warm-up, as the median of several timed steps:

- lln_jax: `steps.train_step` under `jax.jit` with `an` and `ll_r` (the large-loss selection
  active: an epoch-10 step), in float32 and, with `--dtypes=float32,bfloat16`, mixed precision;
- PyTorch, written as the official code does it: torchvision's ResNet-50, Adam with the
  head at 10x, `binary_cross_entropy_with_logits` and the LL-R selection with `torch.topk`
  (`compute_batch_loss` of the official `losses.py`), fp32 and, on a GPU, AMP.

    python benchmarks/train_step.py --size=224 --batch=8            # a CPU
    python benchmarks/train_step.py --size=448 --batch=16 --dtypes=float32,bfloat16  # a GPU
    python benchmarks/train_step.py --topologies=v4-2,v5e-1,v6e-1 --torch=none  # TPU chips

Rates are per step and per chip (the step is data-parallel over every local device). With
`--topologies`, the run's own step (`configs/coco.py`, LL-R, ResNet-50 448 at the paper's
batch) is compiled for those TPU slices by libtpu, here, with no TPU (`lln_jax.plan`): XLA's
flops per step and chip, and the ideal step at the chip's bf16 peak (a lower bound); one
chip (`v4-2`, `v5e-1`) is what each run of a sweep gets.

Prints a table and writes JSON (`--out`). Needs `pip install -e '.[bench]'` for PyTorch.
"""

import argparse
import functools
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from lln_jax import models, schemes
from lln_jax.run import sharding
from lln_jax.training import optim, steps
from lln_jax.training.train_state import create_train_state

NUM_CLASSES, DELTA_REL, EPOCH, STEPS_PER_EPOCH = 80, 0.004, 10, 100


def random_batch(batch: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels_obs = np.zeros((batch, NUM_CLASSES), np.int8)
    labels_obs[np.arange(batch), rng.integers(0, NUM_CLASSES, batch)] = 1
    return {
        "image": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "labels_obs": labels_obs,
        "labels_true": labels_obs.clip(0, 1),
        "example_id": np.arange(batch, dtype=np.int32),
        "mask": np.ones(batch, np.float32),
    }


def _median_rate(step_fn, batch: int, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step_fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step_fn()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def jax_step(scheme_name: str, dtype: str, batch: int, size: int):
    """A ready-to-call compiled step (state donated and threaded), and its FLOPs."""
    context = schemes.SchemeContext(
        batch * STEPS_PER_EPOCH, NUM_CLASSES, batch, STEPS_PER_EPOCH, EPOCH
    )
    hparams = {} if scheme_name == "an" else {"delta_rel": DELTA_REL}
    scheme = schemes.create(scheme_name, context=context, **hparams)
    model = models.create("resnet50", num_classes=NUM_CLASSES, dtype=dtype)
    tx, _ = optim.create(
        "adam", learning_rate=1e-5, head_lr_multiplier=10.0, scheme_lr_multiplier=10.0,
        head_name=models.HEAD_NAME, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
    )  # fmt: skip
    mesh = sharding.create_mesh()
    repl, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    create = functools.partial(
        create_train_state, model=model, tx=tx, scheme=scheme, image_shape=(size, size, 3),
        labels_obs=jnp.zeros((batch * STEPS_PER_EPOCH, NUM_CLASSES), jnp.int8),
    )  # fmt: skip
    state = jax.jit(create, out_shardings=repl)(jax.random.PRNGKey(0))
    state = state.replace(step=jax.device_put(jnp.int32((EPOCH - 1) * STEPS_PER_EPOCH), repl))
    global_batch = jax.device_put(random_batch(batch, size), data)
    step = jax.jit(
        functools.partial(steps.train_step, model=model, scheme=scheme),
        donate_argnums=0, out_shardings=(repl, repl),
    )  # fmt: skip
    compiled = step.lower(state, global_batch).compile()
    flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], global_batch)
        jax.block_until_ready(metrics)

    return run, flops / batch


def torch_step(scheme_name: str, amp: bool, batch: int, size: int):
    """The official code's step: torchvision ResNet-50, Adam, BCE, LL-R's torch.topk."""
    import torch
    from torchvision.models import resnet50

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = resnet50(weights=None, num_classes=NUM_CLASSES).to(device).train()
    head = list(model.fc.parameters())
    backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    optimizer = torch.optim.Adam(
        [{"params": backbone, "lr": 1e-5}, {"params": head, "lr": 1e-4}], betas=(0.9, 0.999)
    )
    data = random_batch(batch, size)
    images = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).float().div(255).to(device)
    labels = torch.from_numpy(data["labels_obs"]).float().to(device)
    clean_rate = 1.0 - (EPOCH - 1) * DELTA_REL if scheme_name == "ll_r" else 1.0
    scaler = torch.amp.GradScaler(device, enabled=amp)

    def compute_batch_loss(logits, label_vec):  # The official losses.py, LL-R branch.
        unobserved_mask = label_vec == 0
        loss_matrix = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, label_vec.clip(0), reduction="none"
        )
        if clean_rate == 1:
            return loss_matrix.mean()
        k = math.ceil(logits.size(0) * logits.size(1) * (1 - clean_rate))
        unobserved_loss = unobserved_mask.bool() * loss_matrix
        topk_lossvalue = torch.topk(unobserved_loss.flatten(), k).values[-1]
        zero = torch.zeros_like(loss_matrix)
        return torch.where(unobserved_loss < topk_lossvalue, loss_matrix, zero).mean()

    def run():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=torch.float16 if device == "cuda" else torch.bfloat16,
                            enabled=amp):  # fmt: skip
            logits = model(images)
        loss = compute_batch_loss(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if device == "cuda":
            torch.cuda.synchronize()

    return run, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--torch", default="fp32", help="comma list of fp32, amp; or none")
    parser.add_argument("--schemes", default="an,ll_r")
    parser.add_argument("--peak_tflops", type=float, default=None, help="for the MFU column")
    parser.add_argument("--topologies", default="", help="TPU slices to compile for, e.g. v4-2")
    parser.add_argument("--config", default="configs/coco.py:scheme=ll_r", help="--topologies'")
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args()
    rows, flops_per_image = [], None
    scheme_names = args.schemes.split(",") if args.dtypes else []
    for dtype in filter(None, args.dtypes.split(",")):
        for scheme_name in scheme_names:
            run, flops_per_image = jax_step(scheme_name, dtype, args.batch, args.size)
            rate = _median_rate(run, args.batch, args.warmup, args.repeats)
            rows.append(
                {
                    "framework": "jax",
                    "precision": dtype,
                    "scheme": scheme_name,
                    "images_per_s": rate,
                    "images_per_s_per_chip": rate / jax.device_count(),
                }
            )
            print(rows[-1], flush=True)
    for mode in filter(lambda m: m != "none", args.torch.split(",")):
        for scheme_name in scheme_names:
            run, _ = torch_step(scheme_name, mode == "amp", args.batch, args.size)
            rate = _median_rate(run, args.batch, args.warmup, args.repeats)
            rows.append(
                {
                    "framework": "pytorch",
                    "precision": mode,
                    "scheme": scheme_name,
                    "images_per_s": rate,
                }
            )
            print(rows[-1], flush=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "jax_device": str(jax.devices()[0].device_kind),
        "size": args.size, "batch": args.batch, "warmup": args.warmup, "repeats": args.repeats,
        "jax_devices": jax.device_count(),
        "xla_flops_per_training_image": flops_per_image,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "rows": rows,
        "tpu_plans": [
            tpu_plan_row(args.config, name) for name in filter(None, args.topologies.split(","))
        ],
    }  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    _print_table(report, flops_per_image, args.peak_tflops)


def tpu_plan_row(config_arg: str, accelerator: str) -> dict:
    """`lln_jax.plan` for one slice: the run's step compiled by libtpu, its cost per chip."""
    from lln_jax.data import datasets
    from lln_jax.training import tpu_plan

    config_file, _, overrides = config_arg.partition(":")
    spec = importlib.util.spec_from_file_location("config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(overrides or None)
    num_classes, num_train = datasets.stated_size(config.data.name, config.data.val_frac)
    plan = tpu_plan.plan(config, accelerator, num_classes=num_classes, num_train=num_train)
    print("\n".join(plan.lines()), flush=True)
    per_chip = plan.global_batch / plan.num_chips
    return {
        "accelerator": accelerator, "topology": plan.topology, "config": config_arg,
        "global_batch": plan.global_batch, "gib_per_chip": plan.bytes_per_chip / 2**30,
        "flops_per_step_and_chip": plan.flops_per_step,
        "ideal_step_ms": 1e3 * plan.ideal_step_s,
        "ideal_images_per_s_per_chip": per_chip / plan.ideal_step_s,
    }  # fmt: skip


def _print_table(report: dict, flops_per_image: float | None, peak_tflops: float | None) -> None:
    for plan in report["tpu_plans"]:
        print(
            f"{plan['accelerator']}: {plan['flops_per_step_and_chip'] / 1e9:.0f} GFLOP per step "
            f"and chip, ideal step {plan['ideal_step_ms']:.2f} ms = "
            f"{plan['ideal_images_per_s_per_chip']:.0f} images/s per chip at the bf16 peak"
        )
    if not report["rows"]:
        return
    print(
        f"\n{report['machine']}; JAX on {report['jax_device']}; ResNet-50 at {report['size']}, "
        f"batch {report['batch']}; {flops_per_image / 1e9:.1f} GFLOP per training image (XLA)\n"
    )
    print(
        "| framework | precision | scheme | images/s | per chip | GFLOP/s | MFU |\n"
        "|---|---|---|---|---|---|---|"
    )
    jax_fp32 = {r["scheme"]: r["images_per_s"] for r in report["rows"]
                if r["framework"] == "jax" and r["precision"] == "float32"}  # fmt: skip
    for row in report["rows"]:
        rate = row["images_per_s"]
        gflops = rate * flops_per_image / 1e9
        mfu = f"{gflops / (peak_tflops * 1e3):.1%}" if peak_tflops else "-"
        print(
            f"| {row['framework']} | {row['precision']} | {row['scheme']} | {rate:.2f} "
            f"| {row.get('images_per_s_per_chip', rate):.2f} | {gflops:.1f} | {mfu} |"
        )
    for row in report["rows"]:
        if row["framework"] == "pytorch" and row["scheme"] in jax_fp32:
            ratio = jax_fp32[row["scheme"]] / row["images_per_s"]
            print(f"JAX float32 / PyTorch {row['precision']} ({row['scheme']}): {ratio:.2f}x")
    if "an" in jax_fp32 and "ll_r" in jax_fp32:
        print(f"JAX ll_r step time / an step time: {jax_fp32['an'] / jax_fp32['ll_r']:.3f}")


if __name__ == "__main__":
    main()
