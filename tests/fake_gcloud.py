"""A behavioural `gcloud` for the pod rehearsal: TPU VMs whose workers are local processes.

`install(directory, ...)` writes a `gcloud` executable into `directory/bin` that runs this
module. It keeps each TPU VM's state in `directory/state.json` (under a lock) and does what
`launch/` asks of gcloud:

- `compute tpus tpu-vm create|describe|delete`: a VM is CREATING while `create` runs (gcloud
  waits for the operation), then READY; `preempt()` makes it PREEMPTED (its workers'
  processes killed), `delete` makes it NOT_FOUND (`describe` then fails as gcloud does).
  A v4-N has N/8 workers.
- `compute tpus tpu-vm ssh NAME --worker=all --command=CMD`: runs `bash -c CMD` once per
  worker, all at once, each inside the worker's own PID namespace (its processes are all
  the worker's `pgrep` sees, and die with the worker) and home (the VM's disk: lost with
  the VM), with the worker's environment: its host name, and the peers of a JAX job
  (`LLN_COORDINATOR`, `LLN_NUM_PROCESSES`, `LLN_PROCESS_ID`; JAX finds them by itself on a
  real TPU VM). Fails with gcloud's exit code 255 on a VM that is not READY, and while
  `fail_ssh()` says so. The image holds uv and its cache (`UV_CACHE_DIR`, offline): the
  namespace has no network, and setup.sh installs the lock from that cache.
- `compute tpus queued-resources create|describe|delete`: ACCEPTED, PROVISIONING, then
  ACTIVE with its node (a VM as above) READY, whose workers boot: each runs the startup
  script as root (`/root` and `/var/log` the worker's own), reading `lln-bucket` and
  `lln-name` from a metadata server of the node's (which also gives the VM's token, as
  GCE's does). A preemption makes it SUSPENDED.
- `storage cat|cp` against the GCS emulator (google-cloud-storage, `STORAGE_EMULATOR_HOST`).
- The image's `sudo`: everything here runs as root already.

Anything else is refused with exit 2, so that a call the fake does not know cannot pass.
"""

import contextlib
import fcntl
import json
import os
import pathlib
import shlex
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
    (directory / STATE).write_text(json.dumps({"vms": {}, "queued": {}, "fail_ssh": 0}))
    settings = {"uv": uv, "uv_cache": uv_cache, "devices_per_worker": devices_per_worker}
    (directory / "settings.json").write_text(json.dumps(settings))
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} {__file__} {directory} "$@"\n')
    hostname = bin_dir / "hostname"  # A worker's host name is its own, as on a TPU VM.
    hostname.write_text('#!/usr/bin/env bash\necho "${FAKE_HOSTNAME:-localhost}"\n')
    # The image's sudo: everything here runs as root already; its options change nothing.
    sudo = bin_dir / "sudo"
    sudo.write_text('#!/usr/bin/env bash\nwhile [[ "${1:-}" == -* ]]; do shift; done\n'
                    'exec "$@"\n')  # fmt: skip
    for script in (gcloud, hostname, sudo):
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


# What outlives this gcloud call (a worker's init, a boot, a metadata server): its own
# session, and none of the caller's pipes, which would keep the caller waiting.
_DETACHED = dict(start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)  # fmt: skip

