"""A split's records that say which file a bad one is in, and how to write it again.

ArrayRecord reports a damaged chunk as "Corrupted Riegeli/records file" a few steps into
training, naming neither the file nor the remedy; a row's shard follows from the split's
shard lengths, so the error can name both.
"""

import bisect
import itertools
from typing import Any


class CorruptRecordError(OSError):
    """A record of the prepared data does not read; the message names its file."""


class NamedRecords:
    """Random access to `source` whose read errors name the shard file and `command`."""

    def __init__(self, source: Any, files: list[str], shard_lengths: list[int], command: str):
        self._source, self._files, self._command = source, files, command
        self._starts = [0, *itertools.accumulate(shard_lengths)]

    def __len__(self) -> int:
        return len(self._source)

    def file_of(self, row: int) -> str:
        shard = bisect.bisect_right(self._starts, row) - 1
        return self._files[min(shard, len(self._files) - 1)]

    def __getitem__(self, row: int) -> Any:
        try:
            return self._source[row]
        except Exception as error:
            cause = f"{type(error).__name__}: {error}".splitlines()[0][:200]
            raise CorruptRecordError(
                f"{self.file_of(row)}: record {row} does not read ({cause}); the prepared data "
                f"is damaged: delete that data set's directory and prepare it again "
                f"(`{self._command}`)"
            ) from error


def named(data_builder, split: str, source: Any, command: str) -> NamedRecords:
    """`source` (split `split` of the prepared `data_builder`) with named read errors."""
    info = data_builder.info.splits[split]
    files = [f"{data_builder.data_dir}/{name}" for name in info.filenames]
    return NamedRecords(source, files, list(info.shard_lengths), command)
