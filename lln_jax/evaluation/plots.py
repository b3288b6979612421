"""The report's figures, one set per data set, as PNG (matplotlib, no display needed).

- `val_map_<data>.png`: val mAP per epoch per setting, the mean over seeds with a band from
  the lowest to the highest seed;
- `memorisation_<data>.png`: the train split's false-negative and true-negative loss per
  epoch (the paper's memorisation picture), where the runs recorded them
  (`config.diagnose_false_negatives`);
- `selection_<data>.png`: for the large-loss schemes, the precision and the recall of the
  rejected or corrected entries per epoch.
"""

import io
from collections.abc import Sequence
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # Files only: no display.
import matplotlib.pyplot as plt
import numpy as np
from etils import epath


class Setting(NamedTuple):
    """One line of a figure: a setting's label and the results of its seeds."""

    label: str
    large_loss: bool
    results: list[dict[str, Any]]


def _curves(results: Sequence[dict[str, Any]], key: str) -> np.ndarray | None:
    """`[seeds, epochs]` of a per-epoch result (NaN where undefined), cut to the shortest."""
    series = [result.get(key) for result in results]
    if not all(series):
        return None
    length = min(len(s) for s in series)
    values = [[np.nan if v is None else v for v in s[:length]] for s in series]
    return np.asarray(values, dtype=np.float64)


def _styles(settings: Sequence[Setting]) -> dict[str, dict[str, str]]:
    """One colour per setting of a data set, the same in every figure (up to 20 distinct:
    tab20's dark shades, then its light ones); BoostLU heads dashed."""
    colours = plt.get_cmap("tab20").colors
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return {
        setting.label: {
            "color": colours[order[index % 20]],
            "linestyle": "--" if "boostlu" in setting.label else "-",
        }
        for index, setting in enumerate(settings)
    }


def _plot_band(axis, curves: np.ndarray, label: str, style: dict[str, str]) -> None:
    epochs = np.arange(1, curves.shape[1] + 1)
    # Epochs where no seed has a value (nothing selected yet) stay NaN: a gap in the line.
    counts = np.sum(~np.isnan(curves), axis=0)
    mean = np.where(counts > 0, np.nansum(curves, axis=0) / np.maximum(counts, 1), np.nan)
    axis.plot(epochs, mean, marker="o", markersize=3, label=label, **style)
    if len(curves) > 1:
        low, high = np.fmin.reduce(curves, axis=0), np.fmax.reduce(curves, axis=0)
        axis.fill_between(epochs, low, high, color=style["color"], alpha=0.15)


def _figure(
    settings: Sequence[Setting],
    panels: Sequence[tuple[str, str]],
    title: str,
    styles: dict[str, dict[str, str]],
):
    """One row of panels `(result key, y label)`, the legend on the right; None when no
    setting has any of them."""
    figure, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels) + 2.5, 4.2), squeeze=False)
    drawn = False
    for axis, (key, y_label) in zip(axes[0], panels, strict=True):
        for setting in settings:
            curves = _curves(setting.results, key)
            if curves is not None and not np.isnan(curves).all():
                _plot_band(axis, curves, setting.label, styles[setting.label])
                drawn = True
        axis.set_xlabel("epoch")
        axis.set_ylabel(y_label)
        axis.grid(alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    if handles:
        axes[0][-1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    figure.suptitle(title)
    figure.tight_layout()
    return figure if drawn else None


def _save(figure, path: epath.Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    path.write_bytes(buffer.getvalue())


def write_plots(by_data: dict[str, Sequence[Setting]], out: str) -> list[str]:
    """Writes every figure the results allow into `out` (local or `gs://`); their paths."""
    written = []
    for data, settings in sorted(by_data.items()):
        large_loss = [setting for setting in settings if setting.large_loss]
        styles = _styles(settings)
        figures = {
            f"val_map_{data}.png": _figure(
                settings,
                [("val_map", "val mAP (%)")],
                f"{data}: val mAP per epoch (mean, seed range)",
                styles,
            ),
            f"memorisation_{data}.png": _figure(
                settings,
                [
                    ("train_false_negative_loss", "loss -log(1-p) on false negatives"),
                    ("train_true_negative_loss", "loss -log(1-p) on true negatives"),
                ],
                f"{data}: assume-negative loss of the train split's unobserved entries",
                styles,
            ),
            f"selection_{data}.png": _figure(
                large_loss,
                [
                    ("train_selection_precision", "precision: true positives / selected"),
                    ("train_selection_recall", "recall: selected / false negatives"),
                ],
                f"{data}: the entries the large-loss schemes rejected or corrected",
                styles,
            ),
        }
        for name, figure in figures.items():
            if figure is not None:
                _save(figure, epath.Path(out) / name)
                written.append(str(epath.Path(out) / name))
    return written
