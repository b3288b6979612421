"""The table's work count (`benchmarks/table_time.py`), by hand for one cell and in all."""

import importlib.util
import subprocess
import sys

from conftest import CONFIG_DIR, load_config

SCRIPT = CONFIG_DIR.parent / "benchmarks" / "table_time.py"


def _table_time():
    spec = importlib.util.spec_from_file_location("table_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_cell_counts_its_epochs_its_padding_and_its_evaluations():
    config = load_config("coco.py", "scheme=ll_r")
    train, evaluate = _table_time().cell_images(config)
    # COCO: 82,081 train rows, 65,665 after the 0.2 val cut, 16,416 val, 40,137 test.
    assert train == 10 * 4105 * 16  # 10 epochs of 4,105 batches of 16, the last padded.
    assert evaluate == 10 * 16416 + 40137
    # LinearInit's epochs count as well, at its own batch.
    config.linear_init.num_epochs = 1
    train_with_head, _ = _table_time().cell_images(config)
    assert train_with_head == train + 4105 * 16


def test_the_paper_table_on_a_v4_8():
    output = subprocess.run(
        [sys.executable, str(SCRIPT), "--chips=4", "--peak_tflops=275", "--images_per_s=1130"],
        capture_output=True, text=True, check=True, cwd=CONFIG_DIR.parent,
    ).stdout  # fmt: skip
    assert "144 cells: 69.0 M training and 21.3 M evaluation images" in output
    assert "4 chips at 1130 training images/s per chip: 4.7 h" in output
