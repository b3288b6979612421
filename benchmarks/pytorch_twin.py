"""A PyTorch twin of lln_jax's trainer on the embedded benchmark (needs the `bench` extra).

The twin is the reference side of the claim "the same method as the PyTorch code":

- the same small ResNet (torchvision's `Bottleneck` and module names; the shape of
  lln_jax's `resnet_small`), initialised as torchvision initialises a ResNet;
- the same initial weights: the twin's, converted for lln_jax by the project's converter
  (`lln_jax.models.pretrained.convert`, the path of the ImageNet weights);
- the same batches in the same order: lln_jax's input pipeline, whose padded last batch
  the twin cuts to its real rows (the reference's smaller last batch);
- SPEC.md's semantics for AN, LL-R, LL-Ct and LL-Cp, written here in PyTorch from the spec
  (exact k, the ranking over the unobserved entries of the batch, ties with the k-th loss
  included, LL-Cp's corrections kept in a label table), and Adam as the paper's.

Two modes, each printing a table and writing JSON:

    python benchmarks/pytorch_twin.py --mode=steps     # step-level equivalence
    python benchmarks/pytorch_twin.py --mode=train --seeds=0,1,2 --runs=runs/embedded

`steps`: from identical weights, the first `--steps` steps of epoch 2 (where every large-loss
scheme selects) in both frameworks: the loss of every step, the number of selected entries,
and the parameters after them. `train`: the twin trains each scheme for every seed with
the config's protocol (val mAP each epoch, the best-val model tested, the early stop), and
is put beside lln_jax's trainer started from the twin's initial weights of the same seed
and beside lln_jax's own runs (`results.json` under `--runs`, as `benchmarks/embedded.py`
writes them; missing runs are trained with the real command). Every run is kept under
`--runs`, so a rerun only trains what is missing.
"""

import argparse
import copy
import importlib.util
import json
import math
import pathlib
import platform
import subprocess
import sys
from fractions import Fraction
from unittest import mock

import jax
import numpy as np
import torch
from torch.nn import functional
from torch_resnet import TorchResNet

from lln_jax.data import input_pipeline, labeled_splits
from lln_jax.evaluation import metrics
from lln_jax.models import pretrained, resnet
from lln_jax.training import experiment, initial_state, loop, trainer

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
SCHEMES = ("an", "ll_r", "ll_ct", "ll_cp")
MEAN, STD = resnet.IMAGENET_MEAN, resnet.IMAGENET_STD


