"""Signals as a request to stop: SIGTERM and SIGINT checkpoint at the next step, then stop.

A preemption (SIGTERM from a TPU maintenance event or a spot reclaim) or Ctrl-C must not
lose the work since the last save; the loop asks `agreed` at every step boundary. With
several processes the stop must be agreed: the signal reaches the hosts of a pod seconds
apart, and a process that stops alone leaves the others waiting in a collective.
"""

import signal
import threading

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class RunInterruptedError(Exception):
    """A signal stopped the run after a checkpoint at a step boundary; rerun to resume."""

    def __init__(self, signal_name: str, step: int, total_steps: int, workdir: str):
        super().__init__(
            f"{signal_name}: stopped at step {step} of {total_steps}; the checkpoint of step "
            f"{step} is in {workdir}/checkpoints/latest"
        )
        self.step = step


class StopRequest:
    """Turns SIGTERM and SIGINT into a request to checkpoint and stop at the next step boundary.

    A second SIGINT (Ctrl-C twice) stops at once, as Python does by default.
    """

    def __init__(self):
        self.signal_name: str | None = None
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
        `every` steps (an all-gather of one flag, no more often than the loop logs) and
        once more when `final` (after the last step), so that all stop at the same step.
        """
        if jax.process_count() == 1:
            return self.requested
        if step % every and not final:
            return False
        requests = multihost_utils.process_allgather(np.int32(self.requested))
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
