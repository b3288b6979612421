"""Many runs at once, one process per local accelerator chip, shared among hosts by leases.

A sweep is a list of `Cell`s, each one run of `python -m lln_jax.main` in its own workdir
`RUNS/<cell.name>`. `run_cells` keeps one run going per slot (a chip: each process sees one,
by `CUDA_VISIBLE_DEVICES` or libtpu's per-process chip variables; or a CPU process) until
every cell is done. No coordinator: the workdir's lease is the claim. A cell whose
`results.json` exists is done; one whose lease is live runs elsewhere (another host, another
sweep) and is left to it; a run that finds the lease taken when it starts refuses (exit 2,
"in use") and the cell is left to its owner. So the same command on every host of a pod, or
twice on one machine, shares the cells and never runs one twice, and a preempted sweep
resumes by running it again. A failed cell is retried up to `max_attempts` times, then
reported; it never stops the others.
"""

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from etils import epath

from lln_jax.run import workdir_lock

EXIT_REFUSED, EXIT_INTERRUPTED = 2, 75
POLL_S = 0.5


class Cell(NamedTuple):
    """One run of the sweep.

    Attributes:
      name: its workdir's name under the sweep's runs directory.
      config: the `--config` argument, e.g. `configs/coco.py:scheme=ll_r`.
      seed: `config.seed`.
      flags: more flags of `lln_jax.main` (e.g. `--config.data.storage=jpeg95`).
    """

    name: str
    config: str
    seed: int = 0
    flags: tuple[str, ...] = ()


def check_cells(cells: Sequence[Cell]) -> None:
    """Refuses a sweep whose cells share a workdir name (they would share a workdir)."""
    names = [cell.name for cell in cells]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"cells share a workdir name: {twice}")


def slot_environment(platform: str, slot: int, visible_gpus: str | None = None) -> dict[str, str]:
    """The variables that give process `slot` one chip of this host (none on a CPU).

    A GPU slot is the `slot`-th of the GPUs this process may use (`visible_gpus`, e.g. what
    Slurm put in `CUDA_VISIBLE_DEVICES`), or of all of them when that is unset.
    """
    if platform == "gpu":
        gpus = visible_gpus.split(",") if visible_gpus else None
        return {"CUDA_VISIBLE_DEVICES": gpus[slot] if gpus else str(slot)}
    if platform == "tpu":  # libtpu's per-process chips: one chip, a 1x1x1 process grid.
        return {
            "TPU_VISIBLE_CHIPS": str(slot),
            "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
            "TPU_PROCESS_BOUNDS": "1,1,1",
            "TPU_PROCESS_PORT": str(8476 + slot),
            "TPU_PROCESS_ADDRESSES": f"localhost:{8476 + slot}",
            "CLOUD_TPU_TASK_ID": "0",
            "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
        }
    return {"JAX_PLATFORMS": "cpu"}


@dataclasses.dataclass(frozen=True)
class CellState:
    """Where a cell stands: `done`, `running` (where), `failed` (why) or `to do`."""

    cell: Cell
    state: str
    detail: str = ""


def _log_path(logs: str, cell: Cell) -> str:
    return os.path.join(logs, f"{cell.name}.log")


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as log:
            lines = [line.strip() for line in log if line.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1] if lines else ""


def cell_state(cell: Cell, runs: str, logs: str, failures: dict[str, int] | None = None):
    workdir = epath.Path(runs) / cell.name
    if (workdir / "results.json").exists():
        return CellState(cell, "done")
    holder = workdir_lock.WorkdirLock(str(workdir)).live_holder() if workdir.exists() else None
    if holder is not None:
        return CellState(cell, "running", f"pid {holder.get('pid')} on {holder.get('host')}")
    if (failures or {}).get(cell.name) or _last_line(_log_path(logs, cell)).startswith("lln_jax"):
        return CellState(cell, "failed", _last_line(_log_path(logs, cell)))
    return CellState(cell, "to do")


