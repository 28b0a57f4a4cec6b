"""add / remove / update / info: each operation, idempotence, consistency after each, the lock,
readers during writes, and removal for index types that cannot delete."""

import json
import shutil
import threading
import time

import faiss
import numpy as np
import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.cli.lifecycle import human_size
from prodsearch.errors import CatalogError, ModelMismatchError
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.info import index_info
from prodsearch.indexer.lifecycle import (MassRemovalError, NotInIndexError, add_to_index, remove_from_index,
                                          update_index)
from prodsearch.indexer.lock import IndexBusyError, WriterLock
from prodsearch.indexer.store import snapshot_path
from prodsearch.indexer.vectors import add_vectors
from prodsearch.retrieval import create_embedder

from conftest import product_image, write_csv, write_folder_catalog

SMALL = 64  # px: the lifecycle does not depend on resolution, and tests stay fast


@pytest.fixture(scope="module")
def small_embedder():
    return create_embedder(img_size=SMALL)


@pytest.fixture
def shop(tmp_path, small_embedder):
    """A catalog folder (skus a, b, c; 2 photos each) and its index."""
    catalog = write_folder_catalog(tmp_path / "catalog", ["a", "b", "c"], per_sku=2)
    build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0)
    return catalog, tmp_path / "idx"


def assert_consistent(index_dir, images=None, skus=None):
    info = index_info(index_dir)
    assert info.consistent, info.problems
    assert info.vectors == info.images
    if images is not None:
        assert info.images == images
    if skus is not None:
        assert info.skus == skus
    return info


def test_add_new_skus_and_photos_then_again_is_a_no_op(shop):
    catalog, idx = shop
    write_folder_catalog(catalog, ["d"], per_sku=2, seed0=50)
    product_image(777).save(catalog / "a" / "new.jpg")
    report = add_to_index(catalog, idx, num_workers=0)
    assert (report.added, report.unchanged, report.removed, report.new_skus) == (3, 6, 0, ["d"])
    assert_consistent(idx, images=9, skus=4)
    again = add_to_index(catalog, idx, num_workers=0)
    assert (again.added, again.generation) == (0, None)
    assert_consistent(idx, images=9)
    assert ProductIndex.open(idx).query([catalog / "d" / "d_0.jpg"])[0].matches[0].sku == "d"


def test_add_never_removes_and_keeps_known_names(tmp_path, small_embedder):
    product_image(1).save(tmp_path / "1.png")
    product_image(2).save(tmp_path / "2.png")
    csv_path = write_csv(tmp_path / "c.csv", [{"image": "1.png", "sku": "M", "name": "Milk 3%", "category": "Dairy"}])
    build_index(csv_path, tmp_path / "idx", model=small_embedder, num_workers=0)
    other = write_csv(tmp_path / "d.csv", [{"image": "2.png", "sku": "M", "name": "", "category": ""}])
    assert add_to_index(other, tmp_path / "idx", num_workers=0).added == 1
    assert CatalogDB(tmp_path / "idx" / "catalog.db").products(["M"])["M"].name == "Milk 3%"
    assert_consistent(tmp_path / "idx", images=2)


def test_remove_skus_and_images(shop):
    catalog, idx = shop
    report = remove_from_index(idx, skus=["a"])
    assert (report.removed, report.removed_skus) == (2, ["a"])
    assert_consistent(idx, images=4, skus=2)
    some_id = ProductIndex.open(idx).image_ids[0]
    report = remove_from_index(idx, image_ids=[int(some_id)])
    assert report.removed == 1
    assert_consistent(idx, images=3, skus=2)
    index = ProductIndex.open(idx)
    assert "a" not in index.skus and some_id not in index.image_ids
    assert index.query([catalog / "a" / "a_0.jpg"])[0].matches[0].sku != "a"


def test_remove_unknown_is_refused_and_removes_nothing(shop):
    _, idx = shop
    with pytest.raises(NotInIndexError, match=r"not in the index .*: SKU 'zzz', image 9999; nothing was removed"):
        remove_from_index(idx, skus=["a", "zzz"], image_ids=[9999])
    assert_consistent(idx, images=6, skus=3)


