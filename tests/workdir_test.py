"""Runs that survive operators: corrupt checkpoints, lost files, concurrent starts, signals."""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import chex
import pytest
from conftest import load_config
from etils import epath

from lln_jax.run import (
    atomic_write,
    checkpointing,
    process_identity,
    run_identity,
    stop_request,
    workdir_lock,
)
from lln_jax.run import workdir as workdir_lib
from lln_jax.training import initial_state, loop, trainer

TOTAL_STEPS = 30  # runlocal: 240 train examples, batch 16, 2 epochs.


def _config(data_dir, **overrides):
    # Latest keeps steps 20 and 30.
    defaults = {"data.data_dir": data_dir, "data.eval_batch_size": 64, "checkpoint.every_steps": 10}
    return load_config("digits.py", "scheme=ll_cp,runlocal", **(defaults | overrides))


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished run: its workdir, final state and results."""
    workdir = tmp_path_factory.mktemp("finished")
    state = trainer.train_and_evaluate(_config(data_dir), str(workdir))
    return workdir, state, json.loads((workdir / "results.json").read_text())


def _unfinished_copy(finished, tmp_path) -> pathlib.Path:
    """The finished run's workdir as if it had been killed just before its test."""
    workdir = tmp_path / "work"
    shutil.copytree(finished[0], workdir)
    (workdir / "results.json").unlink()
    (workdir / workdir_lock.LOCK_FILE).unlink(missing_ok=True)
    return workdir


def _truncate_the_data_files(step_dir: pathlib.Path) -> None:
    for data in [*step_dir.glob("state/d/*"), *step_dir.glob("state/ocdbt.process_*/d/*")]:
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])


CORRUPTIONS = {
    "emptied step directory": lambda step: [shutil.rmtree(step), step.mkdir()],
    "truncated data files": _truncate_the_data_files,
    "missing record metadata": lambda step: shutil.rmtree(step / "record"),
}


# One corruption in the default tier, the others (end-to-end reruns) in the slow one.
@pytest.mark.parametrize(
    "corruption",
    [
        "emptied step directory",
        pytest.param("truncated data files", marks=pytest.mark.slow),
        pytest.param("missing record metadata", marks=pytest.mark.slow),
    ],
)
def test_a_corrupt_newest_checkpoint_is_moved_aside_and_the_previous_one_used(
    data_dir, finished, tmp_path, corruption, monkeypatch
):
    workdir = _unfinished_copy(finished, tmp_path)
    newest = workdir / "checkpoints" / "latest" / str(TOTAL_STEPS)
    CORRUPTIONS[corruption](newest)
    # A resume restores into the state's structure alone: it never initialises one.
    monkeypatch.setattr(initial_state, "fresh_state", lambda _: pytest.fail("initialised"))
    state = trainer.train_and_evaluate(_config(data_dir), str(workdir))
    quarantined = list((workdir / "checkpoints" / "quarantine").iterdir())
    assert [p.name.startswith(f"latest-{TOTAL_STEPS}-") for p in quarantined] == [True]
    # Resumed from step 20, it ends where the uninterrupted run ended.
    chex.assert_trees_all_equal(state.params, finished[1].params)
    results = json.loads((workdir / "results.json").read_text())
    assert results["test_map"] == finished[2]["test_map"]


def test_a_run_that_took_the_lease_after_another_finished_the_work_does_nothing(
    data_dir, finished, tmp_path, monkeypatch
):
    """Two starts race: this one read no results before the lease, the other then finished
    and let go; under the lease the results are there, so nothing runs again."""
    workdir = tmp_path / "work"
    shutil.copytree(finished[0], workdir)
    (workdir / workdir_lock.LOCK_FILE).unlink(missing_ok=True)
    results = (workdir / "results.json").read_text()
    real, calls = trainer.workdir_lib.finished_results, []

    def not_yet_then_real(config, path):
        calls.append(path)
        return None if len(calls) == 1 else real(config, path)

    monkeypatch.setattr(trainer.workdir_lib, "finished_results", not_yet_then_real)
    monkeypatch.setattr(trainer.experiment, "build", lambda config: pytest.fail("it built"))
    assert trainer.train_and_evaluate(_config(data_dir), str(workdir)) is None
    assert len(calls) == 2 and (workdir / "results.json").read_text() == results


def test_a_finished_run_that_lost_its_best_state_says_what_to_do(data_dir, finished, tmp_path):
    workdir = _unfinished_copy(finished, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "best")
    with pytest.raises(FileNotFoundError, match=r"best-val state \(epoch \d\) is missing.*new"):
        trainer.train_and_evaluate(_config(data_dir), str(workdir))


