"""The workdir lease on `gs://`, against the real emulator (run by `gcs_emulator.run`).

`python gcs_lease_scenarios.py SCENARIO`: exits 0 and prints `ok SCENARIO` when every
assertion holds.
"""

import json
import sys
import threading
import time

from google.cloud import storage

from lln_jax.run import workdir_lock

WORKDIR = "gs://bucket/run"


def _blob():
    return storage.Client().bucket("bucket").blob("run/lock.json")


def _write_stale_lease() -> None:
    lease = {"host": "elsewhere", "pid": 1, "token": "old", "started": 0.0, "renewed": 0.0}
    _blob().upload_from_string(json.dumps(lease))


def takers_race() -> None:
    """Eight takers of one stale lease at once: exactly one owns it, the others refuse."""
    _write_stale_lease()
    barrier, outcomes = threading.Barrier(8), []

    def take() -> None:
        lock = workdir_lock.WorkdirLock(WORKDIR, renew_s=1000)
        barrier.wait()
        try:
            outcomes.append(("won", lock.acquire()))
        except workdir_lock.WorkdirLockedError as error:
            outcomes.append(("refused", str(error)))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [lock for outcome, lock in outcomes if outcome == "won"]
    assert len(winners) == 1, outcomes
    assert json.loads(_blob().download_as_text())["token"] == winners[0].token
    winners[0].release()
    assert not _blob().exists()


def interleaved_takeover() -> None:
    """Two takers that read the same stale version: the second write is refused."""
    _write_stale_lease()
    first = workdir_lock.WorkdirLock(WORKDIR, renew_s=1000)
    second = workdir_lock.WorkdirLock(WORKDIR, renew_s=1000)
    original_read = second._store.read
    seen = original_read()  # The second taker reads before the first one writes ...
    first.acquire()
    second._store.read = _once(seen, original_read)
    try:
        second.acquire()  # ... and writes after it: its compare-and-swap fails.
    except workdir_lock.WorkdirLockedError as error:
        assert f"pid {first._lease()['pid']}" in str(error), error
    else:
        raise AssertionError("both takers acquired the lease")
    assert json.loads(_blob().download_as_text())["token"] == first.token
    first.release()


def _once(first_value, then):
    calls = []

    def read():
        calls.append(None)
        return first_value if len(calls) == 1 else then()

    return read


def stalled_owner_is_fenced() -> None:
    """An owner that stalled past the lease finds, at its next write, that it lost it."""
    owner = workdir_lock.WorkdirLock(WORKDIR, lease_s=1.0, renew_s=1000).acquire()
    owner.verify()  # Renews: still its own.
    time.sleep(1.5)  # The stall: no renewal for longer than the lease.
    taker = workdir_lock.WorkdirLock(WORKDIR, lease_s=1.0, renew_s=1000).acquire()
    try:
        owner.verify()
    except workdir_lock.LeaseLostError as error:
        assert "taken over by another run" in str(error), error
    else:
        raise AssertionError("the stalled owner kept writing")
    assert owner.lost
    owner.release()  # Deletes nothing: the lease is the taker's.
    assert json.loads(_blob().download_as_text())["token"] == taker.token
    taker.verify()
    taker.release()
    assert not _blob().exists()


def heartbeat_notices_the_loss() -> None:
    """The owner's heartbeat finds the lease taken and marks it lost, with no other write."""
    owner = workdir_lock.WorkdirLock(WORKDIR, lease_s=60, renew_s=0.1).acquire()
    lease = json.loads(_blob().download_as_text())
    _blob().upload_from_string(json.dumps({**lease, "token": "another run"}))
    deadline = time.time() + 10
    while not owner.lost and time.time() < deadline:
        time.sleep(0.05)
    assert owner.lost
    owner.release()
    assert json.loads(_blob().download_as_text())["token"] == "another run"


if __name__ == "__main__":
    name = sys.argv[1]
    globals()[name]()
    print(f"ok {name}")