def test_update_mirrors_the_catalog(shop):
    catalog, idx = shop
    (catalog / "b" / "b_0.jpg").unlink()  # disappeared
    product_image(900).save(catalog / "c" / "c_0.jpg")  # changed content, same path
    write_folder_catalog(catalog, ["e"], per_sku=1, seed0=60)  # new
    shutil.move(catalog / "a" / "a_1.jpg", catalog / "a" / "renamed.jpg")  # moved: same content
    report = update_index(catalog, idx, num_workers=0)
    assert (report.added, report.removed, report.changed, report.unchanged) == (1, 1, 1, 4)
    assert report.new_skus == ["e"]
    assert_consistent(idx, images=6, skus=4)
    paths = {r["path"] for r in CatalogDB(idx / "catalog.db").image_rows()}
    assert str((catalog / "a" / "renamed.jpg").resolve()) in paths
    assert update_index(catalog, idx, num_workers=0).generation is None  # nothing left to do


@pytest.mark.parametrize("skus,changing", [(8, 5), (3, 1)])
def test_update_counts_a_file_changed_in_place_as_changed_only(tmp_path, small_embedder, skus, changing):
    """Same path, same SKU, new content: changed (re-embedded), neither added nor removed."""
    catalog = write_folder_catalog(tmp_path / "catalog", [f"s{i}" for i in range(skus)])
    build_index(catalog, tmp_path / "idx", model=small_embedder, num_workers=0)
    for i in range(changing):
        product_image(1000 + i).save(catalog / f"s{i}" / f"s{i}_0.jpg")
    result = CliRunner().invoke(cli, ["update", str(catalog), "--index", str(tmp_path / "idx"), "--silent", "--json",
                                      "--workers", "0"], catch_exceptions=False)
    data = json.loads(result.stdout)
    assert (data["added"], data["removed"], data["changed"], data["unchanged"]) == (0, 0, changing, skus - changing)
    assert data["new_skus"] == data["removed_skus"] == []
    assert_consistent(tmp_path / "idx", images=skus, skus=skus)
    for i in range(changing):
        product_image(2000 + i).save(catalog / f"s{i}" / f"s{i}_0.jpg")
    result = CliRunner().invoke(cli, ["update", str(catalog), "--index", str(tmp_path / "idx"), "--silent",
                                      "--workers", "0"], catch_exceptions=False)
    assert result.output.startswith(f"Updated {tmp_path / 'idx'}: 0 images added, 0 removed, {changing} changed "
                                    f"(re-embedded), {skus - changing} unchanged\n")
    assert "  speed: " in result.output
    assert_consistent(tmp_path / "idx", images=skus, skus=skus)


def test_update_refreshes_names_and_drops_emptied_skus(tmp_path, small_embedder):
    for i in range(3):
        product_image(i).save(tmp_path / f"{i}.png")
    rows = [{"image": f"{i}.png", "sku": f"S{i}", "name": f"Old {i}", "category": "X"} for i in range(3)]
    build_index(write_csv(tmp_path / "c.csv", rows), tmp_path / "idx", model=small_embedder, num_workers=0)
    rows = [{**rows[0], "name": "New 0"}, rows[1]]
    report = update_index(write_csv(tmp_path / "c.csv", rows), tmp_path / "idx", num_workers=0)
    assert (report.removed, report.removed_skus) == (1, ["S2"])
    products = CatalogDB(tmp_path / "idx" / "catalog.db").products(["S0", "S2"])
    assert products["S0"].name == "New 0" and "S2" not in products
    assert_consistent(tmp_path / "idx", images=2, skus=2)


def test_cli_add_update_remove_report_what_they_did(shop):
    catalog, idx = shop
    run = lambda *args: CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)  # noqa: E731
    write_folder_catalog(catalog, ["d"], per_sku=1, seed0=60)
    result = run("add", catalog, "--index", idx, "--silent", "--workers", 0)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Added 1 image to {idx} (6 already there)\n  new SKUs: 1 (d)\n")
    assert run("add", catalog, "--index", idx, "--silent").output.startswith(
        f"Nothing to add: {idx} already holds these 7 images")
    result = run("remove", "--index", idx, "--sku", "d", "--sku", "c")
    assert result.output == f"Removed 3 images from {idx}; SKUs gone: c, d\n"
    result = run("update", catalog, "--index", idx, "--silent", "--workers", 0)
    assert result.output.startswith(f"Updated {idx}: 3 images added, 0 removed, 0 changed (re-embedded), 4 unchanged\n")
    assert run("update", catalog, "--index", idx, "--silent").output.startswith(
        f"Nothing to update: {idx} already holds exactly the catalog's 7 images")
    assert_consistent(idx, images=7, skus=4)


