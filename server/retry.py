"""What a failed bake means for its upload: refused for its content, or kept and tried again later.

An upload that got its 202 is never lost to a failure that is not its own. Only a refusal of its content
(:class:`UploadRejected`: the checker's verdict on a member, bad zstd data that reads back fine from the disk)
fails it. Everything else keeps it queued and retried with exponential backoff:

* :class:`StorageError` — ENOSPC, EDQUOT, EROFS or EIO, seen by errno on our own reads and writes, by SQLite's
  result code, or measured on the filesystem after a tool failed (layerboot.diskspace.watch_output);
* :class:`CommandError` — a tool that exited badly on input layerboot wrote itself, was killed by a signal
  (OOM killer, an admin) or timed out;
* any other error, including a bug in layerboot: retrying costs little, losing a node's data does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from layerboot.diskspace import storage_error
from layerboot.errors import LayerbootError
from layerboot.overlays.tarscan import UploadRejected


@dataclass(frozen=True)
class Outcome:
    retry: bool          # keep the upload queued and bake it again later
    message: str         # one line for the upload's record and the log


def classify(err: BaseException) -> Outcome:
    if isinstance(err, UploadRejected):
        return Outcome(False, err.message)
    if isinstance(err, LayerbootError):   # StorageError, CommandError, a profile gone meanwhile, ...
        return Outcome(True, err.message)
    storage = storage_error(err)          # an OSError or sqlite3 error about the disk that escaped
    if storage is not None:
        return Outcome(True, storage.message)
    return Outcome(True, f"internal error: {type(err).__name__}: {err}")


def backoff(attempts: int, *, initial: float, maximum: float) -> float:
    """Seconds to wait after the ``attempts``-th failed try: initial, 2x, 4x, ... capped at ``maximum``."""
    if attempts < 1:
        attempts = 1
    return float(min(maximum, initial * 2 ** min(attempts - 1, 30)))
