"""A thin wrapper over orbax: the latest state for resuming, the best-val state for testing.

Two managers under the workdir: `checkpoints/latest` (the newest few states, each with a JSON
record of the loop's bookkeeping) and `checkpoints/best` (the state with the best val mAP
so far). Orbax writes each checkpoint to a temporary directory and renames it when complete,
so a run killed mid-save never leaves a half-written checkpoint that looks finished.

Every checkpoint, the best one included, carries a JSON record. A restore reads the record
first and hands it to the caller's check (the run's config and identity) before it touches
the arrays: a checkpoint of another config or another run is refused by that check, never
mistaken for a corrupt one. Only a record that does not read, or arrays that do not restore
(a truncated file, an emptied directory), count as corrupt: such a checkpoint is logged with
its error and moved aside into `checkpoints/quarantine/` (never deleted), and the next older
one is used.
"""

import contextlib
import pathlib
import time
from collections.abc import Callable
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


RecordCheck = Callable[[dict[str, Any], str], None]  # (record, its step dir) -> raises


class SaveError(OSError):
    """A checkpoint could not be written; the message is one line that says what to do."""


@contextlib.contextmanager
def _saving(directory: str, step: int | None):
    """Turns orbax's failure to write (its own log lines come first) into one line."""
    try:
        yield
    except Exception as error:
        cause = f"{type(error).__name__}: {error}".splitlines()[0]
        if len(cause) > 300:  # The library's context first, the OS's reason last.
            cause = f"{cause[:100]} ... {cause[-180:]}"
        what = f"the checkpoint of step {step}" if step is not None else "a checkpoint"
        raise SaveError(
            f"{what} could not be written to {directory} ({cause}); fix the storage (space, "
            "permissions) and rerun the same command: it resumes from the newest complete "
            "checkpoint"
        ) from error


def _move_tree(source: epath.Path, target: epath.Path) -> None:
    """Renames a directory; on a bucket, which has no directory rename (TF's GCS client
    fails on a prefix), copies it object by object and deletes the original."""
    try:
        source.rename(target)
        return
    except OSError:
        if "://" not in str(source):
            raise
    for entry in source.iterdir():
        if entry.is_dir():
            _move_tree(entry, target / entry.name)
        else:
            target.mkdir(parents=True, exist_ok=True)
            entry.copy(target / entry.name, overwrite=True)
    source.rmtree()


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

    def restore_latest(
        self, abstract_state: Any, check_record: RecordCheck
    ) -> tuple[Any, dict] | None:
        """The newest state that restores (into `abstract_state`'s structure) and its record.

        `check_record(record, step_dir)` sees each record before its arrays are read, and
        may raise to refuse it. Steps that fail otherwise are quarantined; None when no step
        restores.
        """
        return self._restore_newest_valid(self._latest, "latest", abstract_state, check_record)

    def _step_dir(self, name: str, step: int) -> str:
        return str(self._root / name / str(step))

    def read_record(self, name: str, step: int) -> dict[str, Any] | None:
        """The record of step `step` of `name` ("latest" or "best"); None for a best state
        saved before best states had records.

        Raises:
          Exception: whatever orbax raises for a record that does not read.
        """
        manager = self._latest if name == "latest" else self._best
        if name == "best" and not (self._root / name / str(step) / "record").exists():
            return None
        restored = manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))
        return dict(restored.record)

    def steps(self, name: str) -> list[int]:
        return list((self._latest if name == "latest" else self._best).all_steps())

    def _restore_newest_valid(self, manager, name: str, abstract_state, check_record) -> Any:
        for step in sorted(manager.all_steps(), reverse=True):
            try:
                record = self.read_record(name, step)
            except Exception as error:
                self._quarantine(manager, name, step, error)
                continue
            check_record(record, self._step_dir(name, step))  # A refusal propagates.
            try:
                args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
                return manager.restore(step, args=args).state, record
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
            _move_tree(source, target)
        manager.reload()

    def save(self, step: int, state: Any, record: dict) -> None:
        """Saves the state to resume from (asynchronously; every process calls this).

        Raises:
          SaveError: this save, or the asynchronous one before it, failed.
        """
        with _saving(f"{self._root}/latest", step):
            self._latest.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
                ),
            )

    def save_best(self, step: int, state: Any, record: dict) -> None:
        """Keeps `state` as the best so far, with `record` (the run's identity).

        A rerun of the same epoch saves nothing new: the caller has checked at start-up that
        the best states present are its run's.
        """
        if step not in self._best.all_steps():
            with _saving(f"{self._root}/best", step):
                self._best.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
                    ),
                )

    def restore_best(self, abstract_state: Any, check_record: RecordCheck) -> Any | None:
        """The best-val state, or None when none was saved or none restores (quarantined).

        `check_record` sees the record (None for a best state saved without one) first.
        """
        restored = self._restore_newest_valid(self._best, "best", abstract_state, check_record)
        return None if restored is None else restored[0]

    def wait_until_finished(self) -> None:
        """Raises `SaveError` when an asynchronous save failed."""
        with _saving(str(self._root), None):
            self._latest.wait_until_finished()
            self._best.wait_until_finished()

    def close(self) -> None:
        self._latest.close()
        self._best.close()