def test_the_config_inside_the_checkpoint_guards_a_lost_config_file(data_dir, finished, tmp_path):
    workdir = _unfinished_copy(finished, tmp_path)
    (workdir / "config.json").unlink()
    other = _config(data_dir, **{"optim.learning_rate": 0.01})
    with pytest.raises(
        workdir_lib.ConfigMismatchError,
        match=rf"checkpoints/latest/{TOTAL_STEPS} holds a run of a different config "
        r"\(optim\.learning_rate: 0\.001 -> 0\.01\)",
    ):
        trainer.train_and_evaluate(other, str(workdir))


def test_a_config_change_is_refused_not_taken_as_corruption(data_dir, finished, tmp_path):
    """Another model's arrays would not restore: the record is compared before they are."""
    workdir = _unfinished_copy(finished, tmp_path)
    (workdir / "config.json").unlink()
    other = _config(data_dir, **{"model.name": "resnet_small"})
    with pytest.raises(
        workdir_lib.ConfigMismatchError,
        match=r"latest/30 holds a run of a different config \(model\.name: 'resnet_tiny' -> "
        r"'resnet_small'\)",
    ):
        trainer.train_and_evaluate(other, str(workdir))
    assert not (workdir / "checkpoints" / "quarantine").exists()
    assert sorted(p.name for p in (workdir / "checkpoints" / "latest").iterdir()) == ["20", "30"]


def _leftover_best_state(finished, tmp_path, *, keep_run_file: bool) -> pathlib.Path:
    """A workdir that lost `latest/` and `config.json` but kept another run's best state."""
    workdir = _unfinished_copy(finished, tmp_path)
    shutil.rmtree(workdir / "checkpoints" / "latest")
    (workdir / "config.json").unlink()
    if not keep_run_file:
        (workdir / run_identity.RUN_FILE).unlink()
    return workdir


def test_another_runs_best_state_is_refused_by_name(data_dir, finished, tmp_path):
    workdir = _leftover_best_state(finished, tmp_path, keep_run_file=False)
    best = next((workdir / "checkpoints" / "best").iterdir()).name
    other = _config(data_dir, **{"optim.learning_rate": 0.01, "num_epochs": 1})
    with pytest.raises(
        run_identity.ForeignStateError,
        match=rf"checkpoints/best/{best} belongs to another run \(run [0-9a-f]+, another config",
    ):
        trainer.train_and_evaluate(other, str(workdir))
    assert not (workdir / "results.json").exists()


def test_the_run_file_keeps_a_workdir_to_its_config(data_dir, finished, tmp_path):
    workdir = _leftover_best_state(finished, tmp_path, keep_run_file=True)
    other = _config(data_dir, **{"optim.learning_rate": 0.01, "num_epochs": 1})
    with pytest.raises(workdir_lib.ConfigMismatchError, match=r"run\.json holds a run of a diff"):
        trainer.train_and_evaluate(other, str(workdir))


def test_every_checkpoint_carries_the_runs_identity(finished):
    workdir = finished[0]
    identity = json.loads((workdir / run_identity.RUN_FILE).read_text())
    checkpointer = checkpointing.Checkpointer(f"{workdir}/checkpoints")
    for name in ("latest", "best"):
        for step in checkpointer.steps(name):
            assert checkpointer.read_record(name, step)["identity"] == {
                "run_id": identity["run_id"], "config_sha256": identity["config_sha256"]
            }  # fmt: skip
    checkpointer.close()
    assert finished[2]["run_id"] == identity["run_id"]


def test_an_unparsable_results_file_is_moved_aside_and_the_test_redone(
    data_dir, finished, tmp_path
):
    workdir = _unfinished_copy(finished, tmp_path)
    (workdir / "results.json").write_text('{"test_map": 38.7')  # A write cut short.
    trainer.train_and_evaluate(_config(data_dir), str(workdir))
    assert json.loads((workdir / "results.json").read_text())["test_map"] == finished[2]["test_map"]
    assert len(list(workdir.glob("results.json.unreadable-*"))) == 1


