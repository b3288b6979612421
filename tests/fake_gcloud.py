"""A behavioural `gcloud` for the pod rehearsal: TPU VMs whose workers are local processes.

`install(directory, ...)` writes a `gcloud` executable into `directory/bin` that runs this
module. It keeps each TPU VM's state in `directory/state.json` (under a lock) and does what
`launch/` asks of gcloud:

- `compute tpus tpu-vm create|describe|delete`: a VM is CREATING while `create` runs (gcloud
  waits for the operation), then READY; `preempt()` makes it PREEMPTED (its workers'
  processes killed), `delete` makes it NOT_FOUND (`describe` then fails as gcloud does).
  A v4-N has N/8 workers.
- `compute tpus tpu-vm ssh NAME --worker=all --command=CMD`: runs `bash -c CMD` once per
  worker, all at once, each in a home of its own (the VM's disk: lost with the VM), with the
  worker's environment: its host name, and the peers of a multi-process JAX job
  (`LLN_COORDINATOR`, `LLN_NUM_PROCESSES`, `LLN_PROCESS_ID`; JAX finds them by itself on a
  real TPU VM). Fails with gcloud's exit code 255 on a VM that is not READY, and while
  `fail_ssh()` says so. The image holds uv and its cache (`UV_CACHE_DIR`, offline): the
  namespace has no network, and setup.sh installs the lock from that cache.
- `storage cat|cp` against the GCS emulator (google-cloud-storage, `STORAGE_EMULATOR_HOST`).

Anything else is refused with exit 2, so that a call the fake does not know cannot pass.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

STATE = "state.json"


def install(directory: pathlib.Path, *, uv: str, uv_cache: str, devices_per_worker: int = 2) -> str:
    """Writes `directory/bin/gcloud` (and `hostname`); returns the bin directory. The VMs'
    image holds `uv` in `~/.local/bin` and uv's cache `uv_cache`."""
    bin_dir = directory / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (directory / STATE).write_text(json.dumps({"vms": {}, "fail_ssh": 0}))
    settings = {"uv": uv, "uv_cache": uv_cache, "devices_per_worker": devices_per_worker}
    (directory / "settings.json").write_text(json.dumps(settings))
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} {__file__} {directory} "$@"\n')
    hostname = bin_dir / "hostname"  # A worker's host name is its own, as on a TPU VM.
    hostname.write_text('#!/usr/bin/env bash\necho "${FAKE_HOSTNAME:-localhost}"\n')
    for script in (gcloud, hostname):
        script.chmod(0o755)
    return str(bin_dir)


