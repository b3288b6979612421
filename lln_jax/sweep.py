"""Command line: `python -m lln_jax.sweep --sweep=configs/sweeps/paper_table.py --runs=DIR
[-- FLAGS...]`, FLAGS going to every cell's `lln_jax.main` (e.g. a pod's gs:// data dir).

Runs the sweep's cells that are not finished, one process per local accelerator chip
(`lln_jax/run/sweep.py`), then writes the report over DIR (`DIR/report`). The same command
on every host of a pod, or twice on one machine, shares the cells through their workdirs'
leases; run it again after a preemption to finish. `--dry-run` lists every cell and where it
stands (done, running where, failed with its log's last line, to do).

Exit codes: 0 every cell of this sweep finished (here or elsewhere), 1 some failed
`--max_attempts` times (listed), 2 a bad sweep file or flag, 75 stopped by SIGTERM/SIGINT
(every run saved; rerun the command).
"""

import glob
import importlib.util
import os
import signal
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("sweep", None, "A Python file under configs/sweeps/ that defines CELLS.")
flags.DEFINE_string("runs", None, "Where each cell's workdir goes (local or gs://).")
flags.DEFINE_string("logs", None, "Where each cell's log goes (local; default RUNS/_logs or "
                    "./lln_logs/sweep for a gs:// RUNS).")  # fmt: skip
flags.DEFINE_enum("platform", "auto", ["auto", "tpu", "gpu", "cpu"], "The chips to share out.")
flags.DEFINE_integer("processes", None, "Runs at once (default: one per local chip; CPU: 1).")
flags.DEFINE_integer("max_attempts", 2, "Tries of a failing cell before it is reported.")
flags.DEFINE_bool("dry_run", False, "List the cells and their states; run nothing.")
flags.DEFINE_bool("report", True, "Write the report over RUNS at the end.")
flags.mark_flags_as_required(["sweep", "runs"])


def _refuse(message: str) -> None:
    sys.stderr.write(f"lln_jax.sweep: {message}\n")
    sys.exit(2)


def load_cells(path: str):
    """The sweep file's `CELLS` (a list of `lln_jax.run.sweep.Cell`)."""
    if not os.path.isfile(path):
        _refuse(f"no sweep file {path}")
    spec = importlib.util.spec_from_file_location("sweep_cells", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not getattr(module, "CELLS", None):
        _refuse(f"{path} defines no CELLS")
    return list(module.CELLS)


def local_chips(visible_gpus: str | None = None) -> tuple[str, int]:
    """This host's accelerator and its chips, without initialising it (a parent that took
    the TPU would leave none to its runs). GPUs: those of `visible_gpus` (what Slurm gives a
    task in `CUDA_VISIBLE_DEVICES`) when set."""
    tpu = glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*")
    if tpu:
        return "tpu", len(tpu)
    gpus = glob.glob("/dev/nvidia[0-9]*")
    if gpus and visible_gpus:
        return "gpu", len(visible_gpus.split(","))
    return ("gpu", len(gpus)) if gpus else ("cpu", 1)


def _run(argv) -> None:
    extra_flags = argv[1:]  # After `--`: every cell's.
    if any(not flag.startswith("--") for flag in extra_flags):
        raise app.UsageError(
            f"Unexpected arguments: {extra_flags} (flags of every run go after --)"
        )
    from lln_jax.run import sweep

    cells = load_cells(FLAGS.sweep)
    try:
        sweep.check_cells(cells)
    except ValueError as error:
        _refuse(str(error))
    runs = FLAGS.runs.rstrip("/")
    logs = FLAGS.logs or ("lln_logs/sweep" if runs.startswith("gs://") else f"{runs}/_logs")
    if FLAGS.dry_run:
        for state in (sweep.cell_state(cell, runs, logs) for cell in cells):
            detail = f" ({state.detail})" if state.detail else ""
            print(f"{state.cell.name}: {state.state}{detail}")
        return
    platform, chips = local_chips(os.environ.get("CUDA_VISIBLE_DEVICES"))
    platform = platform if FLAGS.platform == "auto" else FLAGS.platform
    runner = sweep.Sweep(
        cells, runs=runs, logs=logs, platform=platform, slots=FLAGS.processes or chips,
        max_attempts=FLAGS.max_attempts, extra_flags=extra_flags,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    failed = runner.run()
    if runner.stopping:
        sys.stderr.write("lln_jax.sweep: stopped; every run saved. Rerun the same command.\n")
        sys.exit(75)
    if FLAGS.report:
        from lln_jax.evaluation import report

        report.write_report([runs], f"{runs}/report")
    for name, why in failed.items():
        sys.stderr.write(f"lln_jax.sweep: {name} failed {FLAGS.max_attempts} times: {why}\n")
    sys.exit(1 if failed else 0)


def main() -> None:
    app.run(_run)


if __name__ == "__main__":
    main()
