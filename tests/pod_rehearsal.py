"""The README's TPU walk-through run for real, on a fake slice: `launch/tpu.sh` drives the
behavioural `gcloud` of `fake_gcloud.py`, whose two workers run a real 2-process JAX job,
against the GCS emulator (`gcs_emulator.run(this, FAKE_DIR, CHECKOUT, vm|queued,
google_endpoints=True)`).

create, setup (the commit's lock installed by uv into each worker's venv), run (after an ssh
that fails), status, a preemption (the workers killed, the VM PREEMPTED), recover (delete,
re-create, set up, re-run: the run resumes from its gs:// workdir), a second run refused
while one is live, stop (SIGTERM: the workers save and exit 75), run again to the end,
delete, and recover of a VM already gone. `queued`: the same on a queued resource, whose
startup script sets up and runs at every boot. Prints `ok` when every assertion holds.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import fake_gcloud

BUCKET, NAME = "gs://bucket", "lln-rehearsal"
WORKDIR = f"{BUCKET}/runs/{NAME}"
COMMON = ["--bucket", BUCKET, "--name", NAME, "--zone", "us-central2-b"]
CONFIG = ["--config", "configs/digits.py:scheme=ll_cp,runlocal"]
EXTRA = ["--", "--config.num_epochs=4", "--config.checkpoint.every_steps=4"]
STEPS = 4 * 15


def _tpu(checkout: pathlib.Path, bin_dir: str, *args: str, timeout: float = 600):
    environment = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
    finished = subprocess.run(["bash", "launch/tpu.sh", *args], cwd=checkout, env=environment,
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
    return finished.returncode, finished.stdout + finished.stderr


def _ok(checkout, bin_dir, *args: str) -> str:
    code, said = _tpu(checkout, bin_dir, *args)
    assert code == 0, (args, said[-6000:])
    return said


def _objects(prefix: str) -> list[str]:
    from google.cloud import storage

    bucket, _, name = prefix.removeprefix("gs://").partition("/")
    return [blob.name for blob in storage.Client().bucket(bucket).list_blobs(prefix=name)]


def _read(url: str) -> str:
    from google.cloud import storage

    bucket, _, name = url.removeprefix("gs://").partition("/")
    return storage.Client().bucket(bucket).blob(name).download_as_text()


def _saved_steps() -> list[int]:
    names = _objects(f"{WORKDIR}/checkpoints/latest/")
    return sorted(int(n.split("/")[-2]) for n in names if n.endswith("/commit_success.txt")
                  and n.count("/") == 5)  # fmt: skip


def _wait_for(condition, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"waited {timeout} s for {what}"
        time.sleep(1)


def _prepare_bucket() -> None:
    """What `tpu.sh prepare`'s VM leaves in the bucket: the data set and the weights file."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from lln_jax import models
    from lln_jax.models import pretrained

    subprocess.run([sys.executable, "-m", "lln_jax.prepare", "digit_mosaics_small",
                    f"--data_dir={BUCKET}/tfds"], check=True, capture_output=True)  # fmt: skip
    model = models.create("resnet_tiny", num_classes=10)
    variables = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 32, 32, 3)), train=False)
    weights = f"{BUCKET}/weights/resnet50_imagenet1k_v1.npz"  # The name `run` passes.
    pretrained.save(jax.tree.map(np.asarray, variables), weights)


def _vm_state(fake_dir: pathlib.Path) -> str | None:
    vm = json.loads((fake_dir / fake_gcloud.STATE).read_text())["vms"].get(NAME)
    return None if vm is None else vm["state"]


def _queued_state(fake_dir: pathlib.Path) -> str | None:
    queued = json.loads((fake_dir / fake_gcloud.STATE).read_text())["queued"].get(NAME)
    return None if queued is None else queued["state"]


def _rehearse_queued(fake_dir: pathlib.Path, checkout: pathlib.Path) -> None:
    """The same run on a queued resource: its startup script sets up and starts the run at
    every boot, as root; stop and run reach that install through sudo."""
    bin_dir = str(fake_dir / "bin")
    queued = [*COMMON, "--queued"]
    _ok(checkout, bin_dir, "create", *queued, "--accelerator", "v4-16", "--pricing", "spot",
        "--no-plan", *CONFIG, *EXTRA)  # fmt: skip
    _wait_for(lambda: _queued_state(fake_dir) == "ACTIVE", "the queued resource")
    _wait_for(lambda: any(step >= 16 for step in _saved_steps()), "the save of step 16")
    said = _ok(checkout, bin_dir, "status", *queued)
    assert "ACTIVE" in said and "READY\tHEALTHY" in said, said
    assert said.count("==> /var/log/lln_jax/startup-") == 2, said  # Both workers' logs.
    fake_gcloud.preempt(fake_dir, NAME)
    assert _queued_state(fake_dir) == "SUSPENDED"
    preempted_at = max(_saved_steps())
    _ok(checkout, bin_dir, "recover", *queued, *CONFIG, *EXTRA)  # Its boot resumes the run.
    _wait_for(lambda: max(_saved_steps()) >= preempted_at + 8, "the resumed run's saves")
    code, said = _tpu(checkout, bin_dir, "run", *queued, *CONFIG, *EXTRA)
    assert code != 0 and said.count("already runs lln_jax") == 2, said
    said = _ok(checkout, bin_dir, "stop", *queued)
    assert said.count("saved and exited") == 2, said
    assert max(_saved_steps()) < STEPS and not _objects(f"{WORKDIR}/results.json")
    _ok(checkout, bin_dir, "run", *queued, *CONFIG, *EXTRA)  # It resumes.
    _wait_for(lambda: bool(_objects(f"{WORKDIR}/results.json")), "the run's results")
    assert max(_saved_steps()) == STEPS
    assert len(_objects(f"{BUCKET}/launch/{NAME}/logs/")) >= 2
    _ok(checkout, bin_dir, "delete", *queued)
    assert _queued_state(fake_dir) is None and _vm_state(fake_dir) is None


