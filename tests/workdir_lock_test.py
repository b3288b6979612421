"""The workdir lease: one owner, fencing of a stalled owner, clocks; local and on gs://."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import gcs_emulator
import pytest

from lln_jax.run import workdir_lock

SCENARIOS = pathlib.Path(__file__).with_name("gcs_lease_scenarios.py")


def _race(workdir: str, takers: int = 8) -> list:
    barrier, outcomes = threading.Barrier(takers), []

    def take() -> None:
        lock = workdir_lock.WorkdirLock(workdir, renew_s=1000)
        barrier.wait()
        try:
            outcomes.append(lock.acquire())
        except workdir_lock.WorkdirLockedError:
            outcomes.append(None)

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [lock for lock in outcomes if lock is not None]


def test_of_many_takers_of_a_local_workdir_exactly_one_owns_it(tmp_path):
    winners = _race(str(tmp_path))
    assert len(winners) == 1
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == winners[0].token
    winners[0].release()
    assert not (tmp_path / "lock.json").exists()


def test_a_stalled_local_owner_is_fenced_at_its_next_write(tmp_path):
    owner = workdir_lock.WorkdirLock(str(tmp_path), lease_s=0.5, renew_s=1000).acquire()
    owner.verify()
    time.sleep(0.8)  # Stalled: not renewed for longer than the lease.
    taker = workdir_lock.WorkdirLock(str(tmp_path), lease_s=0.5, renew_s=1000).acquire()
    with pytest.raises(workdir_lock.LeaseLostError, match="taken over by another run"):
        owner.verify()
    assert owner.lost and not taker.lost
    owner.release()  # Leaves the taker's lease alone.
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == taker.token
    taker.verify()
    taker.release()


def test_the_heartbeat_marks_a_taken_lease_lost(tmp_path):
    owner = workdir_lock.WorkdirLock(str(tmp_path), renew_s=0.05).acquire()
    lease = json.loads((tmp_path / "lock.json").read_text())
    (tmp_path / "lock.json").write_text(json.dumps({**lease, "token": "another run"}))
    deadline = time.time() + 10
    while not owner.lost and time.time() < deadline:
        time.sleep(0.02)
    assert owner.lost
    owner.release()
    assert json.loads((tmp_path / "lock.json").read_text())["token"] == "another run"


def _lease_renewed_in(seconds: float) -> dict:
    return {"host": "elsewhere", "pid": 4242, "token": "x", "started": time.time(),
            "renewed": time.time() + seconds}  # fmt: skip


def test_a_lease_from_the_future_is_stale_but_a_skewed_clock_is_not(tmp_path, caplog):
    (tmp_path / "lock.json").write_text(json.dumps(_lease_renewed_in(3600)))
    lock = workdir_lock.WorkdirLock(str(tmp_path)).acquire()  # A clock that jumped back.
    assert "renewed 3600 s in the future" in caplog.text
    lock.release()
    (tmp_path / "lock.json").write_text(json.dumps(_lease_renewed_in(5)))  # 5 s of skew.
    with pytest.raises(workdir_lock.WorkdirLockedError, match="pid 4242 on elsewhere"):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()


@pytest.mark.parametrize(
    "scenario",
    ["takers_race", "interleaved_takeover", "stalled_owner_is_fenced",
     "heartbeat_notices_the_loss"],
)  # fmt: skip
def test_the_gs_lease_against_a_gcs_emulator(scenario):
    finished = gcs_emulator.run(str(SCENARIOS), scenario)
    assert finished.returncode == 0, finished.stdout
    assert f"ok {scenario}" in finished.stdout


def _run_command(data_dir, workdir) -> list[str]:
    config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"
    return [
        sys.executable, "-m", "lln_jax.main", f"--config={config}:scheme=ll_cp,runlocal",
        f"--config.data.data_dir={data_dir}", "--config.num_epochs=4",
        "--config.checkpoint.every_steps=4", f"--workdir={workdir}",
    ]  # fmt: skip


def _wait_for(condition, process, timeout=300) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, "the run ended too soon"
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _final_params(workdir):
    import orbax.checkpoint as ocp

    latest = workdir / "checkpoints" / "latest"
    step = max(int(p.name) for p in latest.iterdir() if p.name.isdigit())
    return step, ocp.StandardCheckpointer().restore(latest / str(step) / "state")


@pytest.mark.slow
def test_a_stalled_owner_stops_when_it_wakes_and_the_taker_finishes_alone(data_dir, tmp_path):
    """SIGSTOP past the lease (a suspended VM), a second run takes over, SIGCONT: the owner
    stops at once with exit 75 and writes nothing more; the taker resumes and ends bit for
    bit where an undisturbed run ends."""
    import chex

    environment = dict(os.environ, JAX_PLATFORMS="cpu", LLN_LEASE_S="4", LLN_LEASE_RENEW_S="1")
    whole, contested = tmp_path / "whole", tmp_path / "contested"
    subprocess.run(_run_command(data_dir, whole), env=environment, check=True, timeout=600,
                   capture_output=True)  # fmt: skip
    with (tmp_path / "owner.log").open("w") as log, (tmp_path / "taker.log").open("w") as log2:
        owner = subprocess.Popen(_run_command(data_dir, contested), env=environment,
                                 stdout=subprocess.DEVNULL, stderr=log)  # fmt: skip
        _wait_for((contested / "checkpoints" / "latest" / "16").exists, owner)
        owner.send_signal(signal.SIGSTOP)
        time.sleep(6)  # Past the 4 s lease.
        taker = subprocess.Popen(_run_command(data_dir, contested), env=environment,
                                 stdout=subprocess.DEVNULL, stderr=log2)  # fmt: skip
        lock = contested / workdir_lock.LOCK_FILE
        _wait_for(lambda: lock.exists() and f'"pid": {taker.pid}' in lock.read_text(), taker)
        owner.send_signal(signal.SIGCONT)
        assert owner.wait(timeout=120) == 75
        said = (tmp_path / "owner.log").read_text()
        assert "was taken over by another run" in said.splitlines()[-1], said[-2000:]
        taker.wait(timeout=600)
    taker_log = (tmp_path / "taker.log").read_text()
    assert taker.returncode == 0, taker_log[-3000:]
    assert not (contested / "checkpoints" / "quarantine").exists(), taker_log[-3000:]
    whole_step, whole_state = _final_params(whole)
    contested_step, contested_state = _final_params(contested)
    assert whole_step == contested_step == 60
    chex.assert_trees_all_equal(contested_state, whole_state)
    results = [json.loads((d / "results.json").read_text()) for d in (whole, contested)]
    assert results[0]["test_map"] == results[1]["test_map"]
