"""What the loop checks when it logs: a non-finite loss stops the run, a growing one warns.

Called before every save, so no checkpoint ever holds a diverged state.
"""

import math
from typing import Any

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


def log_train_metrics(writer, step: int, train_metrics, run: Any, first_loss: list) -> None:
    """Writes the merged train metrics; a non-finite loss or norm stops the run.

    Called before every save, so no checkpoint ever holds a diverged state. `first_loss`
    holds the first loss logged this session, the reference for the growth warning. `run`
    gives the checkpointer, the workdir, the learning rate and `lr_fn`.
    """
    values = jax.device_get(train_metrics.compute())
    bad = [name for name in ("loss", "grad_norm", "param_norm") if not np.isfinite(values[name])]
    if bad:
        saved = run.checkpointer.latest_step()
        where = (
            f"the newest checkpoint (step {saved}) in {run.workdir} is the last good state"
            if saved is not None
            else f"no checkpoint was saved in {run.workdir}"
        )
        raise NonFiniteLossError(
            f"non-finite {', '.join(bad)} by step {step} ({ {k: float(values[k]) for k in bad} }); "
            f"stopped without saving: {where}"
        )
    loss = float(values["loss"])
    if not first_loss:
        first_loss.append(loss)
    if loss > ABOVE_CHANCE_WARNING * CHANCE_LOSS:
        logging.warning(
            "step %d: the loss %.3g is %.3g times chance (log 2 = %.3f per entry; gradient "
            "norm %.3g): the run has diverged; the learning rate (optim.learning_rate=%g) may "
            "be far too high",
            step, loss, loss / CHANCE_LOSS, CHANCE_LOSS, float(values["grad_norm"]),
            run.config.optim.learning_rate,
        )  # fmt: skip
    if loss > LOSS_GROWTH_WARNING * max(first_loss[0], 1e-12):
        logging.warning(
            "step %d: the loss grew from %.3g to %.3g (gradient norm %.3g): the learning rate "
            "(optim.learning_rate=%g) may be far too high",
            step, first_loss[0], loss, float(values["grad_norm"]), run.config.optim.learning_rate,
        )  # fmt: skip
    scalars = {f"train/{name}": float(value) for name, value in values.items()}
    scalars["train/learning_rate"] = run.lr_fn(step)
    writer.write_scalars(step, scalars)


def schedule_scalars(scheduled) -> dict[str, float]:
    """The scheme's schedule at the last step, by field name (`train/rate`, `train/epoch`)."""
    return {f"train/{name}": float(v) for name, v in jax.device_get(scheduled)._asdict().items()}
