"""Indexes whose photos and queries are embedded as several fixed views: the fused mean against a
plain loop, the setting kept by the index and used by everything that embeds for it (query, add,
rebuild, the HTTP server), older manifests opening as one view, and ``info`` showing it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from prodsearch.cli import cli
from prodsearch.cli.lifecycle import format_views
from prodsearch.errors import IndexDirError
from prodsearch.indexer import ProductIndex, build_index
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.info import index_info
from prodsearch.indexer.lifecycle import add_to_index
from prodsearch.indexer.manifest import read_manifest
from prodsearch.retrieval import create_embedder, embed_files, embed_pil, load_image
from prodsearch.retrieval.preprocess import Preprocess, decode_min_side
from prodsearch.retrieval.torch_encoder import TorchEncoder
from prodsearch.retrieval.views import MAX_VIEWS, crop_views, decode_side, fuse_views, view_inputs
from prodsearch.serve.app import create_app
from prodsearch.serve.batcher import DirectEmbedding, MicroBatcher
from prodsearch.serve.server import open_service
from prodsearch.serve.service import ServeSettings

from conftest import product_image, snapshot, write_folder_catalog

SMALL = 64  # px: views do not depend on resolution, and tests stay fast
VIEWS = 3
FLOAT16 = 2e-3  # catalog.db stores vectors as float16


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def small_embedder():
    return create_embedder(img_size=SMALL)


@pytest.fixture(scope="module")
def encoder(small_embedder):
    return TorchEncoder(small_embedder, "cpu", "fp32")


@pytest.fixture(scope="module")
def views_index(tmp_path_factory, small_embedder):
    """An index of 4 SKUs (one with 2 photos) built with 3 views, and query snapshots."""
    root = tmp_path_factory.mktemp("views")
    skus = ["a", "b", "c", "d"]
    catalog = write_folder_catalog(root / "catalog", skus)
    product_image(4242).save(catalog / "d" / "d_back.jpg", quality=92)
    for s, sku in enumerate(skus):
        snapshot(product_image(1000 * s), seed=s).save(root / f"q-{sku}.jpg", quality=90)
    report = build_index(catalog, root / "idx", model=small_embedder, num_workers=0, views=VIEWS)
    assert report.views == VIEWS
    return {"root": root, "catalog": catalog, "index": root / "idx", "skus": skus,
            "queries": [root / f"q-{sku}.jpg" for sku in skus]}


def stored_vectors(index_dir) -> dict[str, np.ndarray]:
    """The catalog's stored vector of each image, by path."""
    db = CatalogDB(index_dir / "catalog.db")
    try:
        rows = db.image_rows()
        vectors = db.vectors([r["id"] for r in rows], read_manifest(index_dir).model.embed_dim)
        return {r["path"]: v.astype(np.float32) for r, v in zip(rows, vectors)}
    finally:
        db.close()


# ------------------------------------------------------------------ the views and their fusion

def test_fuse_views_is_the_normalised_mean_of_each_group():
    rng = np.random.default_rng(0)
    for n in range(2, MAX_VIEWS + 1):
        vectors = rng.normal(size=(4 * n, 7)).astype(np.float32)
        expected = []
        for photo in range(4):
            mean = np.zeros(7)
            for row in vectors[photo * n:(photo + 1) * n]:
                mean += row / np.linalg.norm(row) / n
            expected.append(mean / np.linalg.norm(mean))
        fused = fuse_views(vectors, n)
        assert fused.shape == (4, 7) and fused.dtype == np.float32
        np.testing.assert_allclose(fused, expected, atol=1e-6)
    same = rng.normal(size=(3, 7)).astype(np.float32)
    assert fuse_views(same, 1) is same  # one view: the vectors as they were, to the bit
    with pytest.raises(ValueError, match="groups of 3"):
        fuse_views(same[:2], 3)
    with pytest.raises(ValueError, match=f"1 to {MAX_VIEWS}"):
        fuse_views(same, MAX_VIEWS + 1)


def test_view_inputs_are_the_preprocessed_crops(small_embedder):
    preprocess = Preprocess(small_embedder.data_config)
    img = product_image(3, size=120).resize((150, 120))
    one = view_inputs(img, 1, preprocess)
    np.testing.assert_array_equal(one, preprocess(img)[None])
    three = view_inputs(img, 3, preprocess)
    assert three.shape == (3, *preprocess.input_shape)
    for got, view in zip(three, crop_views(img, 3)):
        np.testing.assert_array_equal(got, preprocess(view))
    # Decoding may downscale a JPEG, but never so far that a 70% crop needs upscaling.
    assert decode_side(256, 1) == 256 and decode_side(256, 6) == 366


# ------------------------------------------------------------------ embed_files

