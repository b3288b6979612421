"""Files written whole or not at all: a crash mid-write never leaves half a JSON file.

A local file is written to a temporary file beside it, flushed to disk (`fsync`) and renamed
over the target, which POSIX makes atomic; the directory is synced so that the rename
survives a power loss. An object store (`gs://`) needs none of this: an upload becomes
visible whole when it completes, or not at all. Every path goes through `etils.epath`.
"""

import os
import secrets

from etils import epath


def write_atomic(path: epath.PathLike, data: str | bytes) -> None:
    """Replaces `path` by `data` (text as UTF-8) in one step."""
    path = epath.Path(path)
    payload = data.encode() if isinstance(data, str) else data
    if "://" in str(path):  # An object store: an upload is atomic already.
        path.write_bytes(payload)
        return
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
