"""The synthetic shop: deterministic, well-formed, with look-alikes, and snapshots unlike catalog photos."""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from prodsearch.synthetic import (
    SHAPES,
    ProductSpec,
    make_product_specs,
    render_product,
    render_snapshot,
    write_synthetic_dataset,
)

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
CATEGORY = re.compile(r"^[A-Z][A-Za-z]+/[A-Z][A-Za-z]+$")
DETAIL_FIELDS = {"sku", "name", "variant", "detail_color"}  # all a look-alike may change


def families(specs: list[ProductSpec]) -> dict[str, list[ProductSpec]]:
    out: dict[str, list[ProductSpec]] = defaultdict(list)
    for spec in specs:
        out[spec.family].append(spec)
    return out


def lookalike_group() -> list[ProductSpec]:
    return next(g for g in families(make_product_specs()).values() if len(g) > 1)


def as_array(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int16)


def test_specs_are_deterministic_per_seed():
    assert make_product_specs(48, seed=0) == make_product_specs(48, seed=0)
    assert make_product_specs(48, seed=0) != make_product_specs(48, seed=1)


def test_default_specs_look_like_a_shop():
    specs = make_product_specs()
    assert len(specs) >= 40
    assert len({s.sku for s in specs}) == len(specs)
    assert all(SLUG.match(s.sku) for s in specs), [s.sku for s in specs if not SLUG.match(s.sku)]
    assert all(CATEGORY.match(s.category) for s in specs)
    assert len({s.category for s in specs}) >= 8
    assert len({s.brand for s in specs}) >= 5
    assert len({s.shape for s in specs}) >= 4 and {s.shape for s in specs} <= set(SHAPES)


def test_lookalike_families_differ_only_in_a_detail():
    specs = make_product_specs()
    groups = [g for g in families(specs).values() if len(g) > 1]
    assert groups, "no look-alike family"
    assert sum(len(g) for g in groups) >= len(specs) / 3
    for group in groups:
        first = group[0]
        assert len({s.variant for s in group}) == len({s.detail_color for s in group}) == len(group)
        for other in group[1:]:
            same_otherwise = dataclasses.replace(other, **{f: getattr(first, f) for f in DETAIL_FIELDS})
            assert same_otherwise == first


@pytest.mark.parametrize("n", [1, 2, 4, 6, 200])
def test_any_number_of_skus(n):
    specs = make_product_specs(n, seed=3)
    assert len(specs) == n
    assert len({s.sku for s in specs}) == n


def test_zero_skus_is_an_error():
    with pytest.raises(ValueError):
        make_product_specs(0)


def test_catalog_photo_is_product_on_white():
    spec = make_product_specs(6)[0]
    img = render_product(spec, size=96)
    assert img.mode == "RGB" and img.size == (96, 96)
    a = as_array(img)
    corners = np.stack([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]])
    assert (corners >= 240).all()
    assert (np.abs(a[40:56, 40:56] - 250) > 30).any(), "no product in the middle"
    assert render_product(spec, size=96).tobytes() == img.tobytes()


def test_lookalikes_render_almost_identically():
    a, b = (as_array(render_product(s, size=128)) for s in lookalike_group()[:2])
    differing = (np.abs(a - b).max(axis=2) > 40).mean()
    assert 0 < differing < 0.05


def test_snapshot_is_a_cluttered_photo_not_the_catalog_image():
    spec = make_product_specs(6)[0]
    catalog = render_product(spec, size=96)
    snap = render_snapshot(spec, np.random.default_rng(0), size=96)
    assert snap.mode == "RGB" and snap.size == (96, 96)
    assert np.abs(as_array(snap) - as_array(catalog)).mean() > 10
    a = as_array(snap)
    corners = np.stack([a[0, 0], a[0, -1], a[-1, 0], a[-1, -1]])
    assert not (corners >= 240).all(), "snapshot background is plain white"
    assert a.reshape(-1, 3).std(axis=0).mean() > 10


def test_snapshots_follow_the_rng():
    spec = make_product_specs(6)[0]
    first = render_snapshot(spec, np.random.default_rng(7), size=64).tobytes()
    assert render_snapshot(spec, np.random.default_rng(7), size=64).tobytes() == first
    assert render_snapshot(spec, np.random.default_rng(8), size=64).tobytes() != first


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_write_dataset_layout_and_csvs(tmp_path):
    ds = write_synthetic_dataset(tmp_path / "shop", n_skus=6, snapshots_per_sku=2, size=64, seed=0)
    root = tmp_path / "shop"
    assert ds.catalog_dir == root / "catalog" and ds.queries_dir == root / "queries"
    assert [p.sku for p in ds.products] == [p.sku for p in make_product_specs(6, seed=0)]
    for csv_path, count, folder in ((ds.catalog_csv, 6, "catalog"), (ds.queries_csv, 12, "queries")):
        header, *rows = read_csv(csv_path)
        assert header == ["image", "sku", "name", "category"]
        assert len(rows) == count
        for image, sku, name, category in rows:
            assert image.startswith(f"{folder}/{sku}/") and not image.startswith("/")
            with Image.open(csv_path.parent / image) as img:
                assert img.mode == "RGB" and img.size == (64, 64)
            assert name and "/" in category
    assert sorted(p.name for p in (ds.catalog_dir / ds.products[0].sku).iterdir()) == [f"{ds.products[0].sku}.jpg"]
    assert len(list(ds.queries_dir.glob("*/*.jpg"))) == 12


def test_write_dataset_is_byte_identical_per_seed(tmp_path):
    def written(name, seed):
        root = tmp_path / name
        write_synthetic_dataset(root, n_skus=4, snapshots_per_sku=2, size=48, seed=seed)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    first = written("a", seed=5)
    assert len(first) == 2 + 4 * 3
    assert written("b", seed=5) == first
    assert written("c", seed=6) != first


def test_training_snapshots_are_their_own_split(tmp_path):
    """Training snapshots go to train/ and train.csv (with the catalog photos), drawn from their own
    stream: never an evaluation snapshot, and the evaluation snapshots stay the same bytes."""
    plain = write_synthetic_dataset(tmp_path / "plain", n_skus=4, snapshots_per_sku=2, size=48, seed=5)
    ds = write_synthetic_dataset(tmp_path / "shop", n_skus=4, snapshots_per_sku=2, size=48, seed=5,
                                 train_snapshots_per_sku=3)
    assert plain.train_dir is None and plain.train_csv is None and not (tmp_path / "plain" / "train").exists()
    assert ds.train_dir == tmp_path / "shop" / "train" and ds.train_csv == tmp_path / "shop" / "train.csv"
    queries = {p.relative_to(ds.queries_dir): p.read_bytes() for p in sorted(ds.queries_dir.glob("*/*.jpg"))}
    assert queries == {p.relative_to(plain.queries_dir): p.read_bytes()
                       for p in sorted(plain.queries_dir.glob("*/*.jpg"))}
    training = {p.read_bytes() for p in ds.train_dir.glob("*/*.jpg")}
    assert len(training) == 4 * 3 and not training & set(queries.values())
    header, *rows = read_csv(ds.train_csv)
    assert header == ["image", "sku", "name", "category"] and len(rows) == 4 + 4 * 3
    assert sorted(image.split("/")[0] for image, *_ in rows) == ["catalog"] * 4 + ["train"] * 12
    assert all(image.split("/")[1] == sku for image, sku, *_ in rows)
