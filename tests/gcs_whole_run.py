"""A whole run on `gs://`, against the emulator.

`gcs_emulator.run(this, ROOT, google_endpoints=True)`.

Every path the commands are given is in the bucket: the data dir (prepared there, with a
pre-resized store), `init_from`, the workdirs (checkpoints, TensorBoard events, results)
and the report. One run goes through uninterrupted; the other is stopped by SIGTERM (a
preemption notice), then killed by SIGKILL, and resumed each time; both must end with the
same parameters bit for bit. Every command runs with ROOT (an empty local directory) as its
working directory, HOME and TMPDIR, and ROOT must stay empty after each: no file of the run
lands on local disk (the preparation stages its ArrayRecord files there and removes them).
Prints `ok` when every assertion holds.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

BUCKET = "bucket"
DATA, WEIGHTS = f"gs://{BUCKET}/data", f"gs://{BUCKET}/weights/donor.npz"
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "digits.py")
STEPS = 4 * 15  # 4 epochs of 240 train examples at batch 16.


def _environment(root: str) -> dict[str, str]:
    return dict(os.environ, JAX_PLATFORMS="cpu", HOME=root, TMPDIR=root)


def _python(root: str, *args: str, timeout: float = 600) -> None:
    finished = subprocess.run([sys.executable, *args], cwd=root, env=_environment(root),
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert finished.returncode == 0, (args, finished.stderr[-4000:])


def _train(workdir: str) -> list[str]:
    return [
        "-m", "lln_jax.main", f"--config={os.path.abspath(CONFIG)}:scheme=ll_cp,runlocal",
        f"--config.data.data_dir={DATA}", "--config.data.storage=jpeg95",
        f"--config.init_from={WEIGHTS}", "--config.num_epochs=4",
        "--config.checkpoint.every_steps=4", f"--workdir={workdir}",
    ]  # fmt: skip


def _objects(prefix: str) -> list[str]:
    from google.cloud import storage

    return [blob.name for blob in storage.Client().bucket(BUCKET).list_blobs(prefix=prefix)]


def _committed(workdir: str, step: int) -> bool:
    """Whether orbax finished the save of `step` (its marker object is written last)."""
    name = workdir.removeprefix(f"gs://{BUCKET}/") + f"/checkpoints/latest/{step}/"
    return any(o.endswith("commit_success.txt") for o in _objects(name) if o.count("/") == 4)


def _start_and_wait_for(root: str, workdir: str, step: int, log) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, *_train(workdir)], cwd=root,
                               env=_environment(root), stdout=subprocess.DEVNULL,
                               stderr=log)  # fmt: skip
    deadline = time.time() + 400
    while not _committed(workdir, step):
        assert process.poll() is None and time.time() < deadline, "the run ended too soon"
        time.sleep(0.2)
    return process


def _donor_weights() -> None:
    """ImageNet-style weights for `init_from`, written to the bucket by the project's saver."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lln_jax import models
    from lln_jax.models import pretrained

    model = models.create("resnet_tiny", num_classes=10)
    variables = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 32, 32, 3)), train=False)
    pretrained.save(jax.tree.map(np.asarray, variables), WEIGHTS)


def _interrupted_run(root: str, workdir: str) -> None:
    """SIGTERM after the save of step 16, SIGKILL after that of step 36, then to the end."""
    with tempfile.TemporaryFile("w+") as log:  # Outside ROOT: the test's, not the run's.
        process = _start_and_wait_for(root, workdir, 16, log)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=180) == 75  # "Stopped after a checkpoint: rerun."
        log.seek(0)
        said = log.read().splitlines()[-2:]
    assert said[0].startswith("lln_jax.main: SIGTERM: stopped at step "), said
    assert said[0].endswith(f"is in {workdir}/checkpoints/latest."), said
    assert said[1].endswith(f"--workdir={workdir}"), said
    assert not _objects(workdir.removeprefix(f"gs://{BUCKET}/") + "/results.json")
    assert not _local_files(root), _local_files(root)
    with open(os.devnull, "w") as log:
        process = _start_and_wait_for(root, workdir, 36, log)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    # TensorFlow's GCS client buffers a file open for writing (the TensorBoard events) in a
    # local temporary file, removed at close: a killed process leaves it behind, and only it.
    left_by_kill = _local_files(root)
    assert all(name.startswith("tmp_file_tensorflow_") for name in left_by_kill), left_by_kill
    for name in left_by_kill:
        os.remove(os.path.join(root, name))
    # The newest save made unreadable: the resume moves it aside on the bucket (which has no
    # directory rename) and resumes from the one before, to the same end.
    prefix = workdir.removeprefix(f"gs://{BUCKET}/") + "/checkpoints/"
    newest = max(int(o.split("/")[-3]) for o in _objects(prefix + "latest/")
                 if o.endswith("/record/metadata"))  # fmt: skip
    from google.cloud import storage

    storage.Client().bucket(BUCKET).blob(f"{prefix}latest/{newest}/record/metadata").delete()
    _python(root, *_train(workdir))
    assert _objects(f"{prefix}quarantine/latest-{newest}-"), f"step {newest} not moved aside"


