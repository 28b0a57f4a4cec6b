"""``prodsearch serve`` as a process: it refuses what it cannot serve with one ``Error:`` line,
binds to loopback by default, and on SIGTERM lets a request in flight finish before exiting 0."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
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


@pytest.mark.parametrize("content, says", [
    (b"\xff" + b"x" * 20 + b"\n", r"token is not UTF-8 text \(byte 1 is not\); write one there, e\.g\. .*> .*token"),
    ("tökén-with-ümlauts-and-more\n".encode(), (r"the token in .*token has a character an HTTP header cannot carry "
                                               r"\(character 2: a space, or not printable ASCII\); write one there")),
    (b"a token with spaces inside it\n", (r"the token in .*token has a character an HTTP header cannot carry "
                                         r"\(character 2: ")),
    (b"\n\n", r".*token holds no token of at least 16 characters; write one there"),
])
def test_serve_refuses_a_token_http_cannot_carry_in_one_line(tmp_path, built_index, content, says):
    """Else the server would start and answer 403 "wrong token" to every write (or a traceback)."""
    token = tmp_path / "token"
    token.write_bytes(content)
    refused = run("serve", "--index", str(built_index["index"]), "--token-file", str(token))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
    assert refused.stderr.startswith("Error: ") and re.search(says, refused.stderr), refused.stderr


def test_serve_refuses_a_non_ascii_token_in_the_environment(built_index):
    refused = subprocess.run([*PRODSEARCH, "serve", "--index", str(built_index["index"])], capture_output=True,
                             text=True, timeout=120, check=False, env={**os.environ, "PRODSEARCH_TOKEN": "sécret-token-of-length"})
    assert refused.returncode == 1 and refused.stderr.startswith("Error: the token in PRODSEARCH_TOKEN has a ")
    assert "export PRODSEARCH_TOKEN=$(python3 -c" in refused.stderr and refused.stderr.count("\n") == 1


def test_serve_on_a_port_in_use_is_one_error_line_before_the_model_loads(built_index):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        refused = run("serve", "--index", str(built_index["index"]), "--port", str(port))
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr == (f"Error: port {port} is in use on 127.0.0.1 (another server?); stop it or choose "
                              "another --port (0: any free port)\n")
    nowhere = run("serve", "--index", str(built_index["index"]), "--host", "192.0.2.1")  # not this machine's
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("Error: cannot listen on 192.0.2.1 port 8000: ")
    assert nowhere.stderr.count("\n") == 1 and "Serving" not in nowhere.stderr


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
