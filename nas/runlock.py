"""One writer per run folder: a lock held for as long as a run writes there.

A run folder holds one run's checkpoint, logs, TensorBoard files and outputs; two processes writing
it (the same ``hydra.run.dir`` given twice) would leave one run's files over the other's while both
report success. :func:`run_folder` takes ``<run_dir>/.run.lock`` without waiting and raises
:class:`RunFolderBusy` when another live process holds it. The lock is an OS file lock
(:mod:`filelock`), so a process that dies, ``kill -9`` included, releases it: a stale lock file never
blocks a resume. The Hydra callback (:class:`nas.config.CheckConfig`) takes it before Hydra writes
``.hydra/`` and the log; the entry functions take it too, for callers that skip Hydra. Under torchrun
each rank holds its own lock file, so a second job's ranks are all refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from search_spaces.io import clean_stale_temps_in

_held: dict[Path, FileLock] = {}  # run folders this process holds


class RunFolderError(ValueError):
    """The run folder cannot be written by this run."""


class RunFolderBusy(RunFolderError):
    """Another live process is writing the run folder."""


def lock_path(run_dir: str | os.PathLike) -> Path:
    rank = os.environ.get("RANK", "0")
    return Path(run_dir) / (".run.lock" if rank == "0" else f".run.rank{rank}.lock")


def hold(run_dir: str | os.PathLike) -> bool:
    """Take ``run_dir``'s lock (creating the folder); False if this process already holds it."""
    key = Path(run_dir).resolve()
    if key in _held:
        return False
    lock = FileLock(lock_path(key), timeout=0)
    try:
        key.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except Timeout:
        raise RunFolderBusy(f"run folder {key} is in use by another process (it holds {lock_path(key).name}); "
                            "wait for that run to end, or pass another hydra.run.dir") from None
    except OSError as e:
        raise RunFolderError(f"run folder {key} cannot be written ({e.strerror or e}); pass a writable "
                             "hydra.run.dir") from None
    _held[key] = lock
    clean_stale_temps_in(key)  # half-written files of a killed earlier run (now that no one else writes here)
    return True


def release(run_dir: str | os.PathLike) -> None:
    lock = _held.pop(Path(run_dir).resolve(), None)
    if lock is not None:
        lock.release()


@contextmanager
def run_folder(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold ``run_dir`` for the block (a no-op when this process holds it already, e.g. from the callback)."""
    took = hold(run_dir)
    try:
        yield Path(run_dir)
    finally:
        if took:
            release(run_dir)