def _final_state(workdir: str):
    import orbax.checkpoint as ocp

    from lln_jax.run import checkpointing

    checkpointer = checkpointing.Checkpointer(f"{workdir}/checkpoints")
    step = checkpointer.latest_step()
    checkpointer.close()
    state = ocp.StandardCheckpointer().restore(f"{workdir}/checkpoints/latest/{step}/state")
    return step, state


def _scalars(workdir: str) -> dict[str, list[float]]:
    """Every scalar of the workdir's TensorBoard event files, read back from the bucket."""
    import tensorflow as tf

    values: dict[str, list[float]] = {}
    for path in sorted(tf.io.gfile.glob(f"{workdir}/events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values.setdefault(value.tag, []).append(float(tf.make_ndarray(value.tensor)))
    return values


def _check_the_runs_agree(whole: str, killed: str) -> None:
    import chex
    import tensorflow as tf

    (whole_step, whole_state), (killed_step, killed_state) = map(_final_state, (whole, killed))
    assert whole_step == killed_step == STEPS, (whole_step, killed_step)
    chex.assert_trees_all_equal(killed_state, whole_state)  # LL-Cp's table too.
    results = [json.loads(tf.io.gfile.GFile(f"{w}/results.json").read()) for w in (whole, killed)]
    for key in ("val_map", "test_map", "train_selection_precision", "train_selection_recall"):
        assert results[0][key] == results[1][key], key
    for workdir, result in zip((whole, killed), results, strict=True):
        scalars = _scalars(workdir)
        (test_map,) = scalars["test/map"]  # Written as float32.
        assert abs(test_map - result["test_map"]) < 1e-4, (test_map, result["test_map"])
        assert len(scalars["val/map"]) >= 4 and "train/loss" in scalars


def _report(root: str, whole: str, killed: str) -> None:
    import tensorflow as tf

    out = f"gs://{BUCKET}/report"
    _python(root, "-m", "lln_jax.report", whole, killed, f"--out={out}")
    (row,) = json.loads(tf.io.gfile.GFile(f"{out}/report.json").read())["rows"]
    assert row["scheme"] == "ll_cp" and sorted(row["runs"]) == sorted([killed, whole]), row
    written = set(tf.io.gfile.listdir(out))
    assert {"report.md", "report.csv", "report.json", "val_map_digit_mosaics_small.png"} <= (
        written
    ), written


# What the libraries keep in HOME whatever the run (matplotlib's font list, Keras's settings,
# written at import): on a VM they are there before the first run; not files of the run.
TOOL_CACHES = (".cache/matplotlib/", ".keras/")


def _local_files(root: str) -> list[str]:
    paths = [os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs]
    return [path for path in paths if not path.startswith(TOOL_CACHES)]


def main(root: str) -> None:
    assert not os.listdir(root), f"{root} is not empty"
    _python(root, "-m", "lln_jax.prepare", "digit_mosaics_small", f"--data_dir={DATA}",
            "--image_size=32")  # fmt: skip
    _donor_weights()
    whole, killed = f"gs://{BUCKET}/whole", f"gs://{BUCKET}/killed"
    assert not _local_files(root), _local_files(root)
    _python(root, *_train(whole))
    assert not _local_files(root), _local_files(root)
    _interrupted_run(root, killed)
    _check_the_runs_agree(whole, killed)
    _report(root, whole, killed)
    assert not _local_files(root), f"files of the run on local disk: {_local_files(root)}"
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1])
