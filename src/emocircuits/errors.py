"""User-facing errors: one line, naming the problem and where it is.

The CLI prints ``emocircuits: error: <message>`` and exits with status 2 for every
:class:`EmocircuitsError`; library users catch it like any exception.
"""

from __future__ import annotations


class EmocircuitsError(Exception):
    """A problem with the user's input (file, argument, model), not a bug.

    >>> str(EmocircuitsError("anger has 1 example", where="data.jsonl:3"))
    'data.jsonl:3: anger has 1 example'
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class DataError(EmocircuitsError):
    """A dataset file is malformed or does not fit what was asked of it."""


class ModelError(EmocircuitsError):
    """A model cannot be found, loaded or is of an unsupported architecture."""


class CaptureError(EmocircuitsError):
    """An extraction was asked for something impossible (layer out of range, ...)."""


class ReportError(EmocircuitsError):
    """A folder cannot be reported on (not a study folder, unreadable study.json)."""


class MemoryLimitError(EmocircuitsError):
    """Out of memory even at the smallest batch (one row): the model or the texts do not
    fit where the model was placed."""


class StorageError(EmocircuitsError):
    """A saved file cannot be read (truncated, corrupt) or written (disk full, read-only):
    the message names the file and the problem; what was finished before stays."""
