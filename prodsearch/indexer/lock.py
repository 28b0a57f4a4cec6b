"""One writer at a time per index folder: an advisory lock on ``<index>/.lock``.

``flock`` locks die with their process, so a writer killed with ``kill -9`` never leaves a stale
lock behind. Readers take no lock: they read a consistent SQLite snapshot.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from prodsearch.errors import ProdsearchError, ReadOnlyIndexError

LOCK_FILE = ".lock"
POLL_SECONDS = 0.2


class IndexBusyError(ProdsearchError):
    """Another process is writing to the index."""


class WriterLock:
    """``with WriterLock(index_dir, "add", wait=0):`` - refuses at once, or waits up to ``wait`` s."""

    def __init__(self, index_dir: str | os.PathLike, command: str, wait: float = 0.0):
        self.path = Path(index_dir) / LOCK_FILE
        self.command, self.wait = command, wait
        self.fd: int | None = None

    def __enter__(self) -> "WriterLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ReadOnlyIndexError(self.path.parent, f"cannot write {self.path.name}: {exc.strerror}") from None
            raise
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(fd)
                    advice = f"waited {self.wait:g}s; " if self.wait else ""
                    raise IndexBusyError(
                        f"{self.path.parent} is being written by another prodsearch process ({holder}); "
                        f"{advice}wait for it to finish, or pass --wait SECONDS") from None
                time.sleep(POLL_SECONDS)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": self.command,
                                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}).encode(), 0)
        self.fd = fd
        return self

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info['pid']}, '{info['command']}' since {info['since']}"
        except (OSError, ValueError, KeyError):
            return "unknown process"

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def lock_is_held(folder: str | os.PathLike) -> bool | None:
    """Whether a live process holds the writer lock of ``folder``; ``None`` if it has no lock file."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False
