"""The sweep: cells shared out to slots, claimed through leases, retried, stopped, resumed.

The fast tests run a stand-in for `lln_jax.main` (a few lines of Python that honour the
same contract: results.json when done, one `lln_jax.main:` line and exit 2 when the lease is
taken, exit 75 after SIGTERM); the slow ones run the real trainer.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lln_jax.run import sweep, workdir_lock

STAND_IN = textwrap.dedent("""
    import json, os, pathlib, signal, sys, time
    from lln_jax.run import workdir_lock
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    workdir, config = pathlib.Path(args["--workdir"]), args["--config"]
    with open(os.environ["STARTS"], "a") as starts:
        starts.write(workdir.name + "\\n")
    try:
        lock = workdir_lock.WorkdirLock(str(workdir)).acquire()
    except workdir_lock.WorkdirLockedError as error:
        print(f"lln_jax.main: {error}"); sys.exit(2)
    if (workdir / "results.json").exists():  # Finished while this one waited: as the trainer.
        lock.release(); sys.exit(0)
    signal.signal(signal.SIGTERM, lambda *_: (print("lln_jax.main: SIGTERM"), sys.exit(75)))
    time.sleep(float(os.environ.get("STEP_S", "0.3")))
    if "fail" in config:
        print("lln_jax.main: it broke"); lock.release(); sys.exit(1)
    (workdir / "results.json").write_text(json.dumps({"seed": args["--config.seed"]}))
    with open(os.environ["STARTS"] + ".done", "a") as done:
        done.write(workdir.name + "\\n")
    lock.release()