def test_info(shop):
    _, idx = shop
    info = assert_consistent(idx, images=6, skus=3)
    assert (info.model, info.embed_dim, info.input_size, info.index_type) == ("tf_efficientnet_lite0", 1280, SMALL, "IndexFlatIP")
    assert info.size_bytes > 6 * 1280 * 4 and "catalog.db" in info.files
    assert info.index_factory == "Flat" and 1280 * 4 <= info.memory_bytes_per_image < 1280 * 4 + 200  # fp32 + id
    assert (info.stored_dtype, info.stored_bytes_per_image) == ("float16", 1280 * 2)  # catalog.db: half of that
    result = CliRunner().invoke(cli, ["info", "--index", str(idx), "--json"])
    data = json.loads(result.output)
    assert (data["skus"], data["images"], data["vectors"], data["consistent"]) == (3, 6, 6, True)
    text = CliRunner().invoke(cli, ["info", "--index", str(idx)]).output
    assert "catalog:    3 SKUs, 6 images" in text and "consistent: yes" in text
    snapshot = next(idx.glob("vectors-*.faiss"))  # a Flat index in memory is its file: vectors + ids + header
    assert f"memory:     {human_size(round(snapshot.stat().st_size / 6))} per image (Flat index, held by readers)" in text
    assert f"stored:     {human_size(1280 * 2)} per image (float16 in catalog.db)" in text
    assert [human_size(n) for n in (840, 1500, 2_500_000, 7 * 10**12)] == ["840 bytes", "1.5 KB", "2.5 MB", "7000.0 GB"]


def test_info_reports_inconsistency(shop):
    _, idx = shop
    db = CatalogDB(idx / "catalog.db")
    with db.db.atomic():  # a vector without its catalog row, behind the change log's back
        db.db.execute("delete from images where id = (select min(id) from images)")
    db.close()
    info = index_info(idx)
    assert not info.consistent
    assert info.problems == ["the vector index has 1 vectors without a catalog image and 0 images without a vector",
                             "the stored vectors do not match the catalog images"]
    result = CliRunner().invoke(cli, ["info", "--index", str(idx)])
    assert result.exit_code == 1 and "consistent: NO" in result.output
    assert result.output.splitlines()[-1].startswith(f"Error: {idx} is inconsistent: the vector index has 1 vectors")


def test_snapshots_are_compacted(shop, monkeypatch):
    catalog, idx = shop
    monkeypatch.setenv("PRODSEARCH_SNAPSHOT_CHANGES", "2")
    write_folder_catalog(catalog, ["d"], per_sku=2, seed0=50)
    add_to_index(catalog, idx, num_workers=0)
    info = assert_consistent(idx, images=8)
    assert (info.generation, info.snapshot, info.pending_changes) == (2, 2, 0)
    assert sorted(p.name for p in idx.glob("vectors-*.faiss")) == ["vectors-00000002.faiss"]


def test_removal_where_the_index_type_cannot_delete(shop):
    """A graph index (HNSW) has no remove_ids: opening rebuilds it from the stored vectors."""
    catalog, idx = shop
    db = CatalogDB(idx / "catalog.db")
    ids, vectors = db.all_vectors(1280)
    hnsw = faiss.IndexIDMap2(faiss.IndexHNSWFlat(1280, 16, faiss.METRIC_INNER_PRODUCT))
    add_vectors(hnsw, vectors, ids)
    faiss.write_index(hnsw, str(snapshot_path(idx, db.state().snapshot)))
    db.close()
    with pytest.raises(RuntimeError):
        hnsw.remove_ids(np.array([0], dtype=np.int64))
    remove_from_index(idx, skus=["b"])
    assert_consistent(idx, images=4, skus=2)
    assert ProductIndex.open(idx).query([catalog / "c" / "c_0.jpg"])[0].matches[0].sku == "c"


def test_other_model_is_refused(shop):
    catalog, idx = shop
    with pytest.raises(ModelMismatchError, match="built with model tf_efficientnet_lite0 but this query would use tf_efficientnet_lite1"):
        add_to_index(catalog, idx, model="lite1")
    result = CliRunner().invoke(cli, ["add", str(catalog), "--index", str(idx), "--model", "lite1"])
    assert result.exit_code == 1 and "Error: index" in result.output


