"""Local staging for ArrayRecord's writer, which opens local files only.

ArrayRecord reads `gs://` (through the google-cloud-cpp client built into it) but writes
through a local file descriptor: "open() failed: No such file or directory; opening gs://...".
A preparation or a pre-resized store bound for a bucket is therefore written into a local
directory under `$TMPDIR` (a prepare VM's large disk) and uploaded through `etils.epath` once
complete; the local copy is removed whether or not the writing succeeded.
"""

import contextlib
import os
import tempfile
from collections.abc import Iterator

from absl import logging
from etils import epath


def is_remote(path: epath.PathLike) -> bool:
    return "://" in os.fspath(path)


def upload(local: epath.Path, target: epath.Path, *, skip: tuple[str, ...] = ()) -> int:
    """Copies the tree `local` into `target` (overwriting), leaving out the top-level names in
    `skip`; returns the bytes copied."""
    copied = 0
    for directory, subdirectories, files in os.walk(local):  # A local tree: os walks it.
        if directory == os.fspath(local):
            subdirectories[:] = [name for name in subdirectories if name not in skip]
        for name in sorted(files):
            source = epath.Path(directory) / name
            destination = target / source.relative_to(local)
            destination.parent.mkdir(parents=True, exist_ok=True)
            source.copy(destination, overwrite=True)
            copied += os.path.getsize(source)
    return copied


@contextlib.contextmanager
def staged(target: epath.PathLike, *, skip: tuple[str, ...] = ()) -> Iterator[str]:
    """A local directory to write `target`'s tree into: `target` itself when it is local;
    otherwise a temporary directory, uploaded to `target` when the block completes (all but
    the top-level names in `skip`) and removed in every case."""
    if not is_remote(target):
        yield os.fspath(target)
        return
    with tempfile.TemporaryDirectory(prefix="lln-staging-") as local:
        logging.info("Writing %s in the local staging directory %s", target, local)
        yield local
        copied = upload(epath.Path(local), epath.Path(target), skip=skip)
        logging.info("Uploaded %.1f MB to %s", copied / 1e6, target)
