"""One run per workdir: a fenced lease that names its owner and is renewed while it runs.

`WORKDIR/lock.json` holds the owner's host, pid, a random token, when it started and when it
last renewed the lease (a heartbeat thread, every `renew_s`). A second run refuses while the
lease is live and names the owner. A lease is stale, and is taken over, when it was not
renewed for `lease_s`, when its owner is a process of this host that no longer exists (a
killed run, restarted at once; the process is told apart from a later one that got its pid
by the kernel's boot id and its start time), or when it claims a renewal more than `renew_s` in the
future (a clock that jumped back would otherwise block the workdir for the jump's length).

Every write of the lease is a compare-and-swap against the version the writer last saw, so
of two takers exactly one wins, and an owner that stalled past `lease_s` (a suspended VM, a
hung filesystem) finds out at its next write that the lease was taken: the lease is then
*lost*, and the run must stop without saving anything (`verify`, called before every save,
deletion and results write, raises `LeaseLostError`). The version is the fencing token:
- `gs://`: the object's generation, with google-cloud-storage's `if_generation_match`
  (0: create only if absent), which GCS applies atomically;
- a local (or NFS) directory: a generation and the writer's token stored in the file, read
  and replaced under an exclusive `flock` of a guard file beside it.
Only process 0 of a multi-process run takes the lease.
"""

import contextlib
import fcntl
import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from absl import logging
from etils import epath

from lln_jax.run import process_identity
from lln_jax.run.atomic_write import write_atomic

LOCK_FILE = "lock.json"
_ABSENT = "0"  # The version of a lease that does not exist.


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir."""


class LeaseLostError(RuntimeError):
    """Another run took the workdir's lease over while this one held it."""


# What a process other than the lease's holder says when process 0 lost the lease.
LOST_BY_PROCESS_0 = (
    "the workdir's lease was taken over by another run while process 0 stalled; stopping "
    "without saving, the other run owns the workdir"
)


class _RaceLostError(Exception):
    """The lease changed since it was read: another writer came first."""


