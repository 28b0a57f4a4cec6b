"""One writer at a time per index folder: an advisory lock on ``<index>/.lock`` (filelock: flock on
POSIX, msvcrt on Windows).

OS file locks die with their process, so a writer killed with ``kill -9`` never leaves a stale lock
behind. Who holds it is written to ``<index>/.writer`` for the message a second writer gets (the
lock file itself may be truncated by processes trying it). Readers take no lock: they read a
consistent SQLite snapshot.
"""

from __future__ import annotations

import errno
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from filelock import FileLock, Timeout

from prodsearch.errors import ProdsearchError, ReadOnlyIndexError

LOCK_FILE = ".lock"
HOLDER_FILE = ".writer"
POLL_SECONDS = 0.2


class IndexBusyError(ProdsearchError):
    """Another process is writing to the index."""


class WriterLock:
    """``with WriterLock(index_dir, "add", wait=0):`` - refuses at once, or waits up to ``wait`` s."""

    def __init__(self, index_dir: str | os.PathLike, command: str, wait: float = 0.0):
        self.path = Path(index_dir) / LOCK_FILE
        self.holder_path = Path(index_dir) / HOLDER_FILE
        self.command, self.wait = command, wait
        self.lock = FileLock(self.path, thread_local=False)  # a lock taken in one thread may be released in another

    def __enter__(self) -> "WriterLock":
        try:
            self.lock.acquire(timeout=self.wait, poll_interval=POLL_SECONDS)
        except Timeout:
            advice = f"waited {self.wait:g}s; " if self.wait else ""
            raise IndexBusyError(
                f"{self.path.parent} is being written by another prodsearch process ({self._holder()}); "
                f"{advice}wait for it to finish, or pass --wait SECONDS") from None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ReadOnlyIndexError(self.path.parent, f"cannot write {self.path.name}: {exc.strerror}") from None
            raise
        self.holder_path.write_text(json.dumps({"pid": os.getpid(), "command": self.command,
                                                "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.holder_path.read_text() or "{}")
            return f"pid {info['pid']}, '{info['command']}' since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "unknown process"

    def __exit__(self, *exc) -> None:
        if self.lock.is_locked:
            self.lock.release()


def lock_is_held(folder: str | os.PathLike) -> bool | None:
    """Whether a live process holds the writer lock of ``folder``; ``None`` if it has no lock file."""
    path = Path(folder) / LOCK_FILE
    if not path.exists():
        return None
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def flock_holder(path: str | os.PathLike) -> int | None:
    """The pid of the process holding a ``flock`` on ``path``, from Linux's ``/proc/locks``; ``None``
    where that cannot be told (another system, no lock, the file gone)."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:  # "1: FLOCK  ADVISORY  WRITE 9654 fe:00:2149986 0 EOF"; waiters read "1: -> FLOCK ..."
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        major, minor, inode = parts[5].split(":")
        if (int(inode), int(major, 16), int(minor, 16)) == (st.st_ino, os.major(st.st_dev), os.minor(st.st_dev)):
            return int(parts[4])
    return None


def process_command(pid: int, limit: int = 120) -> str | None:
    """The command line of process ``pid`` as a person would type it (``prodsearch serve ...``, not the
    interpreter's path), cut at ``limit`` characters; ``None`` where it cannot be read."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    args = [a for a in args if a]
    for i, arg in enumerate(args[:3]):  # python -m prodsearch ..., .../bin/prodsearch ...
        if arg == "prodsearch" or os.path.basename(arg) == "prodsearch":
            args = ["prodsearch", *args[i + 1:]]
            break
    text = " ".join(" ".join(args).split())  # one line, whatever the arguments hold
    return text if len(text) <= limit else text[:limit - 3] + "..."