def test_a_second_writer_is_refused_or_waits(shop):
    catalog, idx = shop
    write_folder_catalog(catalog, ["d"], per_sku=1, seed0=50)
    with WriterLock(idx, "test"):
        with pytest.raises(IndexBusyError, match=r"is being written by another prodsearch process \(pid \d+, 'test' since .*\); "
                                                 r"wait for it to finish, or pass --wait SECONDS"):
            add_to_index(catalog, idx, num_workers=0)
        result = CliRunner().invoke(cli, ["remove", "--index", str(idx), "--sku", "a"])
        assert result.exit_code == 1 and "is being written by another prodsearch process" in result.output
    assert_consistent(idx, images=6)

    lock = WriterLock(idx, "test").__enter__()
    threading.Timer(0.5, lambda: lock.__exit__(None, None, None)).start()
    assert add_to_index(catalog, idx, num_workers=0, wait=10).added == 1


def test_readers_keep_their_snapshot_while_a_writer_commits(shop):
    catalog, idx = shop
    reader = ProductIndex.open(idx)
    write_folder_catalog(catalog, ["d"], per_sku=2, seed0=50)
    add_to_index(catalog, idx, num_workers=0)
    remove_from_index(idx, skus=["a"])
    assert len(reader) == 6 and reader.skus == ["a", "b", "c"]
    assert reader.query([catalog / "a" / "a_0.jpg"])[0].matches[0].sku == "a"  # still its generation
    assert ProductIndex.open(idx).skus == ["b", "c", "d"]


def test_queries_never_fail_during_writes(shop):
    catalog, idx = shop
    errors, counts, done = [], set(), threading.Event()

    def query_loop():
        while not done.is_set():
            try:
                index = ProductIndex.open(idx)
                counts.add(len(index))
                index.query([catalog / "b" / "b_0.jpg"], num_workers=0)
                index.close()
            except Exception as exc:  # any failure of a reader is a bug
                errors.append(repr(exc))

    thread = threading.Thread(target=query_loop)
    thread.start()
    try:
        for round_ in range(3):
            batch = write_folder_catalog(catalog.parent / f"batch{round_}", [f"n{round_}"], per_sku=2, seed0=100 + round_)
            add_to_index(batch, idx, num_workers=0)
            remove_from_index(idx, skus=[f"n{round_}"])
            time.sleep(0.05)
    finally:
        done.set()
        thread.join()
    assert not errors
    assert counts <= {6, 8}


def test_update_keeps_images_whose_files_became_unreadable(shop):
    """An unreadable file is not a deleted file; a catalog with nothing readable is refused."""
    catalog, idx = shop
    (catalog / "a" / "a_0.jpg").write_text("x")
    report = update_index(catalog, idx, num_workers=0)
    assert (report.added, report.removed, report.kept_unreadable) == (0, 0, 1)
    assert [s.reason for s in report.skipped] == ["not an image (unrecognised format)"]
    before = assert_consistent(idx, images=6, skus=3)
    for f in catalog.glob("*/*.jpg"):
        f.write_text("x")
    with pytest.raises(CatalogError, match=r"none of the 6 image files in .* could be read; e\.g\. .*: not an image "
                                           r"\(unrecognised format\); nothing was changed in"):
        update_index(catalog, idx, num_workers=0)
    result = CliRunner().invoke(cli, ["update", str(catalog), "--index", str(idx), "--silent"])
    assert result.exit_code == 1 and result.output.startswith("Error: none of the 6 image files")
    assert index_info(idx).generation == before.generation
    assert_consistent(idx, images=6, skus=3)


def symlink_to_a_non_image(path):
    (path.parent.parent / "notes.txt").write_text("root:x:0:0")
    path.unlink()
    path.symlink_to(path.parent.parent / "notes.txt")


def symlink_loop(path):
    path.unlink()
    path.symlink_to(path.name)


def folder_in_its_place(path):
    path.unlink()
    path.mkdir()
    product_image(901).save(path / "inside.jpg")  # a photo in it is a new photo of the SKU, not the old one