class _LocalStore:
    """The lease file of a local directory; compare-and-swap under an exclusive flock."""

    def __init__(self, path: epath.Path):
        self.path = path
        self._guard = path.with_name(f".{path.name}.guard")

    @contextlib.contextmanager
    def _locked(self, timeout_s: float = 10.0):
        """Holds the guard; a holder stalled inside its few-millisecond write (a stopped
        process) makes this raise `OSError` after `timeout_s` instead of waiting forever."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._guard, "a") as guard:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise OSError(f"{self._guard} stays locked by a stalled process") from None
                    time.sleep(0.01)
            yield

    def _read_unlocked(self) -> tuple[dict[str, Any] | None, str]:
        try:
            lease = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None, _ABSENT
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            return {}, "unreadable"  # Half-written by an older version: as good as stale.
        return lease, f"{lease.get('generation', -1)}:{lease.get('token')}"

    def read(self) -> tuple[dict[str, Any] | None, str]:
        with self._locked():
            return self._read_unlocked()

    def write(self, lease: dict[str, Any], expected: str) -> str:
        with self._locked():
            current, version = self._read_unlocked()
            if version != expected:
                raise _RaceLostError
            generation = max(int((current or {}).get("generation", 0)), 0) + 1
            write_atomic(self.path, json.dumps({**lease, "generation": generation}, indent=2))
            return f"{generation}:{lease['token']}"

    def delete(self, expected: str) -> None:
        with self._locked():
            if self._read_unlocked()[1] == expected:
                self.path.unlink(missing_ok=True)


class _GcsStore:
    """The lease object of a `gs://` workdir; compare-and-swap on the object generation."""

    def __init__(self, path: epath.Path):
        from google.api_core import exceptions
        from google.cloud import storage

        self.path = path
        bucket, _, name = str(path)[len("gs://") :].partition("/")
        self._blob_name = name
        self._bucket = storage.Client().bucket(bucket)
        self._precondition_failed = exceptions.PreconditionFailed
        self._not_found = exceptions.NotFound

    def read(self) -> tuple[dict[str, Any] | None, str]:
        blob = self._bucket.get_blob(self._blob_name)
        if blob is None:
            return None, _ABSENT
        generation = str(blob.generation)
        try:
            text = blob.download_as_text(if_generation_match=blob.generation)
        except (self._precondition_failed, self._not_found):
            return self.read()  # Replaced between the two requests: read the new one.
        try:
            return json.loads(text), generation
        except json.JSONDecodeError:
            return {}, generation

    def write(self, lease: dict[str, Any], expected: str) -> str:
        blob = self._bucket.blob(self._blob_name)
        try:
            blob.upload_from_string(
                json.dumps(lease, indent=2),
                content_type="application/json",
                if_generation_match=int(expected),
            )
        except self._precondition_failed as error:
            raise _RaceLostError from error
        return str(blob.generation)

    def delete(self, expected: str) -> None:
        with contextlib.suppress(self._precondition_failed, self._not_found):
            self._bucket.blob(self._blob_name).delete(if_generation_match=int(expected))


def _store(path: epath.Path):
    return _GcsStore(path) if str(path).startswith("gs://") else _LocalStore(path)


def _owner_is_dead(lease: dict[str, Any]) -> bool:
    if lease.get("host") != socket.gethostname():
        return False
    try:
        pid = int(lease["pid"])
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError, KeyError, ValueError):
        return False
    recorded = lease.get("process")  # Leases of older versions have none.
    return recorded is not None and process_identity.of(pid) not in (recorded, None)


class WorkdirLock:
    """The lease on one workdir; `acquire()` then `release()` (or use it as a context)."""

    def __init__(self, workdir: str, *, lease_s: float = 120.0, renew_s: float = 20.0):
        self.path = epath.Path(workdir) / LOCK_FILE
        self.lease_s, self.renew_s = lease_s, renew_s
        self.token = secrets.token_hex(8)
        self._store = _store(self.path)
        self._version: str | None = None
        self._writing = threading.Lock()  # The heartbeat and `verify` never write at once.
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    @property
    def lost(self) -> bool:
        """Whether another run took the lease over (checked at every step: no I/O)."""
        return self._lost.is_set()

    def _lease(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process": process_identity.of(os.getpid()),
            "token": self.token,
            "started": self._started,
            "renewed": time.time(),
        }

    def _is_stale(self, lease: dict[str, Any]) -> bool:
        if not lease:
            return True
        age = time.time() - float(lease.get("renewed", 0.0))
        if age < -self.renew_s:
            logging.warning(
                "The lease %s was renewed %.0f s in the future (a clock that jumped back?): "
                "taken as stale", self.path, -age,
            )  # fmt: skip
            return True
        return age > self.lease_s or _owner_is_dead(lease)

    def _refuse(self, lease: dict[str, Any]) -> None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("started", 0)))
        age = time.time() - float(lease.get("renewed", 0.0))
        raise WorkdirLockedError(
            f"{self.path.parent} is in use by pid {lease.get('pid')} on {lease.get('host')} "
            f"(since {since}, lease renewed {age:.0f} s ago; stale after {self.lease_s:.0f} s); "
            "use another --workdir, or stop that run first"
        )

    def live_holder(self) -> dict[str, Any] | None:
        """The lease of the run holding the workdir now (host, pid, times); None if none."""
        lease, _ = self._store.read()
        return None if lease is None or self._is_stale(lease) else lease

    def acquire(self) -> "WorkdirLock":
        """Takes the lease or raises `WorkdirLockedError` naming the live owner."""
        try:
            return self._acquire()
        except OSError as error:
            raise WorkdirLockedError(f"{self.path} cannot be taken: {error}") from error

    def _acquire(self) -> "WorkdirLock":
        lease, version = self._store.read()
        if lease is not None and not self._is_stale(lease):
            self._refuse(lease)
        if lease is not None:
            logging.warning("Taking over the stale lease %s (%s)", self.path, lease)
        self._started = time.time()
        try:
            self._version = self._store.write(self._lease(), version)
        except _RaceLostError:  # Another taker came first: it is the owner now.
            self._refuse(self._store.read()[0] or {})
        self._thread = threading.Thread(target=self._renew, daemon=True, name="workdir-lease")
        self._thread.start()
        return self

    def _write_renewal(self) -> None:
        with self._writing:
            if self.lost:
                raise LeaseLostError(self.lost_message())
            try:
                self._version = self._store.write(self._lease(), self._version)
            except _RaceLostError:
                self._lost.set()
                logging.error("%s", self.lost_message())
                raise LeaseLostError(self.lost_message()) from None

    def lost_message(self) -> str:
        return (
            f"the lease {self.path} was taken over by another run (this one stalled past "
            f"{self.lease_s:.0f} s); stopping without saving, the other run owns the workdir"
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self._write_renewal()
            except LeaseLostError:
                return
            except Exception as error:  # A transient storage error (an OSError, or one of
                # google-cloud-storage's): try again next time rather than let the heartbeat
                # die and the lease go stale under a live run.
                logging.warning("Could not renew the lease %s: %s", self.path, error)

    def verify(self) -> None:
        """Renews the lease now, so the caller may write: raises `LeaseLostError` if lost."""
        self._write_renewal()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if not self.lost:
                with self._writing:
                    self._store.delete(self._version)

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
