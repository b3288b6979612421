"""`python -m lln_jax.main` refuses bad input with one line and exit code 2, before work."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "digits.py"


def _workdir_with_a_torn_config(tmp_path) -> list[str]:
    workdir = tmp_path / "torn"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"seed": 0, "data": {')
    return [f"--workdir={workdir}"]


def _read_only_workdir(tmp_path) -> list[str]:
    workdir = tmp_path / "read_only"
    workdir.mkdir()
    if os.geteuid() == 0:  # Permissions do not stop root: a read-only mount does.
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(workdir)],
                       check=True)  # fmt: skip
    else:
        workdir.chmod(0o555)
    return [f"--workdir={workdir}"]


def _noise_weights(tmp_path) -> list[str]:
    noise = tmp_path / "noise.npz"
    noise.write_bytes(os.urandom(4096))
    return [f"--config.init_from={noise}"]


def _file_as_workdir(tmp_path) -> list[str]:
    (tmp_path / "a_file").write_text("")
    return [f"--workdir={tmp_path / 'a_file'}"]


def _unprepared_data(tmp_path) -> list[str]:
    config = CONFIG.with_name("cub.py")
    return [f"--config={config}:scheme=ll_r,runlocal", f"--config.data.data_dir={tmp_path}"]


CASES = {
    "data set not prepared": (_unprepared_data, "is not prepared under"),
    "missing init_from": (lambda t: [f"--config.init_from={t / 'none.npz'}"], "does not exist"),
    "init_from of random bytes": (_noise_weights, "is not a .npz of weights"),
    "truncated config.json": (_workdir_with_a_torn_config, "config.json is not valid JSON"),
    "read-only workdir": (_read_only_workdir, "cannot be written"),
    "workdir is a regular file": (_file_as_workdir, "is a file, not a directory"),
    "sgd with adam's keys": (lambda t: ["--config.optim.name=sgd"], "optim.name='sgd' takes"),
    "image smaller than the stride": (lambda t: ["--config.data.image_size=3"], "image_size=3"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, case):
    make_arguments, expected = CASES[case]
    arguments = make_arguments(tmp_path)
    if not any(a.startswith("--workdir=") for a in arguments):
        arguments.append(f"--workdir={tmp_path / 'run'}")
    if not any(a.startswith("--config=") for a in arguments):
        arguments.insert(0, f"--config={CONFIG}:scheme=ll_r,runlocal")
    start = time.time()
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "lln_jax.main", *arguments],
            env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    finally:
        if case == "read-only workdir" and os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(tmp_path / "read_only")], check=True)
    said = finished.stderr[finished.stderr.find("lln_jax.main: ") :]
    assert finished.returncode == 2, finished.stderr
    assert said.startswith("lln_jax.main: ") and expected in said.splitlines()[0], said
    assert "Traceback" not in finished.stderr
    if case != "data set not prepared":  # Known only once the data is opened.
        assert len(said.splitlines()) == 1, said
        assert time.time() - start < 30  # Before TensorFlow or the data are touched.
    assert not (tmp_path / "run" / "checkpoints").exists()
