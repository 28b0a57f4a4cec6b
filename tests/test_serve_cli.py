"""``prodsearch serve`` as a process: it refuses what it cannot serve with one ``Error:`` line,
binds to loopback by default, and on SIGTERM lets a request in flight finish before exiting 0."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from conftest import product_image, snapshot
from serving import multipart, server

PRODSEARCH = [sys.executable, "-m", "prodsearch"]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*PRODSEARCH, *args], capture_output=True, text=True, timeout=120)


def test_serve_refuses_a_missing_index_and_a_weak_token(tmp_path, built_index):
    missing = run("serve", "--index", str(tmp_path / "nope"))
    assert missing.returncode == 1 and missing.stderr.startswith("Error: ") and missing.stderr.count("\n") == 1
    token = tmp_path / "token"
    token.write_text("short\n")
    weak = run("serve", "--index", str(built_index["index"]), "--token-file", str(token))
    assert weak.returncode == 1 and "16 characters" in weak.stderr


@pytest.mark.slow
def test_sigterm_lets_the_request_in_flight_finish(built_index, tmp_path):
    with server(built_index["index"], tmp_path / "serve.log") as (proc, base):
        photo = io.BytesIO()
        snapshot(product_image(2000), seed=2).resize((1600, 1600)).save(photo, "JPEG", quality=95)
        body, content_type = multipart([photo.getvalue()] * 8)  # several hundred ms of work on 2 cores
        answer: dict = {}

        def search():
            request = urllib.request.Request(f"{base}/v1/search", data=body, headers={"Content-Type": content_type})
            with urllib.request.urlopen(request, timeout=60) as response:
                answer.update(json.load(response), status=response.status)

        client = threading.Thread(target=search)
        client.start()
        time.sleep(0.15)  # the request is being read or embedded
        proc.send_signal(signal.SIGTERM)
        client.join(60)
        assert answer.get("status") == 200 and answer["match"] == "sku-2" and answer["photos"] == 8
        assert proc.wait(30) == 0
    text = (tmp_path / "serve.log").read_text()
    assert "127.0.0.1" in text and "Traceback" not in text
