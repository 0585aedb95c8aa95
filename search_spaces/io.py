"""Atomic file writes: a reader sees the old file or the new one, never half of one.

The data goes to a temporary file next to the target, which then replaces it (``os.replace``).

* **Modes.** A new file gets the mode ``open()`` would give it (0666 less the umask, so 0644 under the
  usual umask 022); replacing an existing file keeps that file's mode. (``tempfile.mkstemp`` would
  create every file 0600.)
* **Stale temporary files.** A writer killed between creating its temporary file and the replace
  (``kill -9`` during a checkpoint write) leaves ``.<name>.<host>-<pid>-<token>.tmp`` behind. Each
  write of a target, and the start of a run in its folder (:func:`clean_stale_temps_in`), first removes
  that target's temporary files whose writer is gone: same host and
  the process ``<pid>`` no longer exists (or it is this process, which has no such write in flight,
  i.e. a pid reused after a restart), or, whatever the host (another machine on a shared
  filesystem, or the untagged ``tempfile.mkstemp`` name of earlier versions), untouched for
  :data:`STALE_AGE_S`. A concurrent writer's temporary file is never
  removed: its process is alive and it was written moments ago.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import stat
import threading
import time
from pathlib import Path

#: A temporary file untouched for this long is stale even when its writer's liveness cannot be checked.
STALE_AGE_S = 3600.0

_TAG = re.compile(r"^(?P<host>[A-Za-z0-9_-]*)-(?P<pid>\d+)-[0-9a-f]{8}$")
_MKSTEMP_TAG = re.compile(r"^[a-z0-9_]{8}$")  # tempfile.mkstemp's names, written by earlier versions
_live: set[str] = set()  # temporary files this process is writing now (all threads)
_live_lock = threading.Lock()


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:64]


def _pid_gone(pid: int) -> bool:
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, owned by someone else
        return False
    return False


def _is_stale(tmp: Path, tag: str, now: float) -> bool:
    with _live_lock:
        if str(tmp) in _live:
            return False
    m = _TAG.match(tag)
    if not m and not _MKSTEMP_TAG.match(tag):
        return False  # not a name this module gives (e.g. the temp file of a target named "<name>.<more>")
    if m and m["host"] == _host():
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_gone(pid):
            return True  # not one of ours in flight (checked above), or its process is gone
    try:
        return now - tmp.stat().st_mtime > STALE_AGE_S
    except FileNotFoundError:
        return False


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of earlier, dead writers of ``path``; return the ones removed."""
    path = Path(path)
    prefix, suffix = f".{path.name}.", ".tmp"
    removed, now = [], time.time()
    try:
        names = os.listdir(path.parent)
    except OSError:
        return removed
    for name in names:
        if not (name.startswith(prefix) and name.endswith(suffix)) or len(name) <= len(prefix) + len(suffix):
            continue
        tmp = path.parent / name
        if not _is_stale(tmp, name[len(prefix):-len(suffix)], now):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass  # another writer removed it first
        except OSError:
            pass  # not ours to remove (permissions): leave it, the write itself does not depend on it
    return removed


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<tag>[A-Za-z0-9_-]*-\d+-[0-9a-f]{8}|[a-z0-9_]{8})\.tmp$")


def clean_stale_temps_in(folder: str | os.PathLike) -> list[Path]:
    """:func:`clean_stale_temps` for every target in ``folder`` (a run folder when its run starts): a kill
    during a checkpoint write leaves its temporary file, up to the checkpoint's size, until then."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    targets = {m["name"] for m in map(_TEMP_NAME.match, names) if m}
    return [p for name in sorted(targets) for p in clean_stale_temps(Path(folder) / name)]


def _create_temp(path: Path) -> tuple[int, Path]:
    """Create and open a new temporary file for ``path``, mode 0666 less the umask, registered as live."""
    tag = f"{_host()}-{os.getpid()}"
    while True:
        tmp = path.parent / f".{path.name}.{tag}-{secrets.token_hex(4)}.tmp"
        with _live_lock:
            _live.add(str(tmp))
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            with _live_lock:
                _live.discard(str(tmp))
        except BaseException:
            with _live_lock:
                _live.discard(str(tmp))
            raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    fd, tmp = _create_temp(path)
    try:
        try:
            old_mode = stat.S_IMODE(os.stat(path).st_mode)
        except FileNotFoundError:
            old_mode = None
        with os.fdopen(fd, "wb") as f:
            if old_mode is not None:
                try:
                    os.fchmod(f.fileno(), old_mode)
                except OSError as e:  # e.g. a filesystem without modes; the new file keeps the umask's mode
                    if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EINVAL):
                        raise
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write() names no file: name the target
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with _live_lock:
            _live.discard(str(tmp))
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Render a matplotlib figure (format from the suffix) and write it atomically, then close it."""
    import io

    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", dpi=dpi)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
