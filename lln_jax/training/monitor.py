"""What the loop checks when it logs: a non-finite loss stops the run, a growing one warns.

Called before every save, so no checkpoint ever holds a diverged state.
"""

import math

import jax
import numpy as np
from absl import logging


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; nothing after the last good save is kept."""


# A logged loss this many times the first one logged is warned about (a learning rate far
# too high grows it by orders of magnitude long before it overflows).
LOSS_GROWTH_WARNING = 100.0
# The loss is a mean over entries, so a model that knows nothing scores log 2 per entry (BCE
# of a zero logit); a loss this many times that has diverged, even at the first log (a rate
# so high that the first interval already blew up leaves growth nothing to measure).
CHANCE_LOSS = math.log(2.0)
ABOVE_CHANCE_WARNING = 10.0


class TrainMonitor:
    """Writes the merged train metrics at each log point and checks them.

    A non-finite loss or norm stops the run. It is called before every save, so no
    checkpoint ever holds a diverged state. The first loss logged this session is the
    reference for the growth warning.

    Args:
      writer: clu's metric writer.
      checkpointer: tells the newest saved step, for the error's message.
      workdir: for the error's message.
      learning_rate: the configured backbone rate, named in the warnings.
      lr_fn: step -> the scheduled learning rate, logged.
    """

    def __init__(self, writer, checkpointer, workdir: str, learning_rate: float, lr_fn):
        self.writer, self.checkpointer, self.workdir = writer, checkpointer, workdir
        self.learning_rate, self.lr_fn = learning_rate, lr_fn
        self.first_loss: float | None = None

    def log(self, step: int, train_metrics, scheduled) -> None:
        """Writes the metrics merged since the last log and the scheme's schedule by name."""
        values = jax.device_get(train_metrics.compute())
        self._check_finite(step, values)
        loss = float(values["loss"])
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self._warn_on_divergence(step, loss, float(values["grad_norm"]))
        scalars = {f"train/{name}": float(value) for name, value in values.items()}
        scalars["train/learning_rate"] = self.lr_fn(step)
        self.writer.write_scalars(step, scalars)
        self.writer.write_scalars(step, schedule_scalars(scheduled))

    def _check_finite(self, step: int, values) -> None:
        bad = [k for k in ("loss", "grad_norm", "param_norm") if not np.isfinite(values[k])]
        if not bad:
            return
        saved = self.checkpointer.latest_step()
        where = (
            f"the newest checkpoint (step {saved}) in {self.workdir} is the last good state"
            if saved is not None
            else f"no checkpoint was saved in {self.workdir}"
        )
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} by step {step} ({ {k: float(values[k]) for k in bad} }); "
            f"stopped without saving: {where}"
        )

    def _warn_on_divergence(self, step: int, loss: float, grad_norm: float) -> None:
        if loss > ABOVE_CHANCE_WARNING * CHANCE_LOSS:
            logging.warning(
                "step %d: the loss %.3g is %.3g times chance (log 2 = %.3f per entry; gradient "
                "norm %.3g): the run has diverged; the learning rate (optim.learning_rate=%g) "
                "may be far too high",
                step, loss, loss / CHANCE_LOSS, CHANCE_LOSS, grad_norm, self.learning_rate,
            )  # fmt: skip
        if loss > LOSS_GROWTH_WARNING * max(self.first_loss, 1e-12):
            logging.warning(
                "step %d: the loss grew from %.3g to %.3g (gradient norm %.3g): the learning "
                "rate (optim.learning_rate=%g) may be far too high",
                step, self.first_loss, loss, grad_norm, self.learning_rate,
            )  # fmt: skip


def schedule_scalars(scheduled) -> dict[str, float]:
    """The scheme's schedule at the last step, by field name (`train/rate`, `train/epoch`)."""
    return {f"train/{name}": float(v) for name, v in jax.device_get(scheduled)._asdict().items()}
