"""kill -9 in the middle of ``prodsearch add``: the index is the old one or the new one, and works.

Each failure point kills the writer exactly there (``PRODSEARCH_CRASH_AT``); the random kills land
wherever the process happens to be, mostly while it embeds.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.indexer import ProductIndex, build_index, remove_from_index
from prodsearch.failpoints import CRASH_ENV, POINTS
from prodsearch.indexer.info import index_info
from prodsearch.retrieval import create_embedder

from conftest import write_folder_catalog

START, NEW = 20, 200


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    catalog = write_folder_catalog(root / "catalog", [f"s{i}" for i in range(10)], per_sku=2)
    build_index(catalog, root / "idx", model=create_embedder(img_size=64), num_workers=0)
    new = write_folder_catalog(root / "new", [f"n{i}" for i in range(40)], per_sku=NEW // 40, seed0=500)
    return root / "idx", new


def start_add(index_dir, catalog, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "prodsearch", "add", str(catalog), "--index", str(index_dir), "--silent", "--workers", "0"],
        env={**os.environ, "PRODSEARCH_SNAPSHOT_CHANGES": "1", **env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_old_or_new_and_working(index_dir, catalog):
    info = index_info(index_dir)
    assert info.consistent, info.problems
    assert info.images in (START, START + NEW)
    index = ProductIndex.open(index_dir)
    assert index.query([catalog / "n3" / "n3_0.jpg"], num_workers=0)[0].matches
    index.close()
    return info.images


def finish_and_check(index_dir, catalog):
    """After a crash, the next writer completes the job."""
    proc = start_add(index_dir, catalog)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    info = index_info(index_dir)
    assert info.consistent and info.images == START + NEW
    assert not [p for p in index_dir.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_point_of_a_write(pristine, tmp_path, point):
    index_dir, catalog = pristine
    idx = shutil.copytree(index_dir, tmp_path / "idx")
    proc = start_add(idx, catalog, **{CRASH_ENV: point})
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    images = assert_old_or_new_and_working(idx, catalog)
    assert images == (START if point in ("before-commit", "inside-commit") else START + NEW)
    finish_and_check(idx, catalog)


def test_kill_at_random_moments(pristine, tmp_path):
    index_dir, catalog = pristine
    idx = shutil.copytree(index_dir, tmp_path / "timing")
    started = time.monotonic()
    start_add(idx, catalog).communicate(timeout=300)
    duration = time.monotonic() - started
    for i, fraction in enumerate((0.4, 0.75, 0.9)):
        idx = shutil.copytree(index_dir, tmp_path / f"idx{i}")
        while True:  # a kill must land while the writer runs; one that came too late is tried earlier
            proc = start_add(idx, catalog)
            time.sleep(duration * fraction)
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
            if proc.returncode == -signal.SIGKILL:
                break
            assert proc.returncode == 0
            shutil.rmtree(idx)
            idx = shutil.copytree(index_dir, tmp_path / f"idx{i}")
            fraction *= 0.8
        assert_old_or_new_and_working(idx, catalog)
    finish_and_check(idx, catalog)


def test_a_build_killed_half_way_is_cleaned_up_by_the_next(pristine, tmp_path):
    """kill -9 of 'index' into a new folder leaves its hidden partial build; the next build finishes it."""
    _, catalog = pristine
    command = [sys.executable, "-m", "prodsearch", "index", str(catalog), "--index", str(tmp_path / "idx"), "--silent",
               "--workers", "0"]
    proc = subprocess.run(command, env={**os.environ, CRASH_ENV: "build-staged"}, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".idx.partial-") and not (tmp_path / "idx").exists()
    proc = subprocess.run(command + ["--json"], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["resumed"] == NEW  # every photo was committed: none embedded again
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    assert index_info(tmp_path / "idx").images == NEW


# What a server does for POST /v1/products/{sku}/images, in a process the test can have killed.
SERVER_ADD = """
import sys
from pathlib import Path
from prodsearch.serve.service import SearchService, ServeSettings
service = SearchService(ServeSettings(Path(sys.argv[1])))
service.add_photos(sys.argv[2], [Path(p).read_bytes() for p in sys.argv[3:]])
"""


def test_a_server_killed_during_an_upload_leaves_files_the_next_write_removes(pristine, tmp_path):
    """The photos are stored (under the writer lock) before the commit: a server killed there leaves
    them unreferenced, and a partial write too; info counts them and any next write removes them."""
    index_dir = Path(shutil.copytree(pristine[0], tmp_path / "idx"))
    photos = [pristine[1] / "n1" / "n1_0.jpg", pristine[1] / "n2" / "n2_0.jpg"]
    proc = subprocess.run([sys.executable, "-c", SERVER_ADD, str(index_dir), "uploaded", *map(str, photos)],
                          env={**os.environ, CRASH_ENV: "before-commit"}, capture_output=True, timeout=300,
                          check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    stored = list((index_dir / "uploads").rglob("*.jpg"))
    assert len(stored) == 2
    (stored[0].parent / f".{stored[0].name}.tmp-123-456").write_bytes(b"half a photo")
    info = index_info(index_dir)
    assert info.consistent and info.images == START and info.leftovers == {"uploads": 3, "chunk_files": 0}
    shown = CliRunner().invoke(cli, ["info", "--index", str(index_dir)])
    assert "leftovers:  3 uploaded photo files no image uses; the next write removes them" in shown.output
    remove_from_index(index_dir, skus=["s0"])
    assert not [p for p in (index_dir / "uploads").rglob("*") if p.is_file()]
    assert index_info(index_dir).leftovers == {"uploads": 0, "chunk_files": 0}
