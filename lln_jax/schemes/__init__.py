"""Loss schemes: assume-negative, the large-loss family, the baselines and GR, by name.

Each scheme is a `LossScheme` of pure functions with explicit state and a schedule of the
step (`contract.py`); the large-loss family (LL-R, LL-Ct, LL-Cp) is in `large_loss.py`,
assume-negative and the single-positive baselines (AN-LS, WAN, EPR, ROLE, EM) in
`baselines.py`, GR Loss in `robust_loss.py`. Builders take a `SchemeContext` (data set
facts injected by the trainer) and their own hyperparameters, all required;
`create(name, context=..., **hparams)` looks them up in `SCHEMES`. Adding a scheme is one
module and one line here (and its recipe in each config).
"""

import inspect
from collections.abc import Callable
from typing import Any

from lln_jax.schemes.baselines import (
    LabelEstimator,
    assume_negative,
    assume_negative_label_smoothing,
    entropy_maximisation,
    expected_positive_regularisation,
    online_label_estimation,
    weak_assume_negative,
)
from lln_jax.schemes.contract import (
    EmptyState,
    LossScheme,
    SchemeContext,
    Selection,
    Unscheduled,
    epoch_of_step,
    first_epoch_values,
)
from lln_jax.schemes.large_loss import (
    CorrectionState,
    SelectionRate,
    apply_corrections,
    constant_rate_after_first_epoch,
    growing_rate,
    large_loss_mask,
    large_loss_permanent_correction,
    large_loss_rejection,
    large_loss_temporary_correction,
    max_num_selected,
    num_selected,
)
from lln_jax.schemes.robust_loss import GrWeights, generalized_robust_loss, gr_weights

SCHEMES: dict[str, Callable[..., LossScheme]] = {
    "an": assume_negative,
    "an_ls": assume_negative_label_smoothing,
    "wan": weak_assume_negative,
    "epr": expected_positive_regularisation,
    "role": online_label_estimation,
    "em": entropy_maximisation,
    "ll_r": large_loss_rejection,
    "ll_ct": large_loss_temporary_correction,
    "ll_cp": large_loss_permanent_correction,
    "gr": generalized_robust_loss,
}


def hyperparameters(name: str) -> tuple[str, ...]:
    """The hyperparameter names scheme `name` takes (its keyword-only arguments)."""
    signature = inspect.signature(_builder(name))
    return tuple(p.name for p in signature.parameters.values() if p.kind == p.KEYWORD_ONLY)


def _builder(name: str) -> Callable[..., LossScheme]:
    if name not in SCHEMES:
        raise ValueError(f"Unknown loss scheme {name!r}; valid schemes: {sorted(SCHEMES)}")
    return SCHEMES[name]


def create(name: str, *, context: SchemeContext, **hparams: Any) -> LossScheme:
    """Builds the scheme `name` from `SCHEMES` with its hyperparameters.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones), or for
        hyperparameters other than the scheme's (the message lists both).
    """
    expected, given = set(hyperparameters(name)), set(hparams)
    if expected != given:
        raise ValueError(
            f"scheme {name!r} takes the hyperparameters {sorted(expected)}, got {sorted(given)}"
        )
    return _builder(name)(context, **hparams)


__all__ = [
    "SCHEMES", "CorrectionState", "EmptyState", "GrWeights", "LabelEstimator", "LossScheme",
    "SchemeContext", "Selection", "SelectionRate", "Unscheduled", "apply_corrections",
    "constant_rate_after_first_epoch", "create", "epoch_of_step", "first_epoch_values",
    "gr_weights", "growing_rate", "hyperparameters", "large_loss_mask", "max_num_selected",
    "num_selected",
]  # fmt: skip