def load_config(scheme: str, seed: int = 0, data_dir: str | None = None):
    spec = importlib.util.spec_from_file_location("digits", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(f"scheme={scheme}")
    config.seed, config.data.data_dir = seed, data_dir
    config.diagnose_false_negatives = False
    return config


# ----------------------------------------------------------------------------- the model


def twin_resnet(num_classes: int) -> TorchResNet:
    """torchvision's ResNet v1.5 in the shape of lln_jax's `resnet_small`."""
    return TorchResNet(num_classes, **resnet.ResNetSmall.keywords)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 `[B, H, W, 3]` -> `[B, 3, H, W]`, ToTensor + Normalize."""
    x = torch.from_numpy(pixels).float().permute(0, 3, 1, 2) / 255.0
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def jax_variables(model: TorchResNet) -> dict:
    """The twin's weights and BatchNorm statistics, converted for lln_jax."""
    state_dict = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    return pretrained.convert(state_dict)


# ----------------------------------------------------------------------------- the schemes


def rate_of(scheme: str, delta: Fraction, epoch: int) -> Fraction:
    """SPEC.md section 3, in exact arithmetic (1-indexed epochs)."""
    if scheme == "an" or epoch == 1:
        return Fraction(0)
    return delta if scheme == "ll_cp" else min((epoch - 1) * delta, Fraction(1))


def reference_loss(logits, labels_obs, scheme: str, rate: Fraction):
    """SPEC.md section 2 on a batch of real rows: `(loss, modified mask)`."""
    losses = functional.binary_cross_entropy_with_logits(
        logits, (labels_obs == 1).float(), reduction="none"
    )
    unobserved = labels_obs == 0
    k = math.ceil(rate * losses.numel())  # Exact: a Fraction times an integer.
    if k == 0:
        return losses.mean(), torch.zeros_like(unobserved)
    detached = losses.detach()
    if k >= int(unobserved.sum()):
        modified = unobserved
    else:
        scores = torch.where(unobserved, detached, torch.tensor(-math.inf)).flatten()
        tau = torch.topk(scores, k).values[-1]
        modified = unobserved & (detached >= tau)
    if scheme == "ll_r":
        final = torch.where(modified, torch.zeros_like(losses), losses)
    else:  # ll_ct, ll_cp: trained as positives.
        positive = functional.binary_cross_entropy_with_logits(
            logits, torch.ones_like(logits), reduction="none"
        )
        final = torch.where(modified, positive, losses)
    return final.mean(), modified


class Twin:
    """The twin's model, Adam (the head at its multiplier) and LL-Cp's label table."""

    def __init__(self, config, model: TorchResNet, labels_obs: np.ndarray, steps_per_epoch: int):
        self.scheme, self.steps_per_epoch = config.scheme.name, steps_per_epoch
        self.image_size = config.data.image_size
        self.delta = Fraction(str(config.scheme.get("delta_rel", 0)))
        self.model = model
        optim = config.optim
        head = list(model.fc.parameters())
        backbone = [p for name, p in model.named_parameters() if not name.startswith("fc.")]
        lr = optim.learning_rate
        self.optimizer = torch.optim.Adam(
            [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * optim.head_lr_multiplier}],
            betas=(optim.b1, optim.b2), eps=optim.eps, weight_decay=optim.weight_decay,
        )  # fmt: skip
        self.labels_obs = torch.from_numpy(labels_obs.astype(np.int64))

    def step(self, step: int, batch: dict) -> tuple[float, int]:
        """One step on the real rows of `batch`; returns the loss and the selected count."""
        real = batch["mask"] > 0
        ids = torch.from_numpy(batch["example_id"][real].astype(np.int64))
        labels_obs = self.labels_obs[ids]
        epoch = step // self.steps_per_epoch + 1
        self.model.train()
        logits = self.model(to_tensor(batch["image"][real]))
        loss, modified = reference_loss(
            logits, labels_obs, self.scheme, rate_of(self.scheme, self.delta, epoch)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheme == "ll_cp":  # Permanent: observed positives from now on.
            self.labels_obs[ids] = torch.where(modified, torch.ones_like(labels_obs), labels_obs)
        return loss.item(), int(modified.sum())

    @torch.no_grad()
    def test_map(self, split, batch_size: int) -> float:
        self.model.eval()
        scores, labels = [], []
        for batch in input_pipeline.batches(
            split, batch_size=batch_size, image_size=self.image_size, seed=0, train=False,
            start=0, stop=input_pipeline.steps_per_epoch(split.num_examples, batch_size),
            process_index=0, process_count=1,
        ):  # fmt: skip
            real = batch["mask"] > 0
            scores.append(torch.sigmoid(self.model(to_tensor(batch["image"][real]))).numpy())
            labels.append(batch["labels_true"][real])
        return metrics.mean_average_precision(np.concatenate(scores), np.concatenate(labels))


# ----------------------------------------------------------------------------- steps mode


def compare_steps(
    scheme: str, num_steps: int, data_dir: str, *, learning_rate: float, seed: int = 0
) -> dict:
    """Both frameworks from identical weights over the first steps of epoch 2."""
    config = load_config(scheme, seed, data_dir)
    config.optim.learning_rate = learning_rate
    run = experiment.build(config)
    torch.manual_seed(seed)
    twin_model = twin_resnet(run.num_classes)
    variables = jax.device_put(jax_variables(twin_model), run.replicated)
    state = initial_state.fresh_state(run)
    start = run.steps_per_epoch  # Epoch 2: every large-loss scheme selects.
    state = state.replace(
        params=variables["params"], batch_stats=variables["batch_stats"],
        step=jax.device_put(np.int32(start), run.replicated),
    )  # fmt: skip
    twin = Twin(config, twin_model, run.splits["train"].labels_obs, run.steps_per_epoch)
    rows = []
    for offset, batch in enumerate(loop.train_batches(run, start)):
        if offset == num_steps:
            break
        global_batch = input_pipeline.to_global(batch, run.data_sharding)
        state, step_metrics, _ = run.train_step(state, global_batch)
        torch_loss, torch_selected = twin.step(start + offset, batch)
        rows.append({
            "jax_loss": float(step_metrics.loss.compute()),
            "torch_loss": torch_loss,
            "jax_selected": int(step_metrics.selected.total),
            "torch_selected": torch_selected,
        })  # fmt: skip
    final = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    twin_final = jax_variables(twin_model)
    differences = jax.tree.map(
        lambda a, b: float(np.max(np.abs(np.asarray(a) - b))), final, twin_final
    )
    scales = jax.tree.map(lambda b: float(np.max(np.abs(b))), twin_final)
    result = {
        "scheme": scheme,
        "steps": rows,
        "max_abs_param_difference": max(jax.tree.leaves(differences["params"])),
        "max_abs_param": max(jax.tree.leaves(scales["params"])),
        "max_abs_running_stat_difference": max(jax.tree.leaves(differences["batch_stats"])),
        "max_abs_running_stat": max(jax.tree.leaves(scales["batch_stats"])),
    }
    if scheme == "ll_cp":
        corrected = np.asarray(jax.device_get(state.scheme_state.corrected))
        twin_corrected = twin.labels_obs.numpy() != run.splits["train"].labels_obs
        result["corrections_equal"] = bool(np.array_equal(corrected, twin_corrected))
        result["corrections"] = int(twin_corrected.sum())
    return result


def summarize_steps(result: dict) -> dict:
    jax_loss = np.array([r["jax_loss"] for r in result["steps"]])
    torch_loss = np.array([r["torch_loss"] for r in result["steps"]])
    return {
        "max_relative_loss_difference": float(np.max(np.abs(jax_loss - torch_loss) / torch_loss)),
        "selected_equal": all(r["jax_selected"] == r["torch_selected"] for r in result["steps"]),
        "selected_total": sum(r["torch_selected"] for r in result["steps"]),
    }


# ----------------------------------------------------------------------------- train mode


def train_twin(scheme: str, seed: int, data_dir: str) -> dict:
    """The twin's whole run with the config's protocol; its test mAP at the best val."""
    config = load_config(scheme, seed, data_dir)
    splits = labeled_splits.open_splits(config.data)
    data = config.data
    steps_per_epoch = input_pipeline.steps_per_epoch(splits["train"].num_examples, data.batch_size)
    torch.manual_seed(seed)
    model = twin_resnet(splits["train"].labels_true.shape[1])
    twin = Twin(config, model, splits["train"].labels_obs, steps_per_epoch)
    best_val, best_epoch, best_state, val_maps = -1.0, 0, None, []
    batches = input_pipeline.batches(
        splits["train"], batch_size=data.batch_size, image_size=data.image_size, seed=seed,
        train=True, start=0, stop=steps_per_epoch * config.num_epochs,
        num_threads=data.num_threads, process_index=0, process_count=1,
    )  # fmt: skip
    for step, batch in enumerate(batches):
        twin.step(step, batch)
        if (step + 1) % steps_per_epoch:
            continue
        val_map = twin.test_map(splits["val"], data.eval_batch_size)
        val_maps.append(val_map)
        if val_map > best_val:
            best_val, best_epoch = val_map, (step + 1) // steps_per_epoch
            best_state = copy.deepcopy(model.state_dict())
        if val_map < best_val - config.early_stop_drop:
            break
    model.load_state_dict(best_state)
    return {
        "test_map": twin.test_map(splits["test"], data.eval_batch_size),
        "best_epoch": best_epoch,
        "val_map": val_maps,
    }


def twin_run(scheme: str, seed: int, runs: pathlib.Path, data_dir: str | None) -> dict:
    """The twin's run, kept as JSON under `runs` (a rerun of the benchmark reuses it)."""
    path = runs / f"pytorch_twin-{scheme}-seed{seed}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(train_twin(scheme, seed, data_dir)))
    return json.loads(path.read_text())


def lln_jax_from_twin_weights(
    scheme: str, seed: int, runs: pathlib.Path, data_dir: str | None
) -> dict:
    """lln_jax's trainer started from the twin's initial weights of the same seed (the
    control that separates the frameworks from their initialisations)."""
    workdir = runs / f"twin_weights-{scheme}-seed{seed}"
    if not (workdir / "results.json").exists():
        original_fresh_state = initial_state.fresh_state

        def fresh_state(run):
            state = original_fresh_state(run)
            torch.manual_seed(seed)  # As `train_twin` draws its model.
            variables = jax.device_put(jax_variables(twin_resnet(run.num_classes)), run.replicated)
            return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])

        with mock.patch.object(initial_state, "fresh_state", fresh_state):
            trainer.train_and_evaluate(load_config(scheme, seed, data_dir), str(workdir))
    return json.loads((workdir / "results.json").read_text())


