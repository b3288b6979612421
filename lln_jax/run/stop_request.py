"""Signals as a request to stop: SIGTERM and SIGINT checkpoint at the next step, then stop.

A preemption (SIGTERM from a TPU maintenance event or a spot reclaim) or Ctrl-C must not
lose the work since the last save; the loop asks `agreed` at every step boundary. With
several processes the stop must be agreed: the signal reaches the hosts of a pod seconds
apart, and a process that stops alone leaves the others waiting in a collective.

A lost workdir lease (another run took it over while this one stalled) stops the run the
same way, but at once and without a save: `agreed` raises `LeaseLostError`.
"""

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from lln_jax.run.workdir_lock import LOST_BY_PROCESS_0, LeaseLostError, WorkdirLock


class RunInterruptedError(Exception):
    """A signal stopped the run after a checkpoint at a step boundary; rerun to resume."""

    def __init__(self, signal_name: str, step: int, total_steps: int, checkpoint_dir: str | None):
        saved = (
            f"the checkpoint of step {step} is in {checkpoint_dir}"
            if checkpoint_dir is not None
            else "nothing of this phase needed saving"
        )
        super().__init__(f"{signal_name}: stopped at step {step} of {total_steps}; {saved}")
        self.step = step


class StopRequest:
    """Turns SIGTERM and SIGINT into a request to checkpoint and stop at the next step boundary.

    A second SIGINT (Ctrl-C twice) stops at once, as Python does by default.
    """

    def __init__(self, lease: WorkdirLock | None = None):
        self.signal_name: str | None = None
        self._lease = lease  # Held by process 0 only.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._request)
            signal.signal(signal.SIGINT, self._request)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _request(self, signum, frame):
        del frame
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        logging.warning(
            "%s: saving a checkpoint at the next step, then stopping.", self.signal_name
        )

    def agreed(self, step: int, *, every: int, final: bool = False) -> bool:
        """Whether every process stops at this step boundary.

        One process decides alone, at every step. Several compare their requests every
        `every` steps (an all-gather of two flags, no more often than the loop logs) and
        once more when `final` (after the last step), so that all stop at the same step.

        Raises:
          LeaseLostError: on every process, when process 0's lease was taken over.
        """
        lost = self._lease is not None and self._lease.lost
        if jax.process_count() == 1:
            if lost:
                raise LeaseLostError(self._lease.lost_message())
            return self.requested
        if step % every and not final:
            return False
        flags = multihost_utils.process_allgather(np.int32([self.requested, lost]))
        if np.any(flags[..., 1]):
            raise LeaseLostError(LOST_BY_PROCESS_0)
        requests = flags[..., 0]
        if np.any(requests) and not self.requested:
            self.signal_name = "a signal to another process"
        return bool(np.any(requests))

    def restore_defaults(self) -> None:
        """Python's default handlers again, unless a stop was requested: then a late signal
        (the other hosts of a pod get theirs seconds apart) must not kill a process that is
        about to exit cleanly, so the handlers stay until it does."""
        if self.requested:
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
