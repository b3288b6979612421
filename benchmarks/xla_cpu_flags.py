"""Does an XLA CPU flag speed up the ResNet-50 train step? Each setting in its own process.

Runs `benchmarks/train_step.py` (lln_jax only, `an`, float32) once per `XLA_FLAGS` setting
and prints images/s against the default compiler settings.

    python benchmarks/xla_cpu_flags.py --size=224 --batch=8
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

SETTINGS = {
    "default": "",
    "oneDNN (use_onednn)": "--xla_cpu_use_onednn=true",
    "oneDNN custom calls": "--xla_cpu_experimental_onednn_custom_call=true",
    "XNNPACK": "--xla_cpu_use_xnnpack=true",
    "fast math": "--xla_cpu_enable_fast_math=true",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/xla_cpu_flags.json")
    args = parser.parse_args()
    results = {}
    script = pathlib.Path(__file__).with_name("train_step.py")
    for name, flags in SETTINGS.items():
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            done = subprocess.run(
                [sys.executable, str(script), f"--size={args.size}", f"--batch={args.batch}",
                 "--warmup=1", f"--repeats={args.repeats}", "--torch=none", "--schemes=an",
                 f"--out={out.name}"],
                env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True,
                check=False,
            )  # fmt: skip
            if done.returncode:
                results[name] = {"flags": flags, "error": done.stderr.strip().splitlines()[-1]}
            else:
                rate = json.loads(pathlib.Path(out.name).read_text())["rows"][0]["images_per_s"]
                results[name] = {"flags": flags, "images_per_s": rate}
        print(name, results[name], flush=True)
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    base = results["default"].get("images_per_s")
    print("\n| setting | XLA_FLAGS | images/s | vs default |\n|---|---|---|---|")
    for name, row in results.items():
        rate = row.get("images_per_s")
        shown = f"{rate:.2f} | {rate / base:.2f}" if rate and base else f"{row.get('error')} | -"
        print(f"| {name} | `{row['flags']}` | {shown} |")


if __name__ == "__main__":
    main()
