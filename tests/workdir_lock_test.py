"""The workdir lease: one owner, fencing of a stalled owner, clocks; local and on gs://."""

import json
import pathlib
import threading
import time

import gcs_emulator
import pytest

from lln_jax import workdir_lock

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
