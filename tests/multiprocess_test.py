"""Two real processes (JAX's multi-controller runtime on localhost, gloo collectives) train
the embedded benchmark exactly as one process with the same two devices."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
# Float tolerance: the two runs reduce the same numbers over the same two devices; gloo's
# all-reduce may add in another order than the in-process one.
RTOL, ATOL = 1e-5, 1e-6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def _command(data_dir, workdir):
    # Every epoch end saves the best and the latest state at the same step (the diagnosis
    # is off, as on the real data sets): the pattern whose barriers collided.
    return [
        sys.executable, "-m", "lln_jax.main", f"--config={CONFIG}:scheme=ll_cp,runlocal",
        f"--config.data.data_dir={data_dir}", "--config.num_epochs=4",
        "--config.diagnose_false_negatives=False", "--config.checkpoint.every_steps=5",
        f"--workdir={workdir}",
    ]  # fmt: skip


def _environment(**extra):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "LLN_"))}
    return {**environment, "JAX_PLATFORMS": "cpu", **extra}


def _final_state(workdir: pathlib.Path):
    """The newest saved state, restored onto this process's first device."""
    latest = workdir / "checkpoints" / "latest"
    step = max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(latest / str(step) / "state")
    metadata = getattr(metadata, "item_metadata", metadata)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata
    )
    return checkpointer.restore(latest / str(step) / "state", abstract)


def _start_two(data_dir, workdir, logs: pathlib.Path, port: int, **extra):
    return [
        subprocess.Popen(
            _command(data_dir, workdir),
            env=_environment(
                LLN_MULTIHOST="1",
                LLN_COORDINATOR=f"localhost:{port}",
                LLN_NUM_PROCESSES="2",
                LLN_PROCESS_ID=str(index),
                **extra,
            ),
            stdout=subprocess.DEVNULL,
            stderr=(logs / f"p{index}.log").open("a"),
        )
        for index in range(2)
    ]


@pytest.mark.slow
def test_two_processes_train_as_one_process_with_two_devices(tmp_path):
    single = tmp_path / "single"
    two_devices = _environment(XLA_FLAGS="--xla_force_host_platform_device_count=2")
    subprocess.run(_command(tmp_path / "tfds", single), env=two_devices, check=True, timeout=900)
    # The two processes prepare their own copy of the data: process 0 writes, 1 waits.
    data_dir, multi = tmp_path / "tfds_multi", tmp_path / "multi"
    processes = _start_two(data_dir, multi, tmp_path, _free_port())
    codes = [process.wait(timeout=900) for process in processes]
    assert codes == [0, 0], (tmp_path / "p0.log").read_text()[-3000:]
    results = [json.loads((d / "results.json").read_text()) for d in (single, multi)]
    np.testing.assert_allclose(results[1]["val_map"], results[0]["val_map"], rtol=RTOL, atol=1e-4)
    assert results[1]["test_map"] == pytest.approx(results[0]["test_map"], abs=1e-4)
    chex.assert_trees_all_close(_final_state(multi), _final_state(single), rtol=RTOL, atol=ATOL)
    log = (tmp_path / "p1.log").read_text()
    assert "process 1 of 2, 1 local devices of 2" in log


@pytest.mark.slow
def test_sigterm_to_every_process_seconds_apart_stops_all_at_one_step_and_resumes(tmp_path):
    """What a pod's preemption does: every host gets SIGTERM, a few seconds apart."""
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    data_dir = tmp_path / "tfds"
    for process in _start_two(data_dir, whole, tmp_path, _free_port()):
        assert process.wait(timeout=900) == 0
    processes = _start_two(data_dir, stopped, tmp_path, _free_port())
    latest = stopped / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not (latest / "20").exists():
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.05)
    processes[0].send_signal(signal.SIGTERM)
    time.sleep(2.0)
    processes[1].send_signal(signal.SIGTERM)
    assert [p.wait(timeout=300) for p in processes] == [75, 75]  # Both stopped, none hung.
    said = [(tmp_path / f"p{i}.log").read_text().splitlines()[-2] for i in range(2)]
    steps = [int(line.split("stopped at step ")[1].split()[0]) for line in said]
    assert steps[0] == steps[1] and steps[0] < 60, said  # The same step on both.
    assert not (stopped / "results.json").exists()
    for process in _start_two(data_dir, stopped, tmp_path, _free_port()):
        assert process.wait(timeout=900) == 0
    results = [json.loads((d / "results.json").read_text()) for d in (whole, stopped)]
    assert results[0]["val_map"] == results[1]["val_map"]
    assert results[0]["test_map"] == results[1]["test_map"]
    chex.assert_trees_all_equal(_final_state(stopped), _final_state(whole))


