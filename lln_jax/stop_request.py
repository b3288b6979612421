"""Signals as a request to stop: SIGTERM and SIGINT checkpoint at the next step, then stop.

A preemption (SIGTERM from a TPU maintenance event or a spot reclaim) or Ctrl-C must not
lose the work since the last save; the loop checks `requested` at every step boundary.
"""

import signal
import threading

from absl import logging


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

    def restore_defaults(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
