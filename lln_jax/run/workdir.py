"""What a workdir holds and whether a run may continue in it.

`config.json` (written by process 0), `results.json` of a finished run, and the config inside
every checkpoint's record. A run resumes only with the config it was started with, compared
against the checkpoint's own copy (so a lost or edited `config.json` cannot mix two configs),
up to `RESUMABLE_CHANGES`, settings that do not change what is computed. Every JSON file is
written atomically (`atomic_write`): a crash mid-write leaves the old file or the new one.
A `results.json` that does not parse anyway (written by hand, or by an older version) is
moved aside and the test is redone from the checkpoints. Every path goes through
`etils.epath`, so a `gs://` workdir works the same way.
"""

import hashlib
import json
import os
import socket
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from lln_jax.run.atomic_write import write_atomic

# Settings a resumed run may change: they do not change what is computed.
RESUMABLE_CHANGES = (
    "log_every_steps", "data.num_threads", "data.num_workers", "data.data_dir", "checkpoint.",
)  # fmt: skip


class WorkdirError(ValueError):
    """The workdir cannot hold a run: not a directory, not writable, or a file unreadable."""


class ConfigMismatchError(WorkdirError):
    """The workdir holds a run of another config."""


def flat(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """`{"a.b": value}` of a config or of its JSON form."""
    tree = config if isinstance(config, dict) else json.loads(config.to_json_best_effort())

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from walk(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    return dict(walk(tree, ""))


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def read_json(path: epath.Path) -> dict[str, Any]:
    """A JSON file of the workdir; a file that does not parse is an error naming it."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        message = f"{path} is not valid JSON ({error}); move it away or repair it"
        raise WorkdirError(message) from error


def _resumable(key: str) -> bool:
    return key.startswith(RESUMABLE_CHANGES)


def config_digest(config: ml_collections.ConfigDict | dict) -> str:
    """sha256 of the settings that decide what a run computes (not `RESUMABLE_CHANGES`)."""
    computed = {key: value for key, value in flat(config).items() if not _resumable(key)}
    return hashlib.sha256(json.dumps(computed, sort_keys=True).encode()).hexdigest()


def check_same_config(saved: dict[str, Any], config: ml_collections.ConfigDict, source: str):
    """Raises `ConfigMismatchError` listing what differs between `saved` and `config`."""
    saved_flat, current = flat(saved), flat(config)
    differences = sorted(
        key
        for key in set(saved_flat) | set(current)
        if saved_flat.get(key) != current.get(key) and not _resumable(key)
    )
    if differences:
        details = ", ".join(
            f"{k}: {saved_flat.get(k)!r} -> {current.get(k)!r}" for k in differences
        )
        raise ConfigMismatchError(
            f"{source} holds a run of a different config ({details}); "
            "use another --workdir or the same config"
        )


def check_config_file(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Compares `config` with `WORKDIR/config.json` where there is one."""
    path = epath.Path(workdir) / "config.json"
    if path.exists():
        check_same_config(read_json(path), config, str(path))


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() == 0:
        path = epath.Path(workdir) / "config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """The stored results of a finished run of `config` in `workdir`, or None.

    A `results.json` that does not parse is moved aside (`results.json.unreadable-<time>`),
    and None is returned: the run's checkpoints then redo the test.
    """
    path = epath.Path(workdir) / "results.json"
    if not path.exists():
        return None
    try:
        results = read_json(path)
    except WorkdirError as error:
        aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}")
        logging.error("%s; moved to %s, the test is redone from the checkpoints", error, aside)
        if jax.process_index() == 0:
            path.rename(aside)
        return None
    check_same_config(results.get("config", {}), config, str(path))
    return results


def write_results(results: dict[str, Any], workdir: str) -> None:
    if jax.process_index() == 0:
        write_atomic(epath.Path(workdir) / "results.json", json.dumps(results, indent=2) + "\n")


def check_usable(workdir: str) -> None:
    """Refuses a workdir that is a file or cannot be written, before any heavy work.

    Raises:
      WorkdirError: naming the path and what is wrong with it.
    """
    path = epath.Path(workdir)
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory")
    probe = path / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(probe, "")
        probe.unlink()
    except OSError as error:
        raise WorkdirError(f"--workdir={workdir} cannot be written ({error})") from error