def test_an_atomic_write_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    atomic_write.write_atomic(path, '{"old": 1}')

    def disk_fails(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_fails)
    with pytest.raises(OSError, match="No space left"):
        atomic_write.write_atomic(path, '{"new": 2}')
    assert json.loads(path.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # No temporary left.


def test_an_unreadable_config_file_is_named(data_dir, finished, tmp_path):
    workdir = _unfinished_copy(finished, tmp_path)
    (workdir / "config.json").write_text('{"seed": 0, "data": {')
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        trainer.train_and_evaluate(_config(data_dir), str(workdir))


def test_a_live_lease_refuses_a_second_run_and_a_stale_one_is_taken_over(tmp_path):
    other_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease = {"host": socket.gethostname(), "pid": other_process.pid, "token": "x",
                 "started": time.time() - 5, "renewed": time.time()}  # fmt: skip
        (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(lease))
        with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"pid {other_process.pid} on"):
            workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    finally:
        other_process.kill()
        other_process.wait()
    # The owner is gone (a killed run on this host): taken over at once.
    with workdir_lock.WorkdirLock(str(tmp_path), renew_s=0.05) as lock:
        time.sleep(0.2)
        held = json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())
        assert (held["pid"], held["token"]) == (os.getpid(), lock.token)
        assert held["renewed"] > held["started"]  # Renewed by the heartbeat.
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
    # Its pid taken since by another process (a reboot, a re-created VM, another PID
    # namespace): the recorded process is gone, and the lease with it.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lease.update(pid=other.pid, process="another-boot:12345", renewed=time.time())
        (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(lease))
        workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()
        lease.update(process=held["process"].rsplit(":", 1)[0] + ":0")  # This boot, not it.
        (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(lease))
        workdir_lock.WorkdirLock(str(tmp_path)).acquire().release()
        # The recorded process itself, alive: the lease holds.
        lease.update(process=process_identity.of(other.pid))
        (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(lease))
        with pytest.raises(workdir_lock.WorkdirLockedError, match=rf"pid {other.pid} on"):
            workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    finally:
        other.kill()
        other.wait()
    # Another host's lease that was not renewed for longer than the lease: stale.
    lease.update(host="elsewhere", renewed=time.time() - 600)
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(lease))
    workdir_lock.WorkdirLock(str(tmp_path), lease_s=120).acquire().release()


def test_the_workdir_files_work_on_gs(tmp_path, fake_gcs):
    (fake_gcs / "bucket/run").mkdir(parents=True)  # An object store needs no directories.
    workdir_lib.write_results({"test_map": 1.0, "config": {}}, "gs://bucket/run")
    assert workdir_lib.read_json(epath.Path("gs://bucket/run/results.json"))["test_map"] == 1.0
    assert not (tmp_path / "gs:").exists()  # Nothing written to a local directory named gs:.


def test_a_second_run_on_a_live_workdir_refuses_naming_the_owner(data_dir, tmp_path):
    lease = {"host": "trainer-7", "pid": 4242, "token": "x", "started": time.time(),
             "renewed": time.time()}  # fmt: skip
    (tmp_path / workdir_lock.LOCK_FILE).write_text(json.dumps(lease))
    with pytest.raises(workdir_lock.WorkdirLockedError, match="pid 4242 on trainer-7"):
        trainer.train_and_evaluate(_config(data_dir), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def _signal_after(monkeypatch, signum, *, epoch: int):
    """Sends `signum` to this process right after epoch `epoch`'s evaluation."""
    end_of_epoch = loop.end_of_epoch

    def end_then_signal(built, session, state, step, record):
        stop = end_of_epoch(built, session, state, step, record)
        if step // built.steps_per_epoch == epoch:
            os.kill(os.getpid(), signum)
        return stop

    monkeypatch.setattr(loop, "end_of_epoch", end_then_signal)


@pytest.mark.slow  # A whole run, stopped and rerun: kept out of the 4-minute default tier.
def test_a_signal_after_the_last_epoch_is_honoured_and_the_rerun_tests(
    data_dir, finished, tmp_path, monkeypatch
):
    _signal_after(monkeypatch, signal.SIGTERM, epoch=2)
    with pytest.raises(
        stop_request.RunInterruptedError, match=rf"SIGTERM: stopped at step {TOTAL_STEPS}"
    ):
        trainer.train_and_evaluate(_config(data_dir), str(tmp_path))
    assert not (tmp_path / "results.json").exists()  # The test did not run ...
    monkeypatch.undo()
    trainer.train_and_evaluate(_config(data_dir), str(tmp_path))  # ... until the rerun.
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test_map"] == finished[2]["test_map"]


@pytest.mark.slow
def test_ctrl_c_saves_at_the_next_step_instead_of_losing_the_epoch(data_dir, tmp_path, monkeypatch):
    _signal_after(monkeypatch, signal.SIGINT, epoch=1)
    with pytest.raises(stop_request.RunInterruptedError, match="SIGINT: stopped at step 15 of 30"):
        trainer.train_and_evaluate(_config(data_dir), str(tmp_path))
    checkpointer = checkpointing.Checkpointer(f"{tmp_path}/checkpoints")
    assert checkpointer.latest_step() == 15
    checkpointer.close()
    # A late signal cannot kill the exiting process: the handlers stay after a stop.
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def test_a_workdir_that_is_a_file_or_cannot_be_written_is_refused(tmp_path):
    regular = tmp_path / "a_file"
    regular.write_text("")
    with pytest.raises(workdir_lib.WorkdirError, match=r"a_file is a file, not a directory"):
        workdir_lib.check_usable(str(regular))
    with pytest.raises(workdir_lib.WorkdirError, match=r"a_file/run cannot be written"):
        workdir_lib.check_usable(str(regular / "run"))
    workdir_lib.check_usable(str(tmp_path / "new" / "run"))
    assert [p.name for p in (tmp_path / "new" / "run").iterdir()] == []  # No probe left.
