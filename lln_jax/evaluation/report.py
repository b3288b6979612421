"""Turns run dirs into the comparison with the paper: `python -m lln_jax.report RUN_DIR...`.

Groups runs by (data set, scheme, label setting, head, val-label selection) and writes
`report.md`, `report.csv`, `report.json` and the figures of `plots.py` into `--out`:
test mAP mean and standard deviation over seeds, the number of seeds, the best epochs, and
beside each cell the paper's number (SPEC.md sections 6 and 9; the authors' own rerun where
there is one) with the difference; a cell more than `MARK_ABOVE` points from the paper is
marked. A run dir
without `results.json` (crashed, stopped or still running) is listed, not averaged; one
whose `config.json` or `results.json` does not parse is listed apart with the reason. A
directory that holds run dirs rather than being one is expanded one level. Every path may
be `gs://`.
"""

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np
from absl import app, flags, logging
from etils import epath

from lln_jax.evaluation import plots as report_plots
from lln_jax.run.atomic_write import write_atomic

MARK_ABOVE = 1.0  # Points of mAP; about the method's own spread (SPEC.md section 6).

_COLUMNS = ("voc2012", "coco2014", "nuswide", "cub")
# SPEC.md section 6 (ResNet-50, 448, end-to-end, single positive), section 9 (BoostLU),
# section 11 (GR Loss, as later papers report it).
PAPER: dict[tuple[str, str, str], tuple[float, ...]] = {
    ("an", "full", "plain"): (90.2, 78.0, 54.5, 32.9),
    ("an", "single_positive", "plain"): (85.1, 64.1, 42.0, 19.1),
    ("wan", "single_positive", "plain"): (86.5, 64.8, 46.3, 20.3),
    ("an_ls", "single_positive", "plain"): (86.7, 66.9, 44.9, 17.9),
    ("epr", "single_positive", "plain"): (85.5, 63.3, 46.0, 20.0),
    ("role", "single_positive", "plain"): (87.9, 66.3, 43.1, 15.0),
    ("ll_r", "single_positive", "plain"): (89.2, 71.0, 47.4, 19.5),
    ("ll_ct", "single_positive", "plain"): (89.0, 70.5, 48.0, 20.4),
    ("ll_cp", "single_positive", "plain"): (88.4, 70.7, 48.3, 20.1),
    ("ll_r", "single_positive", "boostlu"): (89.29, 72.89, 49.59, 19.80),
    ("gr", "single_positive", "plain"): (89.83, 73.17, 49.08, 21.64),
}
AUTHORS_RERUN = {("ll_r", "single_positive", "plain"): (88.27, 70.70, 48.76, 19.56)}


class Run(NamedTuple):
    """One run dir: its config, its results where it finished, or why it does not read."""

    path: str
    config: dict[str, Any]
    results: dict[str, Any] | None
    unreadable: str | None = None


class Group(NamedTuple):
    data: str
    scheme: str
    labels: str
    head: str
    val_labels: str


class _UnreadableError(ValueError):
    pass


