"""`RunRecord`: the typed record reads the checkpoints written before it existed.

`tests/fixtures/ll_cp_runlocal_step20.tar.gz` is a workdir written by the trainer as it
was before the record was typed (`configs/digits.py:scheme=ll_cp,runlocal`, one CPU
device, stopped after step 20 of 30: its record holds the open epoch's selection totals),
and `ll_cp_runlocal_results.json` that run's own results when it went on to the end, on
the machine that wrote it; `ll_cp_runlocal_results_by_machine.json` holds the earlier
trainer's results resuming it on other machines (XLA:CPU's last bits follow the CPU).
"""

import json
import math
import os
import pathlib
import subprocess
import sys
import tarfile

import pytest
from conftest import cpu_identity

from lln_jax.training.record import RunRecord

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"


@pytest.fixture
def old_workdir(tmp_path) -> pathlib.Path:
    with tarfile.open(FIXTURES / "ll_cp_runlocal_step20.tar.gz") as archive:
        archive.extractall(tmp_path / "work", filter="data")
    return tmp_path / "work"


def _saved_record(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "checkpoints/latest/20/record/metadata").read_text())


def test_a_record_of_the_earlier_format_reads_and_writes_back_unchanged(old_workdir):
    saved = _saved_record(old_workdir)
    record = RunRecord.from_json(saved)
    assert record.best_epoch == 1 and record.val_map == [record.best_val_map]
    assert record.selection_totals is not None  # Epoch 2 was open at step 20.
    assert record.identity is not None and len(record.false_negative_loss) == 1
    assert record.to_json() == saved


def test_a_fresh_record_closes_epochs_and_keeps_the_first_best():
    record = RunRecord(config={}, observed_labels_sha256="x")
    assert record.best_val_map == -math.inf
    record.add_selection({"selected": 4.0, "selected_false_negatives": 1.0, "false_negatives": 8})
    record.add_selection({"selected": 4.0, "selected_false_negatives": 3.0, "false_negatives": 8})
    assert record.close_epoch(60.0, 1) and not record.close_epoch(60.0, 2)
    assert (record.best_epoch, record.selection_precision, record.selection_recall) == (
        1, [0.5, None], [0.25, None],
    )  # fmt: skip
    assert RunRecord.from_json(record.to_json()) == record


def test_a_record_without_the_keys_every_version_wrote_is_refused():
    with pytest.raises(ValueError, match=r"lacks \['best_epoch', 'best_val_map'"):
        RunRecord.from_json({"val_map": []})


@pytest.mark.slow
def test_a_run_of_the_earlier_format_resumes_to_its_own_results(old_workdir, data_dir):
    """Resumed at step 20 by today's trainer on the device count it was written on, the
    run ends exactly as the earlier trainer ended it."""
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [
        sys.executable, "-m", "lln_jax.main", f"--config={CONFIG}:scheme=ll_cp,runlocal",
        f"--config.data.data_dir={data_dir}", f"--workdir={old_workdir}",
    ]  # fmt: skip
    environment["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Resumed from" in done.stderr
    results = json.loads((old_workdir / "results.json").read_text())
    by_machine = json.loads((FIXTURES / "ll_cp_runlocal_results_by_machine.json").read_text())
    expected = by_machine["machines"].get(cpu_identity()) or json.loads(
        (FIXTURES / "ll_cp_runlocal_results.json").read_text()
    )
    keys = (
        "test_map", "val_map", "best_epoch", "best_val_map", "train_selection_precision",
        "train_selection_recall", "train_false_negative_loss", "run_id", "final_step",
    )  # fmt: skip
    assert {k: results[k] for k in keys} == {k: expected[k] for k in keys}
