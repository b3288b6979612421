"""The TPU walk-through on a fake slice of two workers (`pod_rehearsal.py`)."""

import os
import pathlib
import shutil
import subprocess
import sys

import fake_gcloud
import gcs_emulator
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = pathlib.Path(__file__).with_name("pod_rehearsal.py")
UV = str(pathlib.Path(sys.executable).with_name("uv"))


def _committed_copy(target: pathlib.Path) -> pathlib.Path:
    """This tree's files (tracked, or new and not ignored) as one commit: what `create` uploads."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "--cached", "--others",
                            "--exclude-standard", "-z"], check=True, capture_output=True,
                           text=True).stdout.split("\0")  # fmt: skip
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    git = ["git", "-C", str(target), "-c", "user.name=lln", "-c", "user.email=lln@example.com"]
    subprocess.run(["git", "init", "-q", str(target)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "the rehearsed tree"], check=True)
    return target


def _image_cache(cache: pathlib.Path, checkout: pathlib.Path, scratch: pathlib.Path) -> None:
    """uv's cache as a VM image would hold it: the lock `setup.sh tpu` installs, and the
    package's build, fetched here from the package registry (the namespace has no network)."""
    environment = dict(os.environ, UV_CACHE_DIR=str(cache))
    python = scratch / "bin" / "python"
    into = ["--quiet", "--python", str(python)]
    for command in (
        [UV, "venv", "--quiet", "--python", "3.11", str(scratch)],
        [UV, "pip", "sync", *into, str(ROOT / "launch/locks/tpu.txt")],
        [UV, "pip", "install", *into, "--no-deps", "-e", str(checkout)],
    ):
        subprocess.run(command, check=True, env=environment, timeout=900)
    shutil.rmtree(scratch)


@pytest.mark.slow  # A 2-process training run, started four times: minutes.
@pytest.mark.parametrize("mode", ["vm", "queued"])
def test_the_tpu_walk_through_on_a_fake_slice_of_two_workers(tmp_path, mode):
    checkout = _committed_copy(tmp_path / "checkout")
    _image_cache(tmp_path / "uv-cache", checkout, tmp_path / "scratch")
    fake_dir = tmp_path / "gcloud"
    fake_gcloud.install(fake_dir, uv=UV, uv_cache=str(tmp_path / "uv-cache"))
    finished = gcs_emulator.run(str(SCRIPT), str(fake_dir), str(checkout), mode, timeout=2400,
                                google_endpoints=True)  # fmt: skip
    assert finished.returncode == 0, finished.stdout[-10000:]
    assert finished.stdout.rstrip().endswith("ok"), finished.stdout[-10000:]