""")


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    monkeypatch.setenv("STARTS", str(tmp_path / "starts"))
    original = sweep._command

    def command(cell, runs, extra_flags=()):
        return [sys.executable, str(script), *original(cell, runs, extra_flags)[3:]]

    monkeypatch.setattr(sweep, "_command", command)
    return tmp_path / "starts"


def _starts(path: pathlib.Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _cells(n, prefix="c", config="ok"):
    return [sweep.Cell(f"{prefix}{i}", config, seed=i) for i in range(n)]


def test_every_cell_runs_once_and_no_more_run_at_once_than_slots(tmp_path, stand_in):
    runs = tmp_path / "runs"
    said = []
    runner = sweep.Sweep(_cells(5), runs=str(runs), logs=str(tmp_path / "logs"),
                         platform="cpu", slots=2, say=said.append)  # fmt: skip
    assert runner.run() == {}
    assert sorted(_starts(stand_in)) == [f"c{i}" for i in range(5)]
    assert all((runs / f"c{i}" / "results.json").exists() for i in range(5))
    # A second sweep finds every cell done and starts nothing.
    assert sweep.Sweep(_cells(5), runs=str(runs), logs=str(tmp_path / "logs"), platform="cpu",
                       slots=2, say=said.append).run() == {}  # fmt: skip
    assert len(_starts(stand_in)) == 5
    running = 0
    for line in said:  # Starts and ends in order: never more than 2 at once.
        running += line.endswith("(attempt 1)") - line.endswith(": done")
        assert running <= 2


def test_a_failing_cell_is_retried_then_reported_and_the_others_finish(tmp_path, stand_in):
    cells = [*_cells(2), sweep.Cell("broken", "fail")]
    runner = sweep.Sweep(cells, runs=str(tmp_path / "runs"), logs=str(tmp_path / "logs"),
                         platform="cpu", slots=2, max_attempts=3, say=lambda _: None)  # fmt: skip
    failed = runner.run()
    assert failed == {"broken": "exit 1: lln_jax.main: it broke"}
    assert _starts(stand_in).count("broken") == 3
    state = sweep.cell_state(cells[2], str(tmp_path / "runs"), str(tmp_path / "logs"))
    assert (state.state, state.detail) == ("failed", "lln_jax.main: it broke")


def test_a_cell_whose_lease_is_live_is_left_to_its_owner(tmp_path, stand_in):
    runs = tmp_path / "runs"
    (runs / "c0").mkdir(parents=True)
    owner = workdir_lock.WorkdirLock(str(runs / "c0")).acquire()
    try:
        state = sweep.cell_state(_cells(1)[0], str(runs), str(tmp_path / "logs"))
        assert state.state == "running" and f"pid {os.getpid()}" in state.detail
        runner = sweep.Sweep(_cells(2), runs=str(runs), logs=str(tmp_path / "logs"),
                             platform="cpu", slots=2, say=lambda _: None)  # fmt: skip
        assert runner.run() == {}
        assert _starts(stand_in) == ["c1"]
    finally:
        owner.release()


def test_two_sweeps_at_once_split_the_cells_and_run_none_twice(tmp_path, stand_in):
    runs, logs = str(tmp_path / "runs"), str(tmp_path / "logs")
    sweeps = [sweep.Sweep(_cells(8), runs=runs, logs=logs, platform="cpu", slots=2,
                          say=lambda _: None) for _ in range(2)]  # fmt: skip
    threads = [threading.Thread(target=s.run) for s in sweeps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    names = [f"c{i}" for i in range(8)]
    assert all((tmp_path / "runs" / name / "results.json").exists() for name in names)
    # A start that found the lease taken refused at once: every cell finished exactly once.
    assert sorted(_starts(stand_in.with_name("starts.done"))) == names


def test_sigterm_stops_every_run_after_it_saves(tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STEP_S", "30")
    runner = sweep.Sweep(_cells(3), runs=str(tmp_path / "runs"), logs=str(tmp_path / "logs"),
                         platform="cpu", slots=2, say=lambda _: None)  # fmt: skip
    threading.Timer(3.0, runner.stop).start()
    started = time.time()
    assert runner.run() == {}
    assert time.time() - started < 20 and runner.stopping
    assert len(_starts(stand_in)) == 2  # The third never started.
    assert not list((tmp_path / "runs").glob("*/results.json"))


def test_cells_with_one_workdir_name_are_refused():
    with pytest.raises(ValueError, match=r"cells share a workdir name: \['a'\]"):
        sweep.Sweep([sweep.Cell("a", "x"), sweep.Cell("a", "y")], runs="r", logs="l",
                    platform="cpu", slots=1)  # fmt: skip


def test_each_slot_sees_one_chip():
    assert sweep.slot_environment("gpu", 3) == {"CUDA_VISIBLE_DEVICES": "3"}
    # Under Slurm, the task's own GPUs.
    assert sweep.slot_environment("gpu", 1, "4,6") == {"CUDA_VISIBLE_DEVICES": "6"}
    tpu = sweep.slot_environment("tpu", 2)
    assert tpu["TPU_VISIBLE_CHIPS"] == "2" and tpu["TPU_CHIPS_PER_PROCESS_BOUNDS"] == "1,1,1"
    assert tpu["TPU_PROCESS_PORT"] != sweep.slot_environment("tpu", 3)["TPU_PROCESS_PORT"]
    assert sweep.slot_environment("cpu", 0) == {"JAX_PLATFORMS": "cpu"}


def test_flags_after_the_double_dash_go_to_every_cell(tmp_path, stand_in):
    """A pod's sweep gives every cell its gs:// data dir and weights this way."""
    runs, extra = tmp_path / "runs", ("--config.data.data_dir=gs://b/tfds", "--config.x=1")
    script = tmp_path / "stand_in.py"
    script.write_text(  # Also records each run's last two arguments.
        'import os, sys\nargv = open(os.environ["STARTS"] + ".argv", "a")\n'
        'argv.write(" ".join(sys.argv[-2:]) + "\\n")\nargv.close()\n' + script.read_text()
    )
    sweep.Sweep(_cells(3), runs=str(runs), logs=str(tmp_path / "logs"), platform="cpu",
                slots=2, extra_flags=extra, say=lambda _: None).run()  # fmt: skip
    argv = pathlib.Path(f"{stand_in}.argv").read_text().splitlines()
    assert argv == [" ".join(extra)] * 3


