"""A new index built in chunks (issue 17): the same index as one chunk, and a build stopped part-way
resumes without embedding again what it had committed."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer import chunked
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.failpoints import CRASH_ENV
from prodsearch.indexer.info import index_info
from prodsearch.retrieval import create_embedder

from conftest import product_image, write_folder_catalog

SKUS = [f"s{i}" for i in range(7)]  # 2 photos each: 14


@pytest.fixture(scope="module")
def small_embedder():
    return create_embedder(img_size=64)


@pytest.fixture
def catalog(tmp_path):
    return write_folder_catalog(tmp_path / "catalog", SKUS, per_sku=2)


def rows_and_vectors(index_dir):
    db = CatalogDB(index_dir / "catalog.db")
    try:
        rows = sorted((r["id"], r["sku"], r["path"], r["md5"]) for r in db.image_rows())
        return rows, db.vectors([r[0] for r in rows], 1280)
    finally:
        db.close()


class Spy:
    """Counts the photos ``embed_new`` is asked to embed; with ``stop_after`` chunks committed, the
    build is stopped there (as a kill would)."""

    def __init__(self, monkeypatch, stop_after=None):
        self.embedded, self.chunks, self.stop_after = 0, 0, stop_after
        original = chunked.embed_new

        def embed_new(encoder, scanned, keys, **kwargs):
            self.embedded += len(keys)
            return original(encoder, scanned, keys, **kwargs)

        def crash_point(name):
            if name == "build-chunk":
                self.chunks += 1
                if self.chunks == self.stop_after:
                    raise KeyboardInterrupt

        monkeypatch.setattr(chunked, "embed_new", embed_new)
        monkeypatch.setattr(chunked, "crash_point", crash_point)


def test_chunks_build_the_same_index_as_one(tmp_path, catalog, small_embedder, monkeypatch):
    build_index(catalog, tmp_path / "one", model=small_embedder, num_workers=0)
    spy = Spy(monkeypatch)
    report = build_index(catalog, tmp_path / "chunks", model=small_embedder, num_workers=0, chunk_size=4)
    assert spy.chunks == 4 and spy.embedded == 14 and report.images == 14 and report.resumed == 0
    (rows_a, vectors_a), (rows_b, vectors_b) = rows_and_vectors(tmp_path / "one"), rows_and_vectors(tmp_path / "chunks")
    assert rows_a == rows_b
    np.testing.assert_allclose(vectors_a, vectors_b, atol=1e-3)
    assert index_info(tmp_path / "chunks").consistent


def test_a_stopped_build_resumes_without_embedding_again(tmp_path, catalog, small_embedder, monkeypatch):
    stopped = Spy(monkeypatch, stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0, chunk_size=4)
    assert stopped.embedded == 8 and not (tmp_path / "idx").exists()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".idx.partial-")]
    assert len(partial) == 1 and CatalogDB(partial[0] / "catalog.db").counts()["images"] == 8
    # meanwhile one photo left the catalog and another joined it
    (catalog / "s0" / "s0_0.jpg").unlink()
    product_image(4242).save(catalog / "s6" / "s6_new.jpg")
    resumed = Spy(monkeypatch)
    report = build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0, chunk_size=4)
    assert report.resumed == 7 and resumed.embedded == 14 - 8 + 1  # the 7 still listed were not embedded again
    assert report.images == 14 and [p.name for p in tmp_path.iterdir() if p.name != "catalog"] == ["idx"]
    paths = {r[2] for r in rows_and_vectors(tmp_path / "idx")[0]}
    assert str(catalog / "s6" / "s6_new.jpg") in paths and str(catalog / "s0" / "s0_0.jpg") not in paths
    index = ProductIndex.open(tmp_path / "idx")
    assert index.query([catalog / "s3" / "s3_1.jpg"], num_workers=0)[0].matches[0].sku == "s3"
    index.close()


def test_no_resume_starts_over_and_other_settings_do_not_resume(tmp_path, catalog, small_embedder, monkeypatch):
    Spy(monkeypatch, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0, chunk_size=4)
    spy = Spy(monkeypatch)
    report = build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0, chunk_size=4, views=2)
    assert report.resumed == 0 and spy.embedded == 14  # other views: another build; the stale partial is gone
    assert [p.name for p in tmp_path.iterdir() if p.name != "catalog"] == ["idx"]
    Spy(monkeypatch, stop_after=1)
    with pytest.raises(KeyboardInterrupt):
        build_index(catalog, tmp_path / "idx2", model=small_embedder, num_workers=0, chunk_size=4)
    spy = Spy(monkeypatch)
    assert build_index(catalog, tmp_path / "idx2", model=small_embedder, num_workers=0, resume=False).resumed == 0
    assert spy.embedded == 14


def test_cli_kill_during_a_chunk_then_resume(tmp_path, catalog):
    command = [sys.executable, "-m", "prodsearch", "index", str(catalog), "--index", str(tmp_path / "idx"), "--silent",
               "--workers", "0", "--chunk-size", "5", "--json"]
    proc = subprocess.run(command, env={**os.environ, CRASH_ENV: "build-chunk"}, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL
    result = CliRunner().invoke(cli, command[3:])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["resumed"] == 5 and report["images"] == 14
    assert index_info(tmp_path / "idx").consistent


def test_add_commits_chunks_and_a_stopped_add_keeps_them(tmp_path, catalog, small_embedder, monkeypatch):
    from prodsearch.indexer import lifecycle

    build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0)
    new = write_folder_catalog(tmp_path / "new", [f"n{i}" for i in range(5)], per_sku=2, seed0=300)
    original, calls = lifecycle.embed_new, []

    def embed_new(encoder, scanned, keys, **kwargs):
        calls.append(len(keys))
        if len(calls) == 3:
            raise KeyboardInterrupt  # stopped while embedding the third chunk
        return original(encoder, scanned, keys, **kwargs)

    monkeypatch.setattr(lifecycle, "embed_new", embed_new)
    with pytest.raises(KeyboardInterrupt):
        lifecycle.add_to_index(new, tmp_path / "idx", num_workers=0, chunk_size=4)
    info = index_info(tmp_path / "idx")
    assert info.consistent and info.images == 14 + 8 and info.generation == 1 + 2  # a generation per chunk
    calls.clear()
    report = lifecycle.add_to_index(new, tmp_path / "idx", num_workers=0, chunk_size=4)
    assert calls == [2] and report.added == 2 and report.unchanged == 8  # the committed 8 not embedded again
    assert index_info(tmp_path / "idx").images == 24


def test_add_and_update_never_load_every_image_row(tmp_path, catalog, small_embedder, monkeypatch):
    build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0)

    def image_rows(self):
        raise AssertionError("add/update must diff by lookups and one streamed pass, not image_rows()")

    monkeypatch.setattr(CatalogDB, "image_rows", image_rows)
    from prodsearch.indexer.lifecycle import add_to_index, update_index

    (catalog / "s1" / "s1_0.jpg").unlink()
    product_image(999).save(catalog / "s2" / "s2_0.jpg")  # new content under the same name
    (catalog / "s3" / "s3_1.jpg").rename(catalog / "s3" / "s3_moved.jpg")
    report = update_index(catalog, tmp_path / "idx", num_workers=0, chunk_size=2)
    assert (report.added, report.removed, report.changed, report.unchanged) == (0, 1, 1, 12)
    write_folder_catalog(catalog, ["z"], per_sku=1, seed0=77)
    assert add_to_index(catalog, tmp_path / "idx", num_workers=0).added == 1
    monkeypatch.undo()
    rows = {r["path"] for r in CatalogDB(tmp_path / "idx" / "catalog.db").image_rows()}
    assert str(catalog / "s3" / "s3_moved.jpg") in rows and str(catalog / "s1" / "s1_0.jpg") not in rows
    assert index_info(tmp_path / "idx").consistent