def _read_json(path: epath.Path) -> dict[str, Any] | None:
    """The file's JSON; None where it does not exist; `_UnreadableError` where it is bad."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise _UnreadableError(f"{path.name} does not parse ({error})") from error


def _read_run(path: epath.Path) -> Run:
    try:
        return Run(str(path), _read_json(path / "config.json"), _read_json(path / "results.json"))
    except _UnreadableError as error:
        return Run(str(path), {}, None, unreadable=str(error))


def find_runs(directories: Iterable[str]) -> list[Run]:
    """The runs in `directories` (each a run dir, or a directory of run dirs).

    Raises:
      NotADirectoryError: a path that is missing or not a directory (named).
    """
    runs = []
    for directory in directories:
        root = epath.Path(directory)
        if not root.is_dir():
            raise NotADirectoryError(
                f"{directory} is not a run dir or a directory of run dirs"
                f"{'' if root.exists() else ' (it does not exist)'}"
            )
        candidates = [root] if (root / "config.json").exists() else sorted(root.iterdir())
        for path in filter(lambda p: p.is_dir() and (p / "config.json").exists(), candidates):
            runs.append(_read_run(path))
    return runs


def group_of(config: dict[str, Any]) -> Group:
    alpha = config.get("model", {}).get("boost_alpha", 1.0)
    data = config["data"]
    return Group(
        data["name"],
        config["scheme"]["name"],
        data["label_setting"],
        "plain" if alpha == 1.0 else f"boostlu (alpha {alpha:g})",
        data.get("val_labels", "true"),
    )


def _reference(table, group: Group) -> float | None:
    head = "plain" if group.head == "plain" else "boostlu"
    row = table.get((group.scheme, group.labels, head))
    if row is None or group.data not in _COLUMNS or group.val_labels != "true":
        return None
    return row[_COLUMNS.index(group.data)]


def summarize(runs: Sequence[Run]) -> dict[str, Any]:
    """Per group: test mAP mean/std over seeds, seeds, best epochs, the paper and the gap."""
    groups: dict[Group, list[Run]] = {}
    readable = [run for run in runs if run.unreadable is None]
    for run in readable:
        if run.results is not None:
            groups.setdefault(group_of(run.config), []).append(run)
    rows = []
    for group, members in sorted(groups.items()):
        test_maps = [m.results["test_map"] for m in members]
        paper = _reference(PAPER, group)
        mean = float(np.mean(test_maps))
        rows.append({
            **group._asdict(),
            "test_map_mean": mean,
            "test_map_std": float(np.std(test_maps)),
            "seeds": [m.config.get("seed") for m in members],
            "best_epochs": [m.results["best_epoch"] for m in members],
            "paper": paper,
            "authors_rerun": _reference(AUTHORS_RERUN, group),
            "difference": None if paper is None else mean - paper,
            "marked": paper is not None and abs(mean - paper) > MARK_ABOVE,
            "runs": [m.path for m in members],
        })  # fmt: skip
    incomplete = [
        {"path": r.path, **group_of(r.config)._asdict()} for r in readable if not r.results
    ]
    unreadable = [{"path": r.path, "reason": r.unreadable} for r in runs if r.unreadable]
    return {"rows": rows, "incomplete": incomplete, "unreadable": unreadable}


def _cell(value: float | None, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| data set | scheme | labels | head | val labels | test mAP (mean ± std) | seeds "
        "| best epochs | paper | authors' rerun | difference |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary["rows"]:
        mark = " **(>1)**" if row["marked"] else ""
        lines.append(
            f"| {row['data']} | {row['scheme']} | {row['labels']} | {row['head']} "
            f"| {row['val_labels']} | {row['test_map_mean']:.2f} ± {row['test_map_std']:.2f} "
            f"| {len(row['seeds'])} | {' / '.join(map(str, row['best_epochs']))} "
            f"| {_cell(row['paper'])} | {_cell(row['authors_rerun'])} "
            f"| {_cell(row['difference'], sign=True)}{mark} |"
        )
    if summary["incomplete"]:
        lines += ["", "Incomplete runs (no results.json; not averaged):", ""]
        lines += [
            f"- {run['path']} ({run['data']}, {run['scheme']})" for run in summary["incomplete"]
        ]
    if summary.get("unreadable"):
        lines += ["", "Unreadable run dirs (not averaged; repair or move them):", ""]
        lines += [f"- {run['path']}: {run['reason']}" for run in summary["unreadable"]]
    return "\n".join(lines) + "\n"


def to_csv(summary: dict[str, Any]) -> str:
    buffer = io.StringIO()
    fields = [*Group._fields, "test_map_mean", "test_map_std", "num_seeds", "best_epochs",
              "paper", "authors_rerun", "difference", "marked"]  # fmt: skip
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in summary["rows"]:
        writer.writerow({
            **{k: row[k] for k in fields if k in row},
            "num_seeds": len(row["seeds"]),
            "best_epochs": " ".join(map(str, row["best_epochs"])),
        })  # fmt: skip
    return buffer.getvalue()


def _settings_by_data(runs: Sequence[Run]) -> dict[str, list[report_plots.Setting]]:
    groups: dict[Group, list[dict[str, Any]]] = {}
    for run in runs:
        if run.results is not None and run.unreadable is None:
            groups.setdefault(group_of(run.config), []).append(run.results)
    by_data: dict[str, list[report_plots.Setting]] = {}
    for group, results in sorted(groups.items()):
        label = (
            group.scheme
            if group.labels == "single_positive"
            else f"{group.scheme} ({group.labels})"
        )
        label += "" if group.head == "plain" else f", {group.head}"
        label += "" if group.val_labels == "true" else f", val: {group.val_labels}"
        setting = report_plots.Setting(label, group.scheme.startswith("ll_"), results)
        by_data.setdefault(group.data, []).append(setting)
    return by_data


def write_report(directories: Sequence[str], out: str) -> dict[str, Any]:
    """Reads the runs; writes `report.{md,csv,json}` and the figures into `out`."""
    runs = find_runs(directories)
    summary = summarize(runs)
    target = epath.Path(out)
    target.mkdir(parents=True, exist_ok=True)
    write_atomic(target / "report.md", to_markdown(summary))
    write_atomic(target / "report.csv", to_csv(summary))
    write_atomic(target / "report.json", json.dumps(summary, indent=2) + "\n")
    summary["figures"] = report_plots.write_plots(_settings_by_data(runs), out)
    return summary


def main(argv: Sequence[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError("name one or more run dirs (or directories of run dirs)")
    try:
        summary = write_report(argv[1:], flags.FLAGS.out)
    except NotADirectoryError as error:
        raise app.UsageError(str(error)) from error
    logging.info("\n%s", to_markdown(summary))


def run_command() -> None:
    """`python -m lln_jax.report`: the flag exists only for the command, not for importers."""
    flags.DEFINE_string("out", "report", "Where report.md, report.csv and report.json go.")
    app.run(main)