# A worker's init: reaps every orphan (a finished run must not stay a zombie), forever.
_INIT = """import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


def _disk(directory: pathlib.Path, vm: dict, worker: int) -> pathlib.Path:
    return directory / "disks" / vm["id"] / f"worker-{worker}"


def _boot(directory: pathlib.Path, vm: dict, worker: int) -> int:
    """A worker's machine: a PID namespace (its own /proc, so that pgrep sees this worker's
    processes only) and a mount namespace where /root, /var/log (and, on a queued
    resource's node, /etc/hosts, naming the metadata server) are the worker's own, held by
    an init; returns the init's pid, which every ssh enters. Killing it kills every process
    of the worker, as losing the machine does."""
    settings = json.loads((directory / "settings.json").read_text())
    disk = _disk(directory, vm, worker)
    for home in ("home", "root"):  # The ssh user's home and root's, from the image.
        (disk / home / ".local" / "bin").mkdir(parents=True)
        (disk / home / ".local" / "bin" / "uv").symlink_to(settings["uv"])
    (disk / "varlog").mkdir()
    mounts = []
    if os.path.isdir("/root/.pyenv"):  # The image's Python lives in the real root's home.
        (disk / "root" / ".pyenv").mkdir()
        mounts.append(f"mount --bind /root/.pyenv {disk}/root/.pyenv")
    mounts += [f"mount --rbind {disk}/root /root", f"mount --bind {disk}/varlog /var/log"]
    if "metadata_ip" in vm:
        hosts = pathlib.Path("/etc/hosts").read_text()
        (disk / "hosts").write_text(f"{hosts}{vm['metadata_ip']} metadata.google.internal\n")
        mounts.append(f"mount --bind {disk}/hosts /etc/hosts")
    script = " && ".join([*mounts, f"exec {sys.executable} -c {shlex.quote(_INIT)}"])
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "bash", "-c",
                               script], **_DETACHED)  # fmt: skip
    children = pathlib.Path(f"/proc/{holder.pid}/task/{holder.pid}/children")
    for _ in range(500):
        init = children.read_text().split()
        if init and pathlib.Path(f"/proc/{init[0]}/cmdline").read_bytes().startswith(
            sys.executable.encode()
        ):
            return int(init[0])
        time.sleep(0.01)
    raise SystemExit(f"fake gcloud: worker {worker} did not boot")


def _new_vm(directory: pathlib.Path, state: dict, name: str, spec: dict) -> dict:
    """A VM of `spec` (accelerator, version, spot; metadata for a queued resource's node),
    its workers booted; CREATING."""
    vm = {"id": f"{name}-{time.time_ns()}", "state": "CREATING", "port": _free_port(),
          "workers": _workers_of(spec["accelerator"]), **spec}  # fmt: skip
    if "metadata" in spec:
        state["metadata_hosts"] = state.get("metadata_hosts", 0) + 1
        vm["metadata_ip"] = f"127.0.1.{state['metadata_hosts']}"
        serve = [sys.executable, __file__, str(directory), "--serve-metadata",
                 vm["metadata_ip"], json.dumps(spec["metadata"])]  # fmt: skip
        vm["metadata_server"] = subprocess.Popen(serve, **_DETACHED).pid
    vm["inits"] = [_boot(directory, vm, worker) for worker in range(vm["workers"])]
    state["vms"][name] = vm
    return vm


def _kill_workers(vm: dict) -> None:
    for init in vm["inits"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signal.SIGKILL)


def _delete(directory: pathlib.Path, state: dict, name: str) -> None:
    """The VM's processes killed, its disks gone."""
    vm = state["vms"].pop(name)
    _kill_workers(vm)
    if "metadata_server" in vm:
        with contextlib.suppress(ProcessLookupError):
            os.kill(vm["metadata_server"], signal.SIGKILL)
    shutil.rmtree(directory / "disks" / vm["id"], ignore_errors=True)


def delete_all(directory: pathlib.Path) -> None:
    with _state(directory) as state:
        for name in list(state["vms"]):
            _delete(directory, state, name)
        state["queued"] = {}


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
            spec = {"accelerator": options["accelerator-type"], "version": options["version"],
                    "spot": "spot" in options}  # fmt: skip
            _new_vm(directory, state, name, spec)
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
    home = _disk(directory, vm, worker) / "home"
    flags = f"--xla_force_host_platform_device_count={settings['devices_per_worker']}"
    return dict(
        os.environ, HOME=str(home), FAKE_HOSTNAME=f"{vm['id']}-w-{worker}",
        JAX_PLATFORMS="cpu", XLA_FLAGS=flags,
        LLN_COORDINATOR=f"127.0.0.1:{vm['port']}", LLN_NUM_PROCESSES=str(vm["workers"]),
        LLN_PROCESS_ID=str(worker), LLN_HEARTBEAT_TIMEOUT_S="30",
        UV_CACHE_DIR=settings["uv_cache"], UV_OFFLINE="1",
    )  # fmt: skip


def _ssh(directory: pathlib.Path, vm: dict, options: dict[str, str]) -> int:
    if options.get("worker") != "all" or "command" not in options:
        raise SystemExit(f"fake gcloud: ssh with {options}: give --worker=all --command=...")
    workers = []
    for worker, init in enumerate(vm["inits"]):
        environment = _worker_environment(directory, vm, worker)
        command = ["nsenter", f"--target={init}", "--pid", "--mount", "--", "bash", "-c",
                   options["command"]]  # fmt: skip
        workers.append(subprocess.Popen(command, cwd=environment["HOME"], env=environment))
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


def _queued(directory: pathlib.Path, verb: str, args: list[str]) -> int:
    (name, *_), options = _options(args)
    with _state(directory) as state:
        queued = state["queued"].get(name)
        if verb == "create":
            if queued is not None:
                print(f"ERROR: ALREADY_EXISTS: queuedResources/{name}", file=sys.stderr)
                return 1
            metadata = dict(item.split("=", 1) for item in options["metadata"].split(","))
            key, _, path = options["metadata-from-file"].partition("=")
            metadata[key] = pathlib.Path(path).read_text()
            state["queued"][name] = {
                "state": "ACCEPTED", "node": options["node-id"],
                "spec": {"accelerator": options["accelerator-type"],
                         "version": options["runtime-version"], "spot": "spot" in options,
                         "metadata": metadata},
            }  # fmt: skip
            subprocess.Popen([sys.executable, __file__, str(directory), "--provision", name],
                             **_DETACHED)  # fmt: skip
            return 0
        if queued is None:
            print(f"ERROR: (gcloud.compute.tpus.queued-resources) NOT_FOUND: "
                  f"queuedResources/{name}", file=sys.stderr)  # fmt: skip
            return 1
        if verb == "describe":
            print(queued["state"])
            return 0
        if verb == "delete":
            if queued["node"] in state["vms"]:
                _delete(directory, state, queued["node"])
            del state["queued"][name]
            return 0
    raise SystemExit(f"fake gcloud: queued-resources {verb} is not known")


def _provision(directory: pathlib.Path, name: str) -> None:
    """A queued resource's life: PROVISIONING, then ACTIVE with its node READY, whose every
    worker then boots: its startup script runs, as root."""
    time.sleep(0.5)
    with _state(directory) as state:
        state["queued"][name]["state"] = "PROVISIONING"
    time.sleep(0.5)
    with _state(directory) as state:
        queued = state["queued"].get(name)
        if queued is None:
            return
        vm = _new_vm(directory, state, queued["node"], queued["spec"])
        vm["state"], queued["state"] = "READY", "ACTIVE"
    script = queued["spec"]["metadata"]["startup-script"]
    for worker, init in enumerate(vm["inits"]):
        environment = _worker_environment(directory, vm, worker)
        del environment["HOME"]  # The startup script runs without one, and sets root's.
        subprocess.Popen(["nsenter", f"--target={init}", "--pid", "--mount", "--", "bash",
                          "-c", script], env=environment, cwd="/", **_DETACHED)  # fmt: skip


def _serve_metadata(address: str, attributes: dict[str, str]) -> None:
    """The node's metadata server: its attributes, and a token for the VM's account."""
    import http.server

    class Metadata(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            prefix = "/computeMetadata/v1/instance/"
            path = self.path.split("?")[0].removeprefix(prefix)
            body = None
            if self.headers.get("Metadata-Flavor") == "Google":
                if path.startswith("attributes/"):
                    body = attributes.get(path.removeprefix("attributes/"))
                elif path == "service-accounts/default/token":
                    body = json.dumps({"access_token": "emulator", "expires_in": 3600,
                                       "token_type": "Bearer"})  # fmt: skip
            self.send_response(404 if body is None else 200)
            self.send_header("Metadata-Flavor", "Google")
            self.end_headers()
            self.wfile.write((body or "").encode())

    http.server.ThreadingHTTPServer((address, 80), Metadata).serve_forever()


def preempt(directory: pathlib.Path, name: str) -> None:
    """What a spot slice's preemption does: every worker's processes die, the VM is
    PREEMPTED (and its queued resource, if it has one, SUSPENDED)."""
    with _state(directory) as state:
        for queued in state["queued"].values():
            if queued["node"] == name:
                queued["state"] = "SUSPENDED"
        vm = state["vms"][name]
        _kill_workers(vm)
        vm["state"] = "PREEMPTED"


def fail_ssh(directory: pathlib.Path, times: int) -> None:
    """The next `times` ssh calls fail as a dropped connection does."""
    with _state(directory) as state:
        state["fail_ssh"] = times


def main(directory: pathlib.Path, args: list[str]) -> int:
    if args[:1] == ["--provision"]:
        _provision(directory, args[1])
        return 0
    if args[:1] == ["--serve-metadata"]:
        _serve_metadata(args[1], json.loads(args[2]))
        return 0
    if args[:3] == ["compute", "tpus", "tpu-vm"] and len(args) > 3:
        return _tpu_vm(directory, args[3], args[4:])
    if args[:3] == ["compute", "tpus", "queued-resources"] and len(args) > 3:
        return _queued(directory, args[3], args[4:])
    if args[:1] == ["storage"] and len(args) > 1:
        return _storage(args[1], args[2:])
    print(f"fake gcloud: {' '.join(args)}: not a call launch/ makes", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(pathlib.Path(sys.argv[1]), sys.argv[2:]))