def test_embed_files_with_views_is_the_fused_mean_of_the_views_embedded_one_by_one(tmp_path, encoder):
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        product_image(i, size=90).resize((110, 90)).save(paths[-1])
    (tmp_path / "broken.png").write_bytes(b"not an image")
    paths.insert(2, tmp_path / "broken.png")
    side = decode_side(decode_min_side(encoder.config.data_config), VIEWS)
    expected = []
    for path in paths[:2] + paths[3:]:
        views = [embed_pil(encoder, [view])[0] for view in crop_views(load_image(path, min_side=side), VIEWS)]
        expected.append(normalized(np.mean(views, axis=0)))
    # batch sizes: one photo a batch; a batch smaller than a photo's views; several photos a batch
    for batch_size, workers in ((3, 0), (2, 2), (8, 1)):
        result = embed_files(encoder, paths, views=VIEWS, batch_size=batch_size, num_workers=workers)
        assert result.positions.tolist() == [0, 1, 3, 4, 5] and list(result.failures) == [2]
        assert result.vectors.shape == (5, encoder.dim) and result.sizes.tolist()[0] == [110, 90]
        np.testing.assert_allclose(result.vectors, expected, atol=1e-5)
    np.testing.assert_allclose(embed_pil(encoder, [load_image(p) for p in paths[:2]], views=VIEWS), expected[:2],
                               atol=1e-5)
    single = embed_files(encoder, paths[:2], num_workers=0).vectors
    assert np.abs(single - np.asarray(expected[:2])).max() > 1e-3  # the views made a difference


def test_views_are_cropped_from_the_upright_photo(tmp_path, encoder):
    """A photo stored sideways with an EXIF orientation is cropped as it is seen, not as stored."""
    upright = product_image(7, size=90).resize((120, 90))
    upright.save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    result = embed_files(encoder, [tmp_path / "upright.png", tmp_path / "sideways.png"], views=MAX_VIEWS,
                         num_workers=0)
    np.testing.assert_allclose(result.vectors[0], result.vectors[1], atol=1e-5)
    assert result.sizes.tolist() == [[120, 90], [120, 90]]


# ------------------------------------------------------------------ the index keeps its views

def test_the_index_records_its_views_and_embeds_queries_with_them(views_index):
    idx = views_index["index"]
    assert json.loads((idx / "manifest.json").read_text())["embedding"] == {"views": VIEWS}
    assert read_manifest(idx).views == VIEWS
    index = ProductIndex.open(idx)
    try:
        queries = views_index["queries"]
        np.testing.assert_allclose(index.embed(queries, num_workers=0).vectors,
                                   embed_files(index.encoder, queries, views=VIEWS, num_workers=0).vectors, atol=1e-6)
        # the catalog was embedded with views too: a catalog photo finds itself at ~1.0
        photo = views_index["catalog"] / "b" / "b_0.jpg"
        stored = stored_vectors(idx)[str(photo)]
        np.testing.assert_allclose(stored, embed_files(index.encoder, [photo], views=VIEWS).vectors[0], atol=FLOAT16)
        [result] = index.query([photo], top_k=2)
        assert result.matches[0].sku == "b" and result.matches[0].score == pytest.approx(1.0, abs=FLOAT16)
        assert [r.matches[0].sku for r in index.query(queries)] == views_index["skus"]
    finally:
        index.close()


def test_add_embeds_with_the_index_views(views_index, tmp_path):
    idx = shutil.copytree(views_index["index"], tmp_path / "idx")
    catalog = shutil.copytree(views_index["catalog"], tmp_path / "catalog")
    write_folder_catalog(catalog, ["e"], seed0=90)
    report = add_to_index(catalog, idx, num_workers=0)
    assert report.added == 1 and report.new_skus == ["e"]
    index = ProductIndex.open(idx)
    try:
        photo = catalog / "e" / "e_0.jpg"
        stored = stored_vectors(idx)[str(photo)]
        np.testing.assert_allclose(stored, embed_files(index.encoder, [photo], views=VIEWS).vectors[0], atol=FLOAT16)
        assert np.abs(stored - embed_files(index.encoder, [photo]).vectors[0]).max() > 10 * FLOAT16
    finally:
        index.close()


def test_a_rebuild_keeps_the_views_and_refuses_others(views_index, tmp_path, small_embedder):
    idx = shutil.copytree(views_index["index"], tmp_path / "idx")
    with pytest.raises(IndexDirError, match=r"built with --views 3.*leave out --views to rebuild with 3"):
        build_index(views_index["catalog"], idx, model=small_embedder, views=2)
    result = invoke("index", views_index["catalog"], "--index", idx, "--views", 1)
    assert result.exit_code == 1 and "built with --views 3" in result.output and "choose another --index" in result.output
    assert build_index(views_index["catalog"], idx, num_workers=0).views == VIEWS  # its own
    assert build_index(views_index["catalog"], idx, num_workers=0, views=VIEWS).views == VIEWS
    assert read_manifest(idx).views == VIEWS
    np.testing.assert_allclose(sorted(stored_vectors(idx).items())[0][1],
                               sorted(stored_vectors(views_index["index"]).items())[0][1], atol=1e-6)


