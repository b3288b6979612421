"""What a log point checks and writes: divergence warnings, non-finite losses, the schedule."""

import types

import numpy as np
import pytest

from lln_jax import schemes
from lln_jax.training import monitor


def _metrics(loss, grad_norm=1.0):
    values = {"loss": np.float32(loss), "grad_norm": np.float32(grad_norm),
              "param_norm": np.float32(1.0)}  # fmt: skip
    return types.SimpleNamespace(compute=lambda: values)


class _Writer:
    def __init__(self):
        self.scalars = {}

    def write_scalars(self, step, scalars):
        self.scalars.update({(step, name): value for name, value in scalars.items()})


def _monitor(latest_step=None, writer=None):
    checkpointer = types.SimpleNamespace(latest_step=lambda: latest_step)
    return monitor.TrainMonitor(writer or _Writer(), checkpointer, "/runs/w", 1e6, lambda s: 1e6)


NOTHING = schemes.Unscheduled()


def test_a_loss_growing_by_orders_of_magnitude_is_warned_about(caplog):
    watching = _monitor()
    watching.log(5, _metrics(0.7), NOTHING)
    assert "grew" not in caplog.text
    watching.log(10, _metrics(3.6e12, 7e17), NOTHING)
    assert "the loss grew from 0.7 to 3.6e+12" in caplog.text
    assert "optim.learning_rate=1e+06" in caplog.text


def test_a_first_loss_far_above_chance_is_warned_about(caplog):
    """A rate so high that the first interval already diverged leaves growth nothing to
    measure: the first logged loss is compared with chance (log 2 per entry)."""
    _monitor().log(5, _metrics(4.5e11), NOTHING)
    assert "the loss 4.5e+11 is 6.49e+11 times chance (log 2 = 0.693 per entry" in caplog.text
    caplog.clear()
    _monitor().log(5, _metrics(0.9), NOTHING)
    assert "chance" not in caplog.text


def test_the_non_finite_message_says_whether_anything_was_saved():
    with pytest.raises(monitor.NonFiniteLossError, match="no checkpoint was saved in /runs/w"):
        _monitor().log(5, _metrics(np.nan), NOTHING)
    with pytest.raises(monitor.NonFiniteLossError, match=r"newest checkpoint \(step 40\)"):
        _monitor(latest_step=40).log(45, _metrics(np.inf), NOTHING)


def test_the_schedule_is_logged_by_name():
    writer = _Writer()
    weights = schemes.GrWeights(*(np.float32(v) for v in (3, 1.5, -2, 0.6, 1.2)))
    _monitor(writer=writer).log(7, _metrics(0.5), weights)
    assert writer.scalars[(7, "train/epoch")] == 3.0
    assert writer.scalars[(7, "train/mu")] == pytest.approx(0.6)
    _monitor(writer=writer).log(8, _metrics(0.5), schemes.SelectionRate(np.float32(0.25)))
    assert writer.scalars[(8, "train/rate")] == 0.25
    assert writer.scalars[(8, "train/learning_rate")] == 1e6
