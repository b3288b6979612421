"""One run per workdir: a lease file that names its owner and is renewed while it runs.

`WORKDIR/lock.json` holds the owner's host, pid, a random token, when it started and when it
last renewed the lease (a heartbeat thread, every `renew_s`). A second run refuses while the
lease is live and names the owner. A lease is stale, and is taken over, when it was not
renewed for `lease_s`, or when its owner is a process of this host that no longer exists (a
killed run, restarted at once). It goes through `etils.epath`, so a `gs://` workdir works the
same way: after writing, the taker reads the file back after a pause, and whoever's token is
not there lost a race and refuses (object stores have no exclusive create through epath).
Only process 0 of a multi-process run takes the lease.
"""

import json
import os
import secrets
import socket
import threading
import time
from typing import Any

from absl import logging
from etils import epath

LOCK_FILE = "lock.json"


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir."""


def _owner_is_dead(lease: dict[str, Any]) -> bool:
    if lease.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(lease["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError, KeyError, ValueError):
        return False
    return False


class WorkdirLock:
    """The lease on one workdir; `acquire()` then `release()` (or use it as a context)."""

    def __init__(self, workdir: str, *, lease_s: float = 120.0, renew_s: float = 20.0):
        self.path = epath.Path(workdir) / LOCK_FILE
        self.lease_s, self.renew_s = lease_s, renew_s
        self.token = secrets.token_hex(8)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = 0.0

    def _read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, ValueError):
            return {}  # Half-written by a killed owner: as good as stale.

    def _write(self, started: float) -> None:
        lease = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "token": self.token,
            "started": started,
            "renewed": time.time(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(lease, indent=2) + "\n")

    def _live_owner(self) -> dict[str, Any] | None:
        lease = self._read()
        if not lease or lease.get("token") == self.token:
            return None
        age = time.time() - float(lease.get("renewed", 0.0))
        if age > self.lease_s or _owner_is_dead(lease):
            logging.warning("Taking over the stale lease %s (%s)", self.path, lease)
            return None
        return lease

    def _refuse(self, lease: dict[str, Any]) -> None:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("started", 0)))
        age = time.time() - float(lease.get("renewed", 0.0))
        raise WorkdirLockedError(
            f"{self.path.parent} is in use by pid {lease.get('pid')} on {lease.get('host')} "
            f"(since {since}, lease renewed {age:.0f} s ago; stale after {self.lease_s:.0f} s); "
            "use another --workdir, or stop that run first"
        )

    def acquire(self, settle_s: float = 0.5) -> "WorkdirLock":
        """Takes the lease or raises `WorkdirLockedError` naming the live owner."""
        owner = self._live_owner()
        if owner is not None:
            self._refuse(owner)
        self._started = time.time()
        self._write(self._started)
        time.sleep(settle_s)  # Another taker's write in this window wins the race ...
        lease = self._read()
        if not lease or lease.get("token") != self.token:  # ... and this one refuses.
            self._refuse(lease or {})
        self._thread = threading.Thread(target=self._renew, daemon=True, name="workdir-lease")
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.renew_s):
            try:
                self._write(self._started)
            except OSError as error:  # A transient storage error: try again next time.
                logging.warning("Could not renew the lease %s: %s", self.path, error)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            lease = self._read()
            if lease and lease.get("token") == self.token:
                self.path.unlink(missing_ok=True)
            self._thread = None

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()