def sku_folder_gone_dangling(path):
    shutil.rmtree(path.parent)
    path.parent.symlink_to(path.parent.parent / "unmounted")


@pytest.mark.parametrize("make,reason,kept", [
    (symlink_to_a_non_image, "not an image (unrecognised format)", 1),
    (lambda p: (p.unlink(), p.symlink_to(p.parent / "gone.jpg")), "broken symlink (target missing)", 1),
    (symlink_loop, "symlink loop", 1),
    (folder_in_its_place, "not a regular file", 1),
    (sku_folder_gone_dangling, "broken symlink (target missing)", 2),
], ids=["symlink to a non-image", "dangling symlink", "symlink loop", "folder in its place", "dangling SKU folder"])
def test_update_keeps_a_photo_that_cannot_be_read_whatever_its_entry_became(shop, make, reason, kept):
    """Only a file with no directory entry left is removed; anything else that cannot be read keeps its image."""
    catalog, idx = shop
    make(catalog / "a" / "a_0.jpg")
    result = CliRunner().invoke(cli, ["update", str(catalog), "--index", str(idx), "--silent", "--json",
                                      "--workers", "0"], catch_exceptions=False)
    data = json.loads(result.stdout)
    assert (data["removed"], data["kept_unreadable"], data["removed_skus"]) == (0, kept, [])
    where = catalog / "a" / "a_0.jpg" if kept == 1 else catalog / "a"  # a SKU folder's reason stands for its files
    assert {s["path"]: s["reason"] for s in data["skipped"]}[str(where)] == reason
    assert_consistent(idx, images=6 + data["added"], skus=3)
    assert (catalog / "a").is_symlink() or ProductIndex.open(idx).query([catalog / "a" / "a_1.jpg"])[0].matches[0].sku == "a"


def test_update_removes_a_manifest_photo_only_when_its_file_is_gone(tmp_path, small_embedder):
    for i in range(4):
        product_image(i).save(tmp_path / f"{i}.png")
    csv_path = write_csv(tmp_path / "c.csv", [{"image": f"{i}.png", "sku": f"S{i}"} for i in range(4)])
    build_index(csv_path, tmp_path / "idx", model=small_embedder, num_workers=0)
    (tmp_path / "0.png").unlink()  # gone
    (tmp_path / "1.png").unlink()
    (tmp_path / "1.png").symlink_to(tmp_path / "elsewhere.png")  # dangling: kept
    report = update_index(csv_path, tmp_path / "idx", num_workers=0)
    assert (report.removed, report.removed_skus, report.kept_unreadable) == (1, ["S0"], 1)
    assert {s.reason for s in report.skipped} == {"file not found", "broken symlink (target missing)"}
    assert_consistent(tmp_path / "idx", images=3, skus=3)


def test_update_refuses_to_remove_most_of_the_index(shop):
    catalog, idx = shop
    for sku in ("a", "b"):
        shutil.rmtree(catalog / sku)
    before = index_info(idx)
    with pytest.raises(MassRemovalError, match=r"would remove 4 of the 6 images in .* \(67%\); removing more than "
                                               r"50% of an index in one update needs --allow-mass-removal"):
        update_index(catalog, idx, num_workers=0)
    assert index_info(idx).generation == before.generation
    result = CliRunner().invoke(cli, ["update", str(catalog), "--index", str(idx), "--silent"])
    assert result.exit_code == 1 and "needs --allow-mass-removal" in result.output
    result = CliRunner().invoke(cli, ["update", str(catalog), "--index", str(idx), "--silent", "--allow-mass-removal"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Updated {idx}: 0 images added, 4 removed")
    assert_consistent(idx, images=2, skus=1)


def test_the_writer_lock_held_by_another_process(shop):
    """The lock is an OS file lock (filelock): another process holding it keeps writers out, naming
    it, and the lock is free the moment that process dies."""
    import subprocess
    import sys

    catalog, idx = shop
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom prodsearch.indexer.lock import WriterLock\n"
         f"with WriterLock({str(idx)!r}, 'other'):\n    print('held', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IndexBusyError, match=rf"being written by another prodsearch process \(pid {holder.pid}, "
                                                 r"'other' since .*\)"):
            remove_from_index(idx, skus=["a"])
    finally:
        holder.kill()
        holder.wait()
    assert remove_from_index(idx, skus=["a"]).removed == 2  # free once its holder is gone
