"""A thin wrapper over orbax: the latest state for resuming, the best-val state for testing.

Two managers under the workdir: `checkpoints/latest` (the newest few states, each with a JSON
record of the loop's bookkeeping) and `checkpoints/best` (the state with the best val mAP
so far). Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a run killed mid-save never leaves a half-written checkpoint that looks finished.

A checkpoint that fails to restore anyway (a truncated file, an emptied directory) is logged
with its error and moved aside into `checkpoints/quarantine/` (never deleted), and the next
older one is used.
"""

import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


def abstract_like(state: Any, sharding: jax.sharding.Sharding) -> Any:
    """Shapes, dtypes and the target sharding of every leaf: what `restore` fills."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def _options(root, name: str, max_to_keep: int, async_save: bool):
    # Each manager's multi-host barriers get their own key prefix: with one shared prefix,
    # a best-val save and a latest save at the same step collide ("Barrier ... is already
    # ongoing") when several processes save.
    prefix = f"{epath.Path(root).name}-{name}"
    return ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save,
        create=True,
        multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix),
    )


class Checkpointer:
    """Saves and restores `(state, record)` pairs; `record` is a JSON-able dict."""

    def __init__(self, directory: str, *, max_to_keep: int = 2, async_save: bool = True):
        root = pathlib.Path(directory).absolute() if "://" not in directory else directory
        self._root = epath.Path(root)
        self._latest = ocp.CheckpointManager(
            f"{root}/latest", options=_options(root, "latest", max_to_keep, async_save)
        )
        self._best = ocp.CheckpointManager(
            f"{root}/best", options=_options(root, "best", 1, async_save)
        )

    def latest_step(self) -> int | None:
        return self._latest.latest_step()

    def restore_latest(self, abstract_state: Any) -> tuple[Any, dict] | None:
        """The newest state that restores (into `abstract_state`'s structure) and its record.

        Steps that fail are quarantined; None when no step restores.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()
        )
        restored = self._restore_newest_valid(self._latest, "latest", args)
        return None if restored is None else (restored.state, dict(restored.record))

    def _restore_newest_valid(self, manager, name: str, args) -> Any:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                return manager.restore(step, args=args)
            except Exception as error:
                self._quarantine(manager, name, step, error)
        return None

    def _quarantine(self, manager, name: str, step: int, error: Exception) -> None:
        source = self._root / name / str(step)
        target = self._root / "quarantine" / f"{name}-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        message = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        logging.error("checkpoint %s does not restore (%s); moved to %s", source, message, target)
        if jax.process_index() == 0 and source.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
        manager.reload()

    def save(self, step: int, state: Any, record: dict) -> None:
        """Saves the state to resume from (asynchronously; every process calls this)."""
        self._latest.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
            ),
        )

    def save_best(self, step: int, state: Any) -> None:
        """Keeps `state` as the best so far (a rerun of the same epoch saves nothing new)."""
        if step not in self._best.all_steps():
            self._best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))

    def restore_best(self, abstract_state: Any) -> Any | None:
        """The best-val state, or None when none was saved or none restores (quarantined)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
        restored = self._restore_newest_valid(self._best, "best", args)
        return None if restored is None else restored.state

    def wait_until_finished(self) -> None:
        self._latest.wait_until_finished()
        self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()
