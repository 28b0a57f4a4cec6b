"""Starting ``prodsearch serve`` as a process in tests: a free loopback port, readiness, a clean stop."""

from __future__ import annotations

import contextlib
import socket
import uuid
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

READY_TIMEOUT = 120  # seconds for the server to load the model and answer /readyz


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(base: str, proc: subprocess.Popen, log_path: Path, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"prodsearch serve exited with {proc.returncode} before it was ready:\n"
                                 f"{log_path.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError):
            if get(f"{base}/readyz", timeout=2)[0] == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"prodsearch serve was not ready within {timeout} s:\n"
                         f"{log_path.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def server(index_dir: Path, log_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``prodsearch serve --index INDEX_DIR ARGS`` on a free port, ready; killed if still running at the end."""
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "prodsearch", "serve", "--index", str(index_dir),
                                 "--port", str(port), *args], stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_ready(base, proc, log_path)
            yield proc, base
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def multipart(photos: list[bytes], boundary: str | None = None) -> tuple[bytes, str]:
    """A ``POST /v1/search`` body holding ``photos`` in the field ``image``, and its content type."""
    boundary = boundary or uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.jpg\"\r\n"
                    f"Content-Type: image/jpeg\r\n\r\n".encode() + p + b"\r\n" for i, p in enumerate(photos))
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
