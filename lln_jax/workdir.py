"""What a workdir holds and whether a run may continue in it.

`config.json` (written by process 0), `results.json` of a finished run, and the config inside
every checkpoint's record. A run resumes only with the config it was started with, compared
against the checkpoint's own copy (so a lost or edited `config.json` cannot mix two configs),
up to `RESUMABLE_CHANGES`, settings that do not change what is computed. Every path goes
through `etils.epath`, so a `gs://` workdir works the same way.
"""

import json
from typing import Any

import jax
import ml_collections
from etils import epath

# Settings a resumed run may change: they do not change what is computed.
RESUMABLE_CHANGES = (
    "log_every_steps", "data.num_threads", "data.num_workers", "data.data_dir", "checkpoint.",
)  # fmt: skip


class ConfigMismatchError(ValueError):
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
    except json.JSONDecodeError as error:
        message = f"{path} is not valid JSON ({error}); move it away or repair it"
        raise ValueError(message) from error


def check_same_config(saved: dict[str, Any], config: ml_collections.ConfigDict, source: str):
    """Raises `ConfigMismatchError` listing what differs between `saved` and `config`."""
    saved_flat, current = flat(saved), flat(config)
    differences = sorted(
        key
        for key in set(saved_flat) | set(current)
        if saved_flat.get(key) != current.get(key) and not key.startswith(RESUMABLE_CHANGES)
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
        path.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")


def finished_results(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
    """The stored results of a finished run of `config` in `workdir`, or None."""
    path = epath.Path(workdir) / "results.json"
    if not path.exists():
        return None
    results = read_json(path)
    check_same_config(results.get("config", {}), config, str(path))
    return results


def write_results(results: dict[str, Any], workdir: str) -> None:
    if jax.process_index() == 0:
        (epath.Path(workdir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
