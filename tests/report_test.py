"""The report: runs grouped, averaged over seeds, set beside the paper; local and gs://."""

import json
import pathlib
import re

import pytest
from etils import epath

from lln_jax.evaluation import report


def _run(root: pathlib.Path, name: str, *, data="coco2014", scheme="ll_r", labels="single_positive",
         alpha=1.0, seed=0, test_map=None, best_epoch=5):  # fmt: skip
    path = root / name
    path.mkdir(parents=True)
    config = {"seed": seed, "data": {"name": data, "label_setting": labels, "val_labels": "true"},
              "scheme": {"name": scheme}, "model": {"boost_alpha": alpha}}  # fmt: skip
    (path / "config.json").write_text(json.dumps(config))
    if test_map is not None:
        curve = [test_map - 3.0, test_map - 1.0, test_map]
        results = {"test_map": test_map, "best_epoch": best_epoch, "config": config,
                   "val_map": curve, "train_false_negative_loss": [0.1, 0.2, 0.3],
                   "train_true_negative_loss": [0.1, 0.08, 0.06],
                   "train_selection_precision": [None, 0.5, 0.6],
                   "train_selection_recall": [0.0, 0.1, 0.2]}  # fmt: skip
        (path / "results.json").write_text(json.dumps(results))
    return path


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _run(root, "coco_ll_r_0", seed=0, test_map=70.5, best_epoch=6)
    _run(root, "coco_ll_r_1", seed=1, test_map=71.5, best_epoch=7)
    _run(root, "coco_an_0", scheme="an", test_map=62.0)
    _run(root, "coco_ll_r_boost", alpha=5.0, test_map=72.5)
    _run(root, "coco_ll_cp_crashed", scheme="ll_cp")  # No results.json: it never finished.
    (root / "notes.txt").write_text("not a run")
    return root


def test_groups_seeds_paper_and_differences(runs, tmp_path):
    summary = report.write_report([str(runs)], str(tmp_path / "out"))
    rows = {(r["scheme"], r["head"]): r for r in summary["rows"]}
    ll_r = rows[("ll_r", "plain")]
    assert (ll_r["test_map_mean"], ll_r["test_map_std"]) == (71.0, 0.5)
    assert (ll_r["seeds"], ll_r["best_epochs"]) == ([0, 1], [6, 7])
    assert (ll_r["paper"], ll_r["authors_rerun"], ll_r["marked"]) == (71.0, 70.70, False)
    an = rows[("an", "plain")]
    assert an["paper"] == 64.1 and an["difference"] == pytest.approx(-2.1) and an["marked"]
    boosted = rows[("ll_r", "boostlu (alpha 5)")]
    assert boosted["paper"] == 72.89 and not boosted["marked"]
    assert [r["path"] for r in summary["incomplete"]] == [str(runs / "coco_ll_cp_crashed")]
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "| coco2014 | an | single_positive | plain | true | 62.00 ± 0.00 | 1 | 5 | 64.10 | - " \
           "| -2.10 **(>1)** |" in markdown  # fmt: skip
    assert "coco_ll_cp_crashed (coco2014, ll_cp)" in markdown
    csv_lines = (tmp_path / "out" / "report.csv").read_text().splitlines()
    assert csv_lines[0].startswith("data,scheme,labels,head,val_labels,test_map_mean")
    assert len(csv_lines) == 1 + 3
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(
        json.dumps({k: v for k, v in summary.items() if k != "figures"})
    )
    names = sorted(pathlib.Path(p).name for p in summary["figures"])
    assert names == [f"{kind}_coco2014.png" for kind in ("memorisation", "selection", "val_map")]
    for name in names:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gr_stands_beside_its_published_numbers(tmp_path):
    root = tmp_path / "runs"
    _run(root, "voc_gr", data="voc2012", scheme="gr", test_map=89.0)
    _run(root, "cub_gr", data="cub", scheme="gr", test_map=21.0)
    summary = report.write_report([str(root)], str(tmp_path / "out"))
    papers = {r["data"]: (r["paper"], r["marked"]) for r in summary["rows"]}
    assert papers == {"voc2012": (89.83, False), "cub": (21.64, False)}


def test_gs_run_dirs_and_output(runs, tmp_path, fake_gcs):
    (fake_gcs / "bucket").mkdir(parents=True)
    runs.rename(fake_gcs / "bucket" / "runs")
    summary = report.write_report(["gs://bucket/runs"], "gs://bucket/report")
    assert epath.Path("gs://bucket/report/report.md").exists()
    assert len(summary["rows"]) == 3
    assert summary["incomplete"][0]["path"] == "gs://bucket/runs/coco_ll_cp_crashed"
    assert (fake_gcs / "bucket" / "report" / "report.csv").exists()
    assert not (tmp_path / "gs:").exists()  # Nothing landed in a local directory named gs:.


def test_a_path_that_is_not_a_directory_is_named(runs, tmp_path):
    for path, why in ((runs / "notes.txt", ""), (runs / "missing", " (it does not exist)")):
        message = re.escape(f"{path} is not a run dir or a directory of run dirs{why}")
        with pytest.raises(NotADirectoryError, match=message):
            report.write_report([str(runs / "coco_an_0"), str(path)], str(tmp_path / "out"))


def test_an_unreadable_run_dir_is_listed_apart_with_the_reason(runs, tmp_path):
    (_run(runs, "coco_ll_ct_torn") / "config.json").write_text('{"seed": 0, "data": {')
    (_run(runs, "coco_ll_r_2", seed=2, test_map=90.0) / "results.json").write_text("{")
    summary = report.write_report([str(runs)], str(tmp_path / "out"))
    unreadable = {pathlib.Path(r["path"]).name: r["reason"] for r in summary["unreadable"]}
    assert sorted(unreadable) == ["coco_ll_ct_torn", "coco_ll_r_2"]
    assert unreadable["coco_ll_ct_torn"].startswith("config.json does not parse")
    assert unreadable["coco_ll_r_2"].startswith("results.json does not parse")
    ll_r = next(r for r in summary["rows"] if (r["scheme"], r["head"]) == ("ll_r", "plain"))
    assert ll_r["seeds"] == [0, 1]  # The torn seed 2 is not averaged.
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Unreadable run dirs" in markdown and "coco_ll_ct_torn: config.json" in markdown