@pytest.mark.slow
def test_a_killed_process_fails_the_other_in_bounded_time_and_the_job_resumes(tmp_path):
    """SIGKILL of one host: the other must not hang; the same command then resumes."""
    workdir, data_dir = tmp_path / "work", tmp_path / "tfds"
    heartbeat = {"LLN_HEARTBEAT_TIMEOUT_S": "10"}
    processes = _start_two(data_dir, workdir, tmp_path, _free_port(), **heartbeat)
    latest = workdir / "checkpoints" / "latest"
    deadline = time.time() + 600
    while not (latest / "20").exists():
        assert time.time() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.05)
    processes[1].kill()
    killed_at = time.time()
    code = processes[0].wait(timeout=180)
    waited = time.time() - killed_at
    assert code != 0 and waited < 90, (code, waited)  # Heartbeat 10 s, plus the teardown.
    assert not (workdir / "results.json").exists()
    # Process 0 died holding the lease; its pid is gone, so the rerun takes it over.
    for process in _start_two(data_dir, workdir, tmp_path, _free_port(), **heartbeat):
        assert process.wait(timeout=900) == 0
    results = json.loads((workdir / "results.json").read_text())
    assert len(results["val_map"]) == 4


@pytest.mark.slow
def test_best_then_latest_saves_at_one_step_never_collide_between_processes(tmp_path):
    """Each manager's multi-host barriers have their own key; with one shared key this
    pattern failed most tries ('Barrier ... is already ongoing')."""
    script = pathlib.Path(__file__).with_name("two_process_saves.py")
    port, repeats = _free_port(), 25
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "checkpoints"), str(repeats)],
            env=_environment(
                LLN_MULTIHOST="1",
                LLN_COORDINATOR=f"localhost:{port}",
                LLN_NUM_PROCESSES="2",
                LLN_PROCESS_ID=str(index),
                LLN_HEARTBEAT_TIMEOUT_S="20",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=300)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    for index, (process, output) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, output[-3000:]
        assert f"process {index}: {repeats} best-then-latest saves restored" in output


@pytest.mark.slow
def test_a_workdir_in_use_or_of_another_config_refuses_every_process_at_once(tmp_path):
    """Process 0 holds the lease for all, and every process checks the config: no process
    may go on alone into a collective and hang there."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    lease = {"host": socket.gethostname(), "pid": os.getpid(), "token": "live-owner",
             "started": time.time(), "renewed": time.time()}  # fmt: skip
    (workdir / "lock.json").write_text(json.dumps(lease))
    started = time.time()
    processes = _start_two(tmp_path / "tfds", workdir, tmp_path, _free_port())
    codes = [process.wait(timeout=300) for process in processes]
    assert codes == [2, 2], [(tmp_path / f"p{i}.log").read_text()[-2000:] for i in range(2)]
    assert time.time() - started < 90  # Well before the 100 s heartbeat would end a hang.
    assert f"in use by pid {os.getpid()}" in (tmp_path / "p0.log").read_text()
    assert "in use by another run (process 0 says who)" in (tmp_path / "p1.log").read_text()
    (workdir / "lock.json").unlink()
    (workdir / "config.json").write_text(json.dumps({"seed": 7}))  # Another run's config.
    started = time.time()
    processes = _start_two(tmp_path / "tfds", workdir, tmp_path, _free_port())
    assert [process.wait(timeout=300) for process in processes] == [2, 2]
    assert time.time() - started < 90
    for index in range(2):
        assert "holds a run of a different config" in (tmp_path / f"p{index}.log").read_text()
