"""Which run a workdir's files belong to: a run id drawn at the first start, and the config.

`WORKDIR/run.json` holds the identity of the run that started there: a random run id and the
digest of the config's settings that decide what is computed (`workdir.config_digest`). The
record of every checkpoint (latest, best, LinearInit's) carries the same identity, so that
a state left by another run (a best state that survived when `latest/` and `config.json`
were deleted, say) is refused by name rather than evaluated as this run's or skipped over.

Checkpoints written before identities existed carry none; they are taken as the run's own
when their config matches (a best state of that age has no record at all).
"""

import dataclasses
import json
import secrets
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from lln_jax.run import workdir as workdir_lib
from lln_jax.run.atomic_write import write_atomic

RUN_FILE = "run.json"


class ForeignStateError(workdir_lib.WorkdirError):
    """The workdir holds checkpoints of another run."""


@dataclasses.dataclass(frozen=True)
class RunIdentity:
    run_id: str
    config_sha256: str

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "RunIdentity":
        return cls(run_id=str(value["run_id"]), config_sha256=str(value["config_sha256"]))


def _draw_run_id() -> str:
    """A random id, the same on every process (process 0 draws it)."""
    drawn = np.frombuffer(secrets.token_bytes(8), np.uint8)
    if jax.process_count() > 1:
        drawn = np.asarray(multihost_utils.broadcast_one_to_all(drawn), np.uint8)
    return bytes(drawn).hex()


def new(config: ml_collections.ConfigDict) -> RunIdentity:
    return RunIdentity(_draw_run_id(), workdir_lib.config_digest(config))


def read(workdir: str) -> RunIdentity | None:
    """The identity in `WORKDIR/run.json`, or None where there is none."""
    path = epath.Path(workdir) / RUN_FILE
    if not path.exists():
        return None
    value = workdir_lib.read_json(path)
    try:
        return RunIdentity.from_json(value)
    except (KeyError, TypeError) as error:
        raise workdir_lib.WorkdirError(f"{path} lacks {error}; move it away") from error


def write(identity: RunIdentity, workdir: str) -> None:
    if jax.process_index() == 0:
        payload = {**identity.to_json(), "written": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_atomic(epath.Path(workdir) / RUN_FILE, json.dumps(payload, indent=2) + "\n")


def of_record(record: dict[str, Any] | None) -> RunIdentity | None:
    """The identity a checkpoint's record carries; None for one written before identities."""
    if not record or "identity" not in record:
        return None
    return RunIdentity.from_json(record["identity"])


def check_record(identity: RunIdentity, record: dict[str, Any] | None, source: str) -> None:
    """Raises `ForeignStateError` when the checkpoint at `source` belongs to another run."""
    theirs = of_record(record)
    if theirs is None or theirs == identity:
        return
    same_config = theirs.config_sha256 == identity.config_sha256
    config = "the same config" if same_config else "another config"
    raise ForeignStateError(
        f"{source} belongs to another run (run {theirs.run_id}, {config}; this run is "
        f"{identity.run_id}): leftovers of an earlier run in this workdir; move them away "
        "or use another --workdir"
    )