def lln_jax_run(scheme: str, seed: int, runs: pathlib.Path, data_dir: str | None) -> dict:
    """lln_jax's results.json of the same setting (`benchmarks/embedded.py`'s layout)."""
    workdir = runs / f"scheme={scheme}-seed{seed}"
    if not (workdir / "results.json").exists():
        command = [
            sys.executable, "-m", "lln_jax.main", f"--config={CONFIG}:scheme={scheme}",
            f"--config.seed={seed}", f"--workdir={workdir}",
            *([f"--config.data.data_dir={data_dir}"] if data_dir else []),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    return json.loads((workdir / "results.json").read_text())


# ----------------------------------------------------------------------------- main


def _machine() -> str:
    machine = platform.processor() or platform.machine()
    return f"{machine}, torch {torch.__version__}, jax {jax.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("steps", "train"), default="steps")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--learning_rate", type=float, default=1e-5, help="steps mode")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default="runs/embedded", help="lln_jax's workdirs")
    parser.add_argument("--data_dir", default=None, help="TFDS's default when unset")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    schemes = args.schemes.split(",")
    out = pathlib.Path(args.out or f"benchmarks/results/pytorch_twin_{args.mode}.json")
    if args.mode == "steps":
        results = [
            compare_steps(s, args.steps, args.data_dir, learning_rate=args.learning_rate)
            for s in schemes
        ]
        report = {"machine": _machine(), "steps": args.steps, "schemes": results}
        print("| scheme | steps | max relative loss difference | selected (equal per step) "
              "| max abs param difference (largest param) | max abs running-stat difference "
              "(largest) | LL-Cp corrections equal |")  # fmt: skip
        print("|---|---|---|---|---|---|---|")
        for result in results:
            summary = summarize_steps(result)
            result["summary"] = summary
            stats = result["max_abs_running_stat_difference"], result["max_abs_running_stat"]
            print(
                f"| {result['scheme']} | {len(result['steps'])} | "
                f"{summary['max_relative_loss_difference']:.2e} | {summary['selected_total']} "
                f"({summary['selected_equal']}) | {result['max_abs_param_difference']:.2e} "
                f"({result['max_abs_param']:.2f}) | {stats[0]:.2e} ({stats[1]:.2f}) | "
                f"{result.get('corrections_equal', '-')} |"
            )
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        runs = pathlib.Path(args.runs)
        rows = {}
        for scheme in schemes:
            twin = [twin_run(scheme, seed, runs, args.data_dir) for seed in seeds]
            ours = [lln_jax_run(scheme, seed, runs, args.data_dir) for seed in seeds]
            control = [lln_jax_from_twin_weights(scheme, s, runs, args.data_dir) for s in seeds]
            rows[scheme] = {
                "pytorch_twin": [r["test_map"] for r in twin],
                "lln_jax_from_twin_weights": [r["test_map"] for r in control],
                "lln_jax": [r["test_map"] for r in ours],
                "pytorch_twin_best_epoch": [r["best_epoch"] for r in twin],
                "lln_jax_from_twin_weights_best_epoch": [r["best_epoch"] for r in control],
                "lln_jax_best_epoch": [r["best_epoch"] for r in ours],
            }
            print(scheme, rows[scheme], flush=True)
        report = {"machine": _machine(), "seeds": seeds, "schemes": rows}
        print(
            "| scheme | PyTorch twin | lln_jax from the twin's weights | lln_jax (own "
            "initialisation) |\n|---|---|---|---|"
        )
        for scheme, row in rows.items():
            cells = [
                np.array(row[k]) for k in ("pytorch_twin", "lln_jax_from_twin_weights", "lln_jax")
            ]
            print(
                f"| {scheme} | "
                + " | ".join(f"{c.mean():.2f} ± {c.std():.2f}" for c in cells)
                + " |"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