def _print_worker_logs(fake_dir: pathlib.Path) -> None:
    """The last lines of every worker's logs (their disks go with the VMs)."""
    for log in sorted((fake_dir / "disks").glob("*/worker-*/*/**/*.log")):
        lines = [line for line in log.read_text(errors="replace").splitlines()
                 if "logging_writer" not in line]  # fmt: skip
        print(f"==> {log} <==", *lines[-15:], sep="\n")


def main(fake_dir: pathlib.Path, checkout: pathlib.Path, mode: str) -> None:
    _prepare_bucket()
    try:
        (_rehearse_queued if mode == "queued" else _rehearse)(fake_dir, checkout)
    except BaseException:
        _print_worker_logs(fake_dir)
        raise
    finally:  # Whatever failed, no worker outlives the rehearsal.
        fake_gcloud.delete_all(fake_dir)
    print("ok")


def _rehearse(fake_dir: pathlib.Path, checkout: pathlib.Path) -> None:
    bin_dir = str(fake_dir / "bin")
    _ok(checkout, bin_dir, "create", *COMMON, "--accelerator", "v4-16", "--pricing", "spot",
        "--no-plan")  # fmt: skip
    assert _vm_state(fake_dir) == "READY"
    _ok(checkout, bin_dir, "setup", *COMMON)
    # A dropped ssh fails the command, and says so; the same command again starts the run.
    fake_gcloud.fail_ssh(fake_dir, 1)
    code, said = _tpu(checkout, bin_dir, "run", *COMMON, *CONFIG, *EXTRA)
    assert code == 255 and "Connection timed out" in said, said
    said = _ok(checkout, bin_dir, "run", *COMMON, *CONFIG, *EXTRA)
    assert said.count("started on ") == 2, said
    _wait_for(lambda: any(step >= 16 for step in _saved_steps()), "the save of step 16")
    said = _ok(checkout, bin_dir, "status", *COMMON)
    assert "READY\tHEALTHY" in said, said
    # A spot preemption: the workers die mid-run; recover brings the same slice back.
    fake_gcloud.preempt(fake_dir, NAME)
    preempted_at = max(_saved_steps())
    said = _ok(checkout, bin_dir, "recover", *COMMON)
    assert _vm_state(fake_dir) == "READY" and said.count("started on ") == 2, said
    _wait_for(lambda: max(_saved_steps()) >= preempted_at + 8, "the resumed run's saves")
    code, said = _tpu(checkout, bin_dir, "run", *COMMON, *CONFIG, *EXTRA)
    assert code != 0 and said.count("already runs lln_jax") == 2, said
    code, said = _tpu(checkout, bin_dir, "recover", *COMMON)
    assert code == 2 and "nothing to recover" in said, said
    said = _ok(checkout, bin_dir, "stop", *COMMON)
    assert said.count("saved and exited") == 2, said
    assert _read(f"{BUCKET}/launch/{NAME}/state").strip() == "stopped"
    stopped_at = max(_saved_steps())
    assert stopped_at < STEPS and not _objects(f"{WORKDIR}/results.json")
    _ok(checkout, bin_dir, "run", *COMMON, *CONFIG, *EXTRA)  # It resumes.
    _wait_for(lambda: bool(_objects(f"{WORKDIR}/results.json")), "the run's results")
    results = json.loads(_read(f"{WORKDIR}/results.json"))
    assert max(_saved_steps()) == STEPS and len(results["val_map"]) == 4, results
    logs = _objects(f"{BUCKET}/launch/{NAME}/logs/")
    assert len(logs) >= 2, logs
    _ok(checkout, bin_dir, "delete", *COMMON)
    code, said = _tpu(checkout, bin_dir, "status", *COMMON)
    assert code != 0 and "NOT_FOUND" in said, said
    # Recovering a VM already gone re-creates it; the run it restarts finds itself finished.
    said = _ok(checkout, bin_dir, "recover", *COMMON)
    assert "is gone: re-creating it" in said, said
    assert results == json.loads(_read(f"{WORKDIR}/results.json"))  # Left as it was.
    _ok(checkout, bin_dir, "delete", *COMMON)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    main(pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3])
