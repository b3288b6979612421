"""`RunRecord`: the loop's bookkeeping, saved as JSON with every checkpoint.

A typed value with one place for each fact: the val mAP of every epoch, the best epoch and
its mAP, the early stop, the selection's precision and recall per epoch (and the open
epoch's running totals, so that a resumed epoch counts the steps before its checkpoint),
the false-negative diagnosis, the config, the observed labels' digest and the run's
identity. `to_json` writes the keys the checkpoints have always held, so `from_json` reads
the records of every earlier version (the identity and the diagnosis are absent in some).
"""

import dataclasses
import math
from typing import Any

from lln_jax.evaluation import metrics


@dataclasses.dataclass
class RunRecord:
    """What the loop knows of a run besides its train state.

    Attributes:
      config: the run's config as JSON (`workdir.config_json`).
      observed_labels_sha256: the digest of the train split's observed labels.
      identity: the run's identity as JSON (`run_identity.RunIdentity.to_json`), once known.
      val_map: val mAP per finished epoch, in percent.
      best_val_map: the best of them (-inf before the first).
      best_epoch: its 1-indexed epoch (0 before the first).
      stopped_early: whether the last epoch end stopped the run.
      selection_totals: the open epoch's selection counts (`metrics.SELECTION_COUNTS`).
      selection_precision, selection_recall: per finished epoch; None where undefined.
      false_negative_loss, true_negative_loss: per finished epoch, with the diagnosis on.
    """

    config: dict[str, Any]
    observed_labels_sha256: str
    identity: dict[str, Any] | None = None
    val_map: list[float] = dataclasses.field(default_factory=list)
    best_val_map: float = -math.inf
    best_epoch: int = 0
    stopped_early: bool = False
    selection_totals: dict[str, float] | None = None
    selection_precision: list[float | None] = dataclasses.field(default_factory=list)
    selection_recall: list[float | None] = dataclasses.field(default_factory=list)
    false_negative_loss: list[float] = dataclasses.field(default_factory=list)
    true_negative_loss: list[float] = dataclasses.field(default_factory=list)

    def add_selection(self, totals: dict[str, float]) -> None:
        """Adds a log interval's selection counts to the open epoch's."""
        running = self.selection_totals or dict.fromkeys(totals, 0.0)
        self.selection_totals = {name: running[name] + value for name, value in totals.items()}

    def close_epoch(self, val_map: float, epoch: int) -> bool:
        """Records an epoch's val mAP and selection quality; True if it is the new best
        (strictly greater, as the reference code)."""
        totals, self.selection_totals = self.selection_totals, None
        empty = {"precision": None, "recall": None}
        quality = metrics.selection_quality(totals) if totals else empty
        self.selection_precision.append(quality["precision"])
        self.selection_recall.append(quality["recall"])
        self.val_map.append(val_map)
        if val_map > self.best_val_map:
            self.best_val_map, self.best_epoch = val_map, epoch
            return True
        return False

    def add_diagnosis(self, losses: dict[str, float]) -> None:
        """The epoch's mean losses of the train split's false and true negatives."""
        self.false_negative_loss.append(losses["false_negative"])
        self.true_negative_loss.append(losses["true_negative"])

    def epoch_scalars(self) -> dict[str, float]:
        """The last epoch's values for TensorBoard."""
        scalars = {"val/map": self.val_map[-1]}
        for name, values in (
            ("selection_precision", self.selection_precision),
            ("selection_recall", self.selection_recall),
            ("false_negative_loss", self.false_negative_loss),
            ("true_negative_loss", self.true_negative_loss),
        ):
            if values and values[-1] is not None:
                scalars[f"train/{name}"] = values[-1]
        return scalars

    def results(self) -> dict[str, Any]:
        """The record's part of `results.json` (its keys, as every version wrote them)."""
        diagnosis = {
            f"train_{name}_loss": values
            for name, values in (
                ("false_negative", self.false_negative_loss),
                ("true_negative", self.true_negative_loss),
            )
            if values
        }
        return {
            "val_map": self.val_map,
            "best_epoch": self.best_epoch,
            "best_val_map": self.best_val_map,
            "stopped_early": self.stopped_early,
            **diagnosis,
            "train_selection_precision": self.selection_precision,
            "train_selection_recall": self.selection_recall,
            "observed_labels_sha256": self.observed_labels_sha256,
        }

    def to_json(self) -> dict[str, Any]:
        """The checkpoint's JSON, under the keys checkpoints have always used."""
        saved = {"config": self.config, **self.results()}
        if self.identity is not None:
            saved["identity"] = self.identity
        if self.selection_totals is not None:
            saved["selection_this_epoch"] = self.selection_totals
        return saved

    @classmethod
    def from_json(cls, saved: dict[str, Any]) -> "RunRecord":
        """Reads a record of this or any earlier version.

        Raises:
          ValueError: for a record without the keys every version wrote.
        """
        missing = {"val_map", "best_val_map", "best_epoch", "observed_labels_sha256"} - set(saved)
        if missing:
            raise ValueError(f"the checkpoint's record lacks {sorted(missing)}")
        return cls(
            config=saved.get("config", {}),
            observed_labels_sha256=saved["observed_labels_sha256"],
            identity=saved.get("identity"),
            val_map=[float(v) for v in saved["val_map"]],
            best_val_map=float(saved["best_val_map"]),
            best_epoch=int(saved["best_epoch"]),
            stopped_early=bool(saved.get("stopped_early", False)),
            selection_totals=saved.get("selection_this_epoch"),
            selection_precision=list(saved.get("train_selection_precision", [])),
            selection_recall=list(saved.get("train_selection_recall", [])),
            false_negative_loss=list(saved.get("train_false_negative_loss", [])),
            true_negative_loss=list(saved.get("train_true_negative_loss", [])),
        )
