"""A whole run with every path on gs://, against the real GCS emulator (`gcs_whole_run.py`)."""

import pathlib

import gcs_emulator
import pytest

SCRIPT = pathlib.Path(__file__).with_name("gcs_whole_run.py")


@pytest.mark.slow  # Three trainings, a preparation and a report: minutes.
def test_a_whole_run_on_gs_resumes_bit_exact_and_leaves_nothing_on_local_disk(tmp_path):
    root = tmp_path / "local"
    root.mkdir()
    finished = gcs_emulator.run(str(SCRIPT), str(root), timeout=1800, google_endpoints=True)
    assert finished.returncode == 0, finished.stdout[-8000:]
    assert finished.stdout.rstrip().endswith("ok"), finished.stdout[-8000:]
