"""Catalog statistics against hand counts, and the stats command's files."""

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.eval.stats import catalog_stats, log2_bin
from prodsearch.catalog.listing import Item

from conftest import unprivileged, write_folder_catalog

# (sku, product, category, md5s of its images)
CATALOG = [("A", "p1", "X/Y", "ab"), ("A", "p2", "X/Y", "a"), ("B", None, "X/Z", "cde"), ("C", None, "W", "c"),
           ("D", None, None, "fghi")]


def items():
    out, md5 = [], {}
    for sku, product, category, digests in CATALOG:
        for n, digest in enumerate(digests):
            path = Path(f"/{sku}/{product}/{n}.jpg")
            out.append(Item(path, sku, None, category, product))
            md5[path] = digest
    return out, md5


def test_log2_bins():
    assert [log2_bin(n) for n in (1, 2, 3, 4, 7, 8, 1000)] == ["1", "2-3", "2-3", "4-7", "4-7", "8-15", "512-1023"]


def test_catalog_stats_by_hand():
    its, md5 = items()
    s = catalog_stats(its, "test", lambda it: md5[it.path])
    assert (s.images, s.products, s.skus) == (11, 5, 4)
    assert s.images_per_product == {1: 2, 2: 1, 3: 1, 4: 1}  # p2 and C have 1; p1 2; B 3; D 4
    level1, level2 = s.levels
    assert (level1.categories, level1.largest, level1.cumulative_share) == (2, [("X", 3), ("W", 1)], [0.75, 1.0])
    assert level1.products_per_category_bins == {"1": 1, "2-3": 1} and level1.share_of_top(0.1) == 0.75
    assert (level2.categories, level2.largest) == (2, [("X/Y", 2), ("X/Z", 1)])
    assert level2.cumulative_share == pytest.approx([2 / 3, 1.0])
    d = s.duplicates
    assert (d.images, d.distinct, d.duplicate_images, d.groups, d.group_sizes) == (11, 9, 4, 2, {2: 2})
    assert d.across_products == 2  # a: p1 and p2; c: B and C
    assert d.across_categories == {1: 1, 2: 1}  # c spans X and W; a stays in X/Y
    assert json.loads(json.dumps(s.to_dict()))["levels"][0]["top_10pct_share"] == 0.75
    assert catalog_stats(its, "test").duplicates is None


def test_stats_command_writes_json_and_plots(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["a", "b", "c"], per_sku=2)
    shutil.copy(root / "a" / "a_0.jpg", root / "b" / "copy.jpg")
    result = CliRunner().invoke(cli, ["stats", str(root), "--out", str(tmp_path / "stats")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == ["7 images of 3 products (3 SKUs)", "images per product: min 2, median 2, mean 2.33, max 3",
                         "  products with 2 images: 2, 3 images: 1"]
    assert lines[3] == "duplicates (MD5): 2 of 7 images are copies of 1 files; 1 files under several products"
    data = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert data["duplicates"]["across_products"] == 1 and data["levels"] == []
    pngs = sorted(p.name for p in (tmp_path / "stats").glob("*.png"))
    assert pngs == ["category_cumulative_share.png", "duplicates.png", "images_per_product.png",
                    "products_per_category.png"]
    assert all((tmp_path / "stats" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_stats_skips_dangling_symlinks(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["a", "b"], per_sku=2)
    os.symlink("gone.jpg", root / "a" / "dangling.jpg")
    result = CliRunner().invoke(cli, ["stats", str(root), "--out", str(tmp_path / "stats")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "4 images of 2 products (2 SKUs)"
    assert lines[lines.index("skipped: 1") + 1] == f"  {root / 'a' / 'dangling.jpg'}: broken symlink (target missing)"
    data = json.loads((tmp_path / "stats" / "stats.json").read_text())
    assert data["skipped"] == [{"path": str(root / "a" / "dangling.jpg"), "reason": "broken symlink (target missing)"}]


def test_stats_skips_unreadable_files(public_tmp, monkeypatch):
    base = public_tmp
    base.chmod(0o777)
    monkeypatch.setenv("MPLCONFIGDIR", str(base))
    root = write_folder_catalog(base / "cat", ["a", "b"], per_sku=2)
    (root / "b" / "b_1.jpg").chmod(0o000)
    with unprivileged():
        if can_read(root / "b" / "b_1.jpg"):
            pytest.skip("file permissions do not apply here")
        result = CliRunner().invoke(cli, ["stats", str(root), "--out", str(base / "stats")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "3 images of 2 products (2 SKUs)"
    unreadable = str((root / "b" / "b_1.jpg").resolve())
    assert lines[lines.index("skipped: 1") + 1] == f"  {unreadable}: cannot read file: Permission denied"
    data = json.loads((base / "stats" / "stats.json").read_text())
    assert data["skipped"] == [{"path": unreadable, "reason": "cannot read file: Permission denied"}]
    assert data["images"] == 3 and data["duplicates"]["images"] == 3


def test_stats_lists_at_most_20_skipped_files(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["a"])
    for i in range(25):
        (root / "a" / f"notes{i:02d}.txt").write_text("x")
    result = CliRunner().invoke(cli, ["stats", str(root), "--out", str(tmp_path / "stats"), "--no-md5"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    start = lines.index("skipped: 25")
    assert lines[start + 1] == f"  {root / 'a' / 'notes00.txt'}: unsupported file type .txt"
    assert lines[start + 21] == "  ... and 5 more"
    assert len(json.loads((tmp_path / "stats" / "stats.json").read_text())["skipped"]) == 25


def test_stats_when_no_file_can_be_read(tmp_path, monkeypatch):
    root = write_folder_catalog(tmp_path / "cat", ["a"])

    def vanished(path):
        raise FileNotFoundError(2, "No such file or directory", str(path))

    monkeypatch.setattr("prodsearch.indexer.ingest.file_md5", vanished)
    result = CliRunner().invoke(cli, ["stats", str(root), "--out", str(tmp_path / "stats")])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # an error message, not a crash
    assert "none of the 1 image files in" in result.output
    assert "cannot read file: No such file or directory" in result.output


def can_read(path: Path) -> bool:
    try:
        path.read_bytes()
        return True
    except PermissionError:
        return False