def test_a_manifest_from_before_views_opens_as_one_view(views_index, tmp_path):
    idx = shutil.copytree(views_index["index"], tmp_path / "idx")
    manifest = json.loads((idx / "manifest.json").read_text())
    del manifest["embedding"]
    (idx / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(idx).views == 1
    index = ProductIndex.open(idx)
    try:
        query = views_index["queries"][:1]
        np.testing.assert_allclose(index.embed(query).vectors, embed_files(index.encoder, query).vectors, atol=1e-6)
    finally:
        index.close()
    for bad in (0, MAX_VIEWS + 1, "3", None):
        (idx / "manifest.json").write_text(json.dumps({**manifest, "embedding": {"views": bad}}))
        with pytest.raises(IndexDirError, match="damaged.*embedding.views"):
            read_manifest(idx)


def test_cli_index_views_info_and_json(views_index, tmp_path):
    catalog = views_index["catalog"]
    result = invoke("index", catalog, "--index", tmp_path / "idx", "--model", f"lite0@{SMALL}", "--views", 2,
                    "--workers", 0, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["views"] == 2 and read_manifest(tmp_path / "idx").views == 2
    assert index_info(tmp_path / "idx").views == 2
    info = invoke("info", "--index", tmp_path / "idx")
    assert "views:      2 (each photo, catalog and query, embedded as the mean of itself and 1 crops" in info.output
    assert json.loads(invoke("info", "--index", views_index["index"], "--json").stdout)["views"] == VIEWS
    assert format_views(1) == "1 (each photo embedded as itself)"
    refused = invoke("index", catalog, "--index", tmp_path / "other", "--views", MAX_VIEWS + 1)
    assert refused.exit_code == 2 and f"1<=x<={MAX_VIEWS}" in refused.output
    assert "--views" in invoke("index", "--help").output


# ------------------------------------------------------------------ the HTTP server

def test_the_server_answers_a_views_index_as_product_index_query(views_index):
    index = ProductIndex.open(views_index["index"])
    try:
        for batching in (False, True):
            service = open_service(ServeSettings(views_index["index"], batching=batching, refresh_seconds=0.1))
            with TestClient(create_app(service), raise_server_exceptions=False) as client:
                assert client.get("/v1/index").json()["views"] == VIEWS
                for path in views_index["queries"][:2]:
                    body = client.post("/v1/search", data={"top_k": "3"},
                                       files=[("image", (path.name, path.read_bytes(), "image/jpeg"))]).json()
                    [expected] = index.query([path], top_k=3)
                    assert [m["sku"] for m in body["matches"]] == [m.sku for m in expected.matches]
                    np.testing.assert_allclose([m["score"] for m in body["matches"]],
                                               [m.score for m in expected.matches], atol=1e-5)
    finally:
        index.close()


class RowSums:
    """A stand-in encoder: each row's vector depends on that row only."""

    def __init__(self):
        self.steps: list[int] = []

    def encode(self, batch: np.ndarray) -> np.ndarray:
        self.steps.append(len(batch))
        flat = batch.reshape(len(batch), -1)
        return np.stack([flat.sum(axis=1), flat.max(axis=1), flat.min(axis=1)], axis=1)


def test_the_batcher_counts_photos_and_fuses_each_request_views():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(1)
    requests = [rng.normal(size=((1 + i % 3) * VIEWS, 3, 2, 2)).astype(np.float32) for i in range(12)]
    encoder, photos = RowSums(), []
    batcher = MicroBatcher(encoder, max_batch=4, wait_ms=20, views=VIEWS, observe=photos.append)
    try:
        def ask(x):
            with batcher.expecting():
                return batcher.embed(x)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, requests))
    finally:
        batcher.close()
    direct = DirectEmbedding(RowSums(), views=VIEWS)
    for x, got in zip(requests, answers):
        assert got.shape == (len(x) // VIEWS, 3)
        np.testing.assert_allclose(got, direct.embed(x), atol=1e-6)
        np.testing.assert_allclose(got, fuse_views(RowSums().encode(x), VIEWS), atol=1e-6)
    assert sum(photos) == sum(len(x) for x in requests) // VIEWS and max(photos) <= 4  # counted in photos
    assert [n * VIEWS for n in photos] == encoder.steps
