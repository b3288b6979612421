"""`Session`: where a run writes, and the guards around every write.

The workdir, its lease, the checkpointer, the metric writer, the stop request and the run's
identity. `fence()` runs before every save, deletion or results write, so that a run whose
lease another run took over never writes again.
"""

import dataclasses
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from lln_jax.run import checkpointing, run_identity, stop_request, workdir_lock


@dataclasses.dataclass
class Session:
    """The run's workdir and its writers.

    Attributes:
      workdir: the run's directory (local or `gs://`).
      lease: the workdir's lease (None in tests that run without one).
      checkpointer: `workdir/checkpoints`' latest and best states.
      stop: the agreed SIGTERM/SIGINT stop request.
      identity: the run's identity, known once the restore has read the workdir.
      writer: clu's metric writer (TensorBoard events on process 0), created once the
        workdir is known to hold this run.
    """

    workdir: str
    lease: workdir_lock.WorkdirLock | None
    checkpointer: checkpointing.Checkpointer
    stop: stop_request.StopRequest
    identity: run_identity.RunIdentity | None = None
    writer: Any = None

    def fence(self) -> None:
        """Before any save, deletion or results write: the lease must still be this run's.

        Raises:
          workdir_lock.LeaseLostError: on every process, when another run took it over.
        """
        lost = None
        if self.lease is not None and jax.process_index() == 0:
            try:
                self.lease.verify()
            except workdir_lock.LeaseLostError as error:
                lost = error
        process_0_lost = jax.process_count() > 1 and bool(
            multihost_utils.broadcast_one_to_all(np.int32(lost is not None))
        )
        if process_0_lost and lost is None:
            lost = workdir_lock.LeaseLostError(workdir_lock.LOST_BY_PROCESS_0)
        if lost is not None:
            raise lost

    def identity_record(self) -> dict[str, Any]:
        """The record of a state saved outside the loop (best, LinearInit): the identity."""
        return {"identity": self.identity.to_json()}

    def check_identity(self, record: dict[str, Any] | None, source: str) -> None:
        """Refuses a saved state of another run (`run_identity.ForeignStateError`)."""
        run_identity.check_record(self.identity, record, source)

    def interrupted(self, step: int, total: int, checkpoint: str | None):
        """The error that stops the run on a stop request, saved at `checkpoint`."""
        return stop_request.RunInterruptedError(self.stop.signal_name, step, total, checkpoint)
