"""Test mAP on the embedded digit-mosaic benchmark: every scheme, and LL with BoostLU.

Trains every setting for every seed with the real command line (one process per run),
skipping runs whose `results.json` already exists, then prints a markdown table (mean and
standard deviation over seeds) and the false-negative losses per epoch, and writes all
numbers to `--out`.

    python benchmarks/embedded.py --seeds=0,1,2 --runs=runs/embedded
"""

import argparse
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np


def _sweep_settings() -> dict[str, str]:
    """Table row -> the config argument: the embedded sweep's own list (one list for both)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "sweeps" / "embedded.py"
    spec = importlib.util.spec_from_file_location("embedded_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SETTINGS


SETTINGS = _sweep_settings()
CONFIG = "configs/digits.py"


def _run(arg: str, seed: int, workdir: pathlib.Path) -> dict:
    results = workdir / "results.json"
    if not results.exists():
        command = [
            sys.executable, "-m", "lln_jax.main", f"--config={CONFIG}:{arg}",
            f"--config.seed={seed}", f"--workdir={workdir}",
        ]  # fmt: skip
        print("$", " ".join(command), flush=True)
        started = time.time()
        log = (workdir.parent / f"{workdir.name}.log").open("w")
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        print(f"  {time.time() - started:.0f} s", flush=True)
    return json.loads(results.read_text())


def cpu_model_and_isa() -> str:
    """The CPU's model name and its widest vector ISA: XLA:CPU's kernels, and so the last
    bits of every result, depend on both."""
    info = pathlib.Path("/proc/cpuinfo")
    fields = dict(
        line.split(":", 1) for line in reversed(info.read_text().splitlines()) if ":" in line
    ) if info.exists() else {}  # fmt: skip
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    model = fields.get("model name", platform.processor() or platform.machine())
    flags = set(fields.get("flags", "").split())
    isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
                if flag in flags), "SSE")  # fmt: skip
    return f"{model} ({isa})"


def _machine() -> str:
    import jax

    return (
        f"{cpu_model_and_isa()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}"
    )


def _table(summary: dict) -> str:
    lines = ["| setting | test mAP (mean ± std) | per seed | best epoch |", "|---|---|---|---|"]
    for name, row in summary.items():
        per_seed = " / ".join(f"{v:.2f}" for v in row["test_map"])
        epochs = " / ".join(str(e) for e in row["best_epoch"])
        lines.append(
            f"| {name} | {np.mean(row['test_map']):.2f} ± {np.std(row['test_map']):.2f} "
            f"| {per_seed} | {epochs} |"
        )
    return "\n".join(lines)


def _false_negative_table(summary: dict) -> str:
    lines = ["| setting | false-negative loss by epoch (mean over seeds) |", "|---|---|"]
    for name, row in summary.items():
        curves = row.get("train_false_negative_loss")
        if curves:
            length = min(len(c) for c in curves)
            mean = np.mean([c[:length] for c in curves], axis=0)
            lines.append(f"| {name} | {' '.join(f'{v:.2f}' for v in mean)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default="runs/embedded", help="workdirs go here")
    parser.add_argument("--out", default="benchmarks/results/embedded.json")
    parser.add_argument("--only", default="", help="comma-separated rows (default: all)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = pathlib.Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    summary = {}
    rows = [r for r in SETTINGS if not args.only or r in args.only.split(",")]
    for name, arg in ((r, SETTINGS[r]) for r in rows):
        results = [_run(arg, seed, runs / f"{arg.replace(',', '-')}-seed{seed}") for seed in seeds]
        summary[name] = {
            "config_arg": arg,
            "test_map": [r["test_map"] for r in results],
            "best_epoch": [r["best_epoch"] for r in results],
            "val_map": [r["val_map"] for r in results],
            "train_false_negative_loss": [r.get("train_false_negative_loss") for r in results],
            "train_true_negative_loss": [r.get("train_true_negative_loss") for r in results],
        }
    report = {"machine": _machine(), "config": CONFIG, "seeds": seeds, "settings": summary}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nMachine: {report['machine']}\n")
    print(_table(summary))
    print()
    print(_false_negative_table(summary))


if __name__ == "__main__":
    main()