def _command(cell: Cell, runs: str, extra_flags: Sequence[str] = ()) -> list[str]:
    return [
        sys.executable, "-m", "lln_jax.main", f"--config={cell.config}",
        f"--config.seed={cell.seed}", f"--workdir={epath.Path(runs) / cell.name}", *cell.flags,
        *extra_flags,
    ]  # fmt: skip


@dataclasses.dataclass
class _Slot:
    index: int
    cell: Cell | None = None
    process: subprocess.Popen | None = None


class Sweep:
    """Runs the cells not done in `slots` processes at once (see the module docstring)."""

    def __init__(
        self,
        cells: Sequence[Cell],
        *,
        runs: str,
        logs: str,
        platform: str,
        slots: int,
        max_attempts: int = 2,
        extra_flags: Sequence[str] = (),
        say: Callable[[str], None] = print,
    ):
        check_cells(cells)
        self.cells, self.runs, self.logs, self.platform = list(cells), runs, logs, platform
        self.extra_flags = tuple(extra_flags)  # Every cell's, after its own (the data dir...).
        self.slots = [_Slot(i) for i in range(slots)]
        self.max_attempts, self.say = max_attempts, say
        self.attempts: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        self.elsewhere: set[str] = set()  # Cells whose run another sweep owns.
        self.stopping = False

    def _next_cell(self) -> Cell | None:
        busy = {slot.cell.name for slot in self.slots if slot.cell}
        for cell in self.cells:
            if cell.name in busy or cell.name in self.failed or cell.name in self.elsewhere:
                continue
            if cell_state(cell, self.runs, self.logs).state in ("to do", "failed"):
                return cell
        return None

    def _start(self, slot: _Slot, cell: Cell) -> None:
        os.makedirs(self.logs, exist_ok=True)
        self.attempts[cell.name] = self.attempts.get(cell.name, 0) + 1
        log = open(_log_path(self.logs, cell), "a")  # noqa: SIM115 (the child holds it)
        environment = {
            **os.environ,
            **slot_environment(self.platform, slot.index, os.environ.get("CUDA_VISIBLE_DEVICES")),
        }
        slot.cell, slot.process = cell, subprocess.Popen(
            _command(cell, self.runs, self.extra_flags), stdout=log, stderr=subprocess.STDOUT,
            env=environment, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        self.say(f"{cell.name}: started in slot {slot.index} (attempt {self.attempts[cell.name]})")

    def _finish(self, slot: _Slot, code: int) -> None:
        cell, slot.cell, slot.process = slot.cell, None, None
        last = _last_line(_log_path(self.logs, cell))
        if code == 0:
            self.say(f"{cell.name}: done")
        elif code == EXIT_REFUSED and "in use by" in last:
            self.elsewhere.add(cell.name)
            self.say(f"{cell.name}: runs elsewhere ({last})")
        elif code == EXIT_INTERRUPTED and self.stopping:
            self.say(f"{cell.name}: stopped after a checkpoint")
        elif self.attempts[cell.name] >= self.max_attempts:
            self.failed[cell.name] = f"exit {code}: {last}"
            self.say(f"{cell.name}: failed {self.attempts[cell.name]} times, left: {last}")
        else:
            self.say(f"{cell.name}: exit {code}, to be retried ({last})")

    def stop(self, signum=None, frame=None) -> None:
        """Stops the sweep the way a preemption does: SIGTERM to every run, which saves."""
        del signum, frame
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None:
                slot.process.send_signal(signal.SIGTERM)

    def run(self) -> dict[str, str]:
        """Until no cell is left to start and no slot runs; the cells that failed, why."""
        while True:
            for slot in self.slots:
                if slot.process is not None and (code := slot.process.poll()) is not None:
                    self._finish(slot, code)
            idle = [slot for slot in self.slots if slot.process is None]
            for slot in idle if not self.stopping else []:
                cell = self._next_cell()
                if cell is None:
                    break
                self._start(slot, cell)
            if all(slot.process is None for slot in self.slots):
                return self.failed
            time.sleep(POLL_S)