@contextlib.contextmanager
def _state(directory: pathlib.Path):
    with open(directory / f"{STATE}.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        state = json.loads((directory / STATE).read_text())
        yield state
        (directory / STATE).write_text(json.dumps(state))


def _options(args: list[str]) -> tuple[list[str], dict[str, str]]:
    positional, options = [], {}
    for arg in args:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            options[key] = value
        else:
            positional.append(arg)
    return positional, options


def _workers_of(accelerator: str) -> int:
    generation, _, cores = accelerator.partition("-")
    if generation != "v4" or not cores.isdigit() or int(cores) % 8:
        raise SystemExit(f"fake gcloud: accelerator {accelerator!r} is not a v4-8k")
    return int(cores) // 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_of(vm_id: str) -> list[int]:
    """The pids whose environment says they run on a worker of VM `vm_id`."""
    mark = f"FAKE_VM_ID={vm_id}".encode()
    pids = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
    return pids


def _kill_workers(vm: dict) -> None:
    for pid in _processes_of(vm["id"]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _delete(directory: pathlib.Path, state: dict, name: str) -> None:
    """The VM's processes killed, its disks gone."""
    vm = state["vms"].pop(name)
    _kill_workers(vm)
    shutil.rmtree(directory / "disks" / vm["id"], ignore_errors=True)


def delete_all(directory: pathlib.Path) -> None:
    with _state(directory) as state:
        for name in list(state["vms"]):
            _delete(directory, state, name)


def _not_found(name: str) -> int:
    print(f"ERROR: (gcloud.compute.tpus.tpu-vm) NOT_FOUND: Resource 'nodes/{name}' was not "
          "found", file=sys.stderr)  # fmt: skip
    return 1


def _tpu_vm(directory: pathlib.Path, verb: str, args: list[str]) -> int:
    (name, *_), options = _options(args)
    with _state(directory) as state:
        vm = state["vms"].get(name)
        if verb == "create":
            if vm is not None:
                print(f"ERROR: ALREADY_EXISTS: nodes/{name}", file=sys.stderr)
                return 1
            state["vms"][name] = {
                "id": f"{name}-{time.time_ns()}", "state": "CREATING",
                "accelerator": options["accelerator-type"], "version": options["version"],
                "spot": "spot" in options, "port": _free_port(),
                "workers": _workers_of(options["accelerator-type"]),
            }  # fmt: skip
    if verb == "create":  # gcloud waits for the operation: CREATING meanwhile, then READY.
        time.sleep(1)
        with _state(directory) as state:
            state["vms"][name]["state"] = "READY"
        return 0
    with _state(directory) as state:
        vm = state["vms"].get(name)
        if vm is None:
            return _not_found(name)
        if verb == "describe":
            fields = options.get("format", "value(state)").removeprefix("value(").rstrip(")")
            health = {"state": vm["state"], "health": "HEALTHY"}
            print("\t".join(health[field] for field in fields.split(",")))
            return 0
        if verb == "delete":
            _delete(directory, state, name)
            return 0
        if verb != "ssh":
            raise SystemExit(f"fake gcloud: tpu-vm {verb} is not known")
        if vm["state"] != "READY" or state["fail_ssh"] > 0:
            state["fail_ssh"] = max(state["fail_ssh"] - 1, 0)
            print(f"ssh: connect to host {name}: Connection timed out", file=sys.stderr)
            return 255
    return _ssh(directory, vm, options)


def _worker_environment(directory: pathlib.Path, vm: dict, worker: int) -> dict[str, str]:
    settings = json.loads((directory / "settings.json").read_text())
    home = directory / "disks" / vm["id"] / f"worker-{worker}"
    if not home.exists():  # A new disk, from the image.
        (home / ".local" / "bin").mkdir(parents=True)
        (home / ".local" / "bin" / "uv").symlink_to(settings["uv"])
    flags = f"--xla_force_host_platform_device_count={settings['devices_per_worker']}"
    return dict(
        os.environ, HOME=str(home), FAKE_HOSTNAME=f"{vm['id']}-w-{worker}",
        FAKE_VM_ID=vm["id"], JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
        LLN_COORDINATOR=f"127.0.0.1:{vm['port']}", LLN_NUM_PROCESSES=str(vm["workers"]),
        LLN_PROCESS_ID=str(worker), LLN_HEARTBEAT_TIMEOUT_S="30",
        UV_CACHE_DIR=settings["uv_cache"], UV_OFFLINE="1",
    )  # fmt: skip


def _ssh(directory: pathlib.Path, vm: dict, options: dict[str, str]) -> int:
    if options.get("worker") != "all" or "command" not in options:
        raise SystemExit(f"fake gcloud: ssh with {options}: give --worker=all --command=...")
    workers = []
    for worker in range(vm["workers"]):
        environment = _worker_environment(directory, vm, worker)
        workers.append(subprocess.Popen(["bash", "-c", options["command"]],
                                        cwd=environment["HOME"], env=environment))  # fmt: skip
    codes = [worker.wait() for worker in workers]
    return next((code for code in codes if code), 0)


def _blob(url: str):
    from google.cloud import storage

    bucket, _, name = url.removeprefix("gs://").partition("/")
    return storage.Client().bucket(bucket).blob(name)


def _storage(verb: str, args: list[str]) -> int:
    from google.api_core import exceptions

    paths, _ = _options(args)
    try:
        if verb == "cat":
            sys.stdout.buffer.write(_blob(paths[0]).download_as_bytes())
            return 0
        if verb == "cp":
            source, target = paths
            if target.startswith("gs://"):
                local = sys.stdin.buffer if source == "-" else open(source, "rb")  # noqa: SIM115
                with local:
                    _blob(target).upload_from_string(local.read())
            else:
                _blob(source).download_to_filename(target)
            return 0
    except exceptions.NotFound:
        print(f"ERROR: (gcloud.storage.{verb}) The following URLs matched no objects or "
              f"files: {paths[0]}", file=sys.stderr)  # fmt: skip
        return 1
    raise SystemExit(f"fake gcloud: storage {verb} is not known")


def preempt(directory: pathlib.Path, name: str) -> None:
    """What a spot VM's preemption does: every worker's processes die, the VM is PREEMPTED."""
    with _state(directory) as state:
        vm = state["vms"][name]
        _kill_workers(vm)
        vm["state"] = "PREEMPTED"


def fail_ssh(directory: pathlib.Path, times: int) -> None:
    """The next `times` ssh calls fail as a dropped connection does."""
    with _state(directory) as state:
        state["fail_ssh"] = times


def main(directory: pathlib.Path, args: list[str]) -> int:
    if args[:3] == ["compute", "tpus", "tpu-vm"] and len(args) > 3:
        return _tpu_vm(directory, args[3], args[4:])
    if args[:1] == ["storage"] and len(args) > 1:
        return _storage(args[1], args[2:])
    print(f"fake gcloud: {' '.join(args)}: not a call launch/ makes", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1]), sys.argv[2:]))