def test_the_command_line_takes_only_flags_after_the_double_dash(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    base = [sys.executable, "-m", "lln_jax.sweep", "--sweep=configs/sweeps/embedded.py",
            f"--runs={tmp_path}", "--dry_run"]  # fmt: skip
    listed = subprocess.run([*base, "--", "--config.data.data_dir=gs://b/tfds"], cwd=root,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-1000:]
    refused = subprocess.run([*base, "--", "stray"], cwd=root, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
    assert refused.returncode == 1 and "flags of every run go after --" in refused.stderr


def test_the_shipped_sweeps_name_their_cells_once():
    root = pathlib.Path(__file__).resolve().parents[1]
    for path in sorted((root / "configs" / "sweeps").glob("*.py")):
        done = subprocess.run(
            [sys.executable, "-m", "lln_jax.sweep", f"--sweep={path}", "--runs=/nonexistent/r",
             "--dry_run"], capture_output=True, text=True, cwd=root, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-1000:]
        lines = done.stdout.splitlines()
        assert lines and all(line.endswith(": to do") for line in lines)
        expected = {"paper_table.py": 4 * 12 * 3, "embedded.py": 14 * 3}[path.name]
        assert len(lines) == expected


# ----------------------------------------------------------------------------- real runs

COMPARED = ("test_map", "val_map", "best_epoch", "best_val_map", "final_step",
            "train_selection_precision", "train_selection_recall")  # fmt: skip


def _sweep_file(tmp_path, data_dir) -> pathlib.Path:
    from conftest import CONFIG_DIR

    path = tmp_path / "cells.py"
    path.write_text(
        textwrap.dedent(f"""
        from lln_jax.run.sweep import Cell
        FLAGS = ("--config.data.data_dir={data_dir}", "--config.checkpoint.every_steps=5")
        CELLS = [Cell(f"{{s}}-seed{{seed}}", f"{CONFIG_DIR}/digits.py:scheme={{s}},runlocal",
                      seed, FLAGS) for s in ("ll_r", "ll_cp") for seed in (0, 1)]
    """)
    )
    return path


def _start_sweep(cells, runs, processes, **popen):
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [sys.executable, "-m", "lln_jax.sweep", f"--sweep={cells}", f"--runs={runs}",
               "--platform=cpu", f"--processes={processes}"]  # fmt: skip
    return subprocess.Popen(command, env=environment, **popen)


def _results(runs: pathlib.Path) -> dict:
    return {
        path.parent.name: {k: json.loads(path.read_text())[k] for k in COMPARED}
        for path in sorted(runs.glob("*/results.json"))
    }


@pytest.mark.slow
def test_a_sweep_in_two_processes_killed_and_rerun_equals_its_cells_run_one_at_a_time(
    tmp_path, data_dir
):
    cells = _sweep_file(tmp_path, data_dir)
    one_at_a_time = tmp_path / "sequential"
    assert _start_sweep(cells, one_at_a_time, 1).wait(timeout=1200) == 0
    expected = _results(one_at_a_time)
    assert len(expected) == 4 and (one_at_a_time / "report" / "report.md").exists()

    # Two sweeps at once on one directory share the cells; none runs twice.
    shared = tmp_path / "shared"
    both = [_start_sweep(cells, shared, 1) for _ in range(2)]
    assert [sweep_.wait(timeout=1200) for sweep_ in both] == [0, 0]
    assert _results(shared) == expected
    for log in (shared / "_logs").glob("*.log"):  # One build per cell: the other refused.
        assert log.read_text().count("steps per epoch:") == 1, log

    # A worker SIGKILLed, the sweep SIGTERMed, then the same command again.
    killed = tmp_path / "killed"
    running = _start_sweep(cells, killed, 2)
    deadline = time.time() + 600
    while not list(killed.glob("*/checkpoints/latest/*")) and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["pkill", "-KILL", "-f", f"--workdir={killed}/ll_r-seed0"])
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=600) == 75
    assert len(_results(killed)) < 4
    assert _start_sweep(cells, killed, 2).wait(timeout=1200) == 0
    assert _results(killed) == expected
