"""How far `make demo`'s number moves with the CPU's vector ISA, and whether reruns agree.

XLA:CPU picks its kernels by the vector ISA (and the caches), so the last bits of every
operation, amplified over 12 epochs, depend on the machine. This runs the demo (LL-R, seed
0, one CPU device) uncapped twice (the rerun must be bit-identical) and once under each
`--xla_cpu_max_isa` cap, and writes the test mAPs with the machine's CPU model: the
spread that the published-number check in the slow tier allows for.

    python benchmarks/demo_across_isas.py --out=benchmarks/results/demo_across_isas.json
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import embedded

CAPS = ("", "", "AVX2", "AVX", "SSE4_2")  # "" is uncapped; twice, for the rerun.


def _demo(cap: str, workdir: pathlib.Path) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("XLA_")}
    if cap:
        environment["XLA_FLAGS"] = f"--xla_cpu_max_isa={cap}"
    command = [sys.executable, "-m", "lln_jax.main", f"--config={embedded.CONFIG}",
               f"--workdir={workdir}"]  # fmt: skip
    subprocess.run(command, env=dict(environment, JAX_PLATFORMS="cpu"), check=True,
                   capture_output=True)  # fmt: skip
    results = json.loads((workdir / "results.json").read_text())
    return {"isa_cap": cap or None, "test_map": results["test_map"],
            "epoch_1_val_map": results["val_map"][0]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/demo_across_isas.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        runs = [_demo(cap, pathlib.Path(scratch) / f"run{i}") for i, cap in enumerate(CAPS)]
    report = {"machine": embedded.cpu_model_and_isa(), "runs": runs,
              "rerun_bit_identical": runs[0]["test_map"] == runs[1]["test_map"]}  # fmt: skip
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for run in runs:
        print(f"{run['isa_cap'] or 'uncapped':>9}: test mAP {run['test_map']:.4f}")
    print(f"rerun bit-identical: {report['rerun_bit_identical']}")


if __name__ == "__main__":
    main()
