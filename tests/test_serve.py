"""The HTTP API through FastAPI's TestClient: every endpoint, every error code, auth, writes, and
a live refresh after a CLI add in another process. Answers are checked against the Python API."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from prodsearch.indexer import ProductIndex, build_index, index_info, update_index
from prodsearch.serve.app import create_app
from prodsearch.serve.photos import PixelBudget
from prodsearch.serve.server import open_service
from prodsearch.serve.service import ServeSettings, category_tree
from prodsearch.indexer.uploads import UPLOADS

from conftest import product_image, snapshot, unprivileged, write_csv
from serving import multipart

TOKEN = "t0ken-for-the-tests-only"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# sku, name, category: a tree with a subtree, a top-level-only product and one without a category.
PRODUCTS = [("milk-1", "Milk 1.5%", "Dairy/Milk"), ("milk-3", "Milk 3.5%", "Dairy/Milk"),
            ("yog", "Yogurt", "Dairy/Yogurt"), ("apple", "Apple", "Fruit/Apple"), ("lime", "Lime", "Fruit"),
            ("cake", "Fruitcake", "Fruitcake"), ("misc", "Thing", "")]


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, "JPEG", quality=quality)
    return out.getvalue()


def query_photo(n: int) -> bytes:
    """A customer snapshot of product number ``n`` of :data:`PRODUCTS`."""
    return jpeg(snapshot(product_image(1000 * n), seed=n))


@pytest.fixture(scope="module")
def served_index(tmp_path_factory, embedder) -> Path:
    return build_served(tmp_path_factory.mktemp("served"), embedder)


@pytest.fixture(scope="module")
def served_milvus_index(tmp_path_factory, embedder) -> Path:
    """The same index with its vectors in Milvus Lite."""
    return build_served(tmp_path_factory.mktemp("served-milvus"), embedder, vector_store="milvus")


def build_served(root: Path, embedder, **options) -> Path:
    (root / "catalog").mkdir()
    rows = []
    for n, (sku, name, category) in enumerate(PRODUCTS):
        path = root / "catalog" / f"{sku}.jpg"
        product_image(1000 * n).save(path, quality=92)
        rows.append({"image": path.name, "sku": sku, "name": name, "category": category})
    product_image(77).save(root / "catalog" / "milk-1-back.jpg", quality=92)
    rows.append({"image": "milk-1-back.jpg", "sku": "milk-1", "name": "", "category": ""})
    build_index(write_csv(root / "catalog" / "catalog.csv", rows), root / "idx", model=embedder, num_workers=0,
                **options)
    return root / "idx"


@pytest.fixture
def index_copy(served_index, tmp_path) -> Path:
    """A copy of the served index a test may write to."""
    return Path(shutil.copytree(served_index, tmp_path / "idx"))


REPRS = ("PosixPath(", "Listing(", "Item(", "Skipped(", "<prodsearch.")  # Python objects, not words for a client


def words_for_a_client(index_dir: Path):
    """A response hook: every error body of every test here is checked for Python reprs and for
    where the index lies on the server."""
    private = {str(index_dir), str(index_dir.resolve())}

    def check(response) -> None:
        if response.status_code >= 400:
            body = response.read().decode("utf-8", "replace")
            assert not [r for r in REPRS if r in body], body
            assert not [p for p in private if p in body], body

    return check


@contextlib.contextmanager
def client_for(index_dir: Path, **settings):
    service = open_service(ServeSettings(index_dir, **{"token": TOKEN, "refresh_seconds": 0.1, **settings}))
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        client.event_hooks = {"response": [words_for_a_client(index_dir)]}
        client.service = service
        yield client


@pytest.fixture(scope="module")
def client(served_index):
    """A server over the shared index, read-only use (no token: writes are off)."""
    with client_for(served_index, token=None) as c:
        yield c


def files(*photos: bytes, name: str = "photo.jpg") -> list:
    return [("image", (name, p, "image/jpeg")) for p in photos]


# ------------------------------------------------------------------ search

def test_search_answers_the_right_sku_with_what_the_python_api_answers(client, served_index):
    index = ProductIndex.open(served_index)
    for n in (0, 3, 4):
        body = client.post("/v1/search", files=files(query_photo(n)), data={"top_k": "3"}).json()
        vector = index.encoder.encode(client.service.decoder.inputs([query_photo(n)]))
        expected = index.search(vector, top_k=3)[0]
        assert [m["sku"] for m in body["matches"]] == [m.sku for m in expected]
        assert body["matches"][0]["sku"] == PRODUCTS[n][0] == body["match"]
        np.testing.assert_allclose([m["score"] for m in body["matches"]], [m.score for m in expected], atol=1e-5)
        first = body["matches"][0]
        assert first["name"] == PRODUCTS[n][1] and first["image_url"] == f"/v1/images/{first['image_id']}"
        assert body["photos"] == 1 and body["generation"] == index.generation
        assert set(body["timings_ms"]) == {"decode", "embed", "search", "total"}
        assert body["timings_ms"]["total"] >= body["timings_ms"]["embed"] > 0
    index.close()


def test_json_base64_and_query_parameters_answer_as_multipart(client):
    photo = query_photo(2)
    multipart = client.post("/v1/search?top_k=2", files=files(photo)).json()
    as_json = client.post("/v1/search", json={"images_base64": [base64.b64encode(photo).decode()], "top_k": 2}).json()
    data_url = client.post("/v1/search", json={
        "images_base64": ["data:image/jpeg;base64," + base64.b64encode(photo).decode()], "top_k": 2}).json()
    assert len(multipart["matches"]) == 2
    assert multipart["matches"] == as_json["matches"] == data_url["matches"]


def test_several_photos_are_fused_as_query_as_one(client, served_index, tmp_path):
    photos = [query_photo(1), jpeg(snapshot(product_image(1000), seed=99))]
    body = client.post("/v1/search", files=files(*photos)).json()
    for i, p in enumerate(photos):
        (tmp_path / f"{i}.jpg").write_bytes(p)
    index = ProductIndex.open(served_index)
    fused = index.query_as_one([tmp_path / "0.jpg", tmp_path / "1.jpg"])
    index.close()
    assert body["photos"] == 2
    assert [m["sku"] for m in body["matches"]] == [m.sku for m in fused.matches]
    np.testing.assert_allclose([m["score"] for m in body["matches"]], [m.score for m in fused.matches], atol=1e-5)


def test_micro_batching_on_and_off_answer_alike(served_index):
    answers = {}
    for batching in (True, False):
        with client_for(served_index, batching=batching) as client:
            assert client.service.batching is batching
            if not batching:  # one single-threaded model step per request
                assert client.service.index.encoder.session.get_session_options().intra_op_num_threads == 1
            answers[batching] = [client.post("/v1/search", files=files(query_photo(n))).json()["matches"]
                                 for n in range(3)]
            assert "prodsearch_embed_batch_photos_count 3.0" in client.get("/metrics").text
    for on, off in zip(answers[True], answers[False]):
        assert [m["sku"] for m in on] == [m["sku"] for m in off]
        np.testing.assert_allclose([m["score"] for m in on], [m["score"] for m in off], atol=1e-5)


def test_category_filter_keeps_to_the_subtree(client):
    body = client.post("/v1/search", files=files(query_photo(3)), data={"category": "Dairy", "top_k": "10"}).json()
    assert {m["sku"] for m in body["matches"]} == {"milk-1", "milk-3", "yog"}
    fruit = client.post("/v1/search", files=files(query_photo(5)), data={"category": "Fruit", "top_k": "10"}).json()
    assert {m["sku"] for m in fruit["matches"]} == {"apple", "lime"}  # not Fruitcake
    unknown = client.post("/v1/search", files=files(query_photo(0)), data={"category": "Toys"})
    assert unknown.status_code == 422 and "Toys" in unknown.json()["error"] and "Dairy" in unknown.json()["error"]


def bomb() -> bytes:
    """A small PNG of 144 million pixels: a decompression bomb, not a photo."""
    out = io.BytesIO()
    Image.new("1", (12000, 12000)).save(out, "PNG")
    return out.getvalue()


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("request_kwargs, status, says", [
    ({"files": files(b"not an image at all")}, 422, "not an image"),
    ({"files": files(query_photo(0)[:600])}, 422, "truncated"),
    ({"files": files(b"")}, 422, "empty"),
    ({"files": [("image", ("b.png", bomb(), "image/png"))]}, 422, "too large"),
    ({"files": files(*[query_photo(0)] * 9)}, 422, "at most 8"),
    ({"data": {"top_k": "3"}}, 422, "multipart"),
    ({"files": [("other", ("a.jpg", b"x", "image/jpeg"))]}, 422, "no photo"),
    ({"files": files(query_photo(0)), "data": {"top_k": "0"}}, 422, "top_k"),
    ({"files": files(query_photo(0)), "data": {"top_k": "many"}}, 422, "top_k"),
    ({"json": {"images_base64": ["%%%"]}}, 422, "base64"),
    ({"json": {"images_base64": [base64.b64encode(b'x').decode()] * 9}}, 422, "images_base64"),
    ({"json": {"images": []}}, 422, "images_base64"),
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 422, "JSON"),
    ({"content": b"raw bytes", "headers": {"content-type": "image/jpeg"}}, 422, "multipart/form-data"),
    ({"files": files(query_photo(0)), "data": {"threshold": "nan"}}, 422, "finite number"),
    ({"files": files(query_photo(0)), "params": {"threshold": "-inf"}}, 422, "finite number"),
    ({"content": b'{"images_base64": ["%s"], "threshold": Infinity}' % base64.b64encode(query_photo(0)),
      "headers": {"content-type": "application/json"}}, 422, "finite number"),
])
def test_bad_searches_get_a_reason_and_the_server_carries_on(client, request_kwargs, status, says):
    response = client.post("/v1/search", **request_kwargs)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and says.lower() in response.json()["error"].lower()
    assert client.post("/v1/search", files=files(query_photo(0))).json()["match"] == "milk-1"


@pytest.mark.parametrize("method, url, field", [
    ("get", "/v1/products?offset=100000000000000000000", "offset"), ("get", "/v1/products?offset=-1", "offset"),
    ("get", "/v1/images/9223372036854775808", "image_id"), ("get", "/v1/images/-1", "image_id"),
    ("get", "/v1/images/0?size=100000000000000000000", "size"),
    ("delete", "/v1/images/100000000000000000000", "image_id"), ("delete", "/v1/images/9223372036854775808", "image_id"),
])
def test_integers_out_of_range_are_a_422_not_a_500(index_copy, method, url, field):
    """SQLite's integers are 64-bit: a larger one must be refused before it reaches a query."""
    with client_for(index_copy) as client:
        response = client.request(method, url, headers=AUTH)
        assert response.status_code == 422, response.text
        assert set(response.json()) == {"error"} and response.json()["error"].startswith(f"{field}: ")
        assert client.get("/v1/images/0").status_code == 200


def noise_jpeg(side: int) -> bytes:
    return jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)), 95)


def test_uploads_over_the_limit_get_413(served_index):
    with client_for(served_index, max_upload_mb=0.1) as client:
        big = noise_jpeg(400)
        assert len(big) > 0.1 * 2**20
        response = client.post("/v1/search", files=files(big))
        assert response.status_code == 413 and "0.1 MB" in response.json()["error"]
        response = client.post("/v1/search", json={"images_base64": [base64.b64encode(big).decode()]})
        assert response.status_code == 413
        # A body over the whole request's limit is refused from its Content-Length, before it is read.
        form = {"content-type": "multipart/form-data; boundary=b"}
        huge = client.post("/v1/search", content=b"x" * (3 * 2**20), headers=form)
        assert huge.status_code == 413 and "error" in huge.json()
        # Without a Content-Length (chunked), it is counted as it streams in.
        streamed = client.post("/v1/search", content=(b"--b\r\n" + b"x" * 2**16 for _ in range(64)), headers=form)
        assert streamed.status_code == 413 and "error" in streamed.json()
        assert client.post("/v1/search", files=files(query_photo(0))).status_code == 200


def test_an_unexpected_failure_is_a_500_with_an_id_in_the_log(served_index, caplog):
    with client_for(served_index) as client:
        real = client.service.index.identify
        client.service.index.identify = lambda *a, **k: 1 / 0
        with caplog.at_level(logging.ERROR, logger="prodsearch.serve"):
            response = client.post("/v1/search", files=files(query_photo(0)))
        assert response.status_code == 500
        failure = response.json()["error"].split("(id ")[1].split(")")[0]
        assert failure in caplog.text and "ZeroDivisionError" in caplog.text
        client.service.index.identify = real
        assert client.post("/v1/search", files=files(query_photo(0))).status_code == 200


# ------------------------------------------------------------------ catalog

def test_products_page_filter_and_search(client):
    page = client.get("/v1/products", params={"limit": 3, "offset": 0}).json()
    everything = client.get("/v1/products", params={"limit": 100}).json()
    assert page["total"] == everything["total"] == len(PRODUCTS)
    assert [p["sku"] for p in everything["products"]] == sorted(p[0] for p in PRODUCTS)
    assert [p["sku"] for p in page["products"]] == [p["sku"] for p in everything["products"][:3]]
    second = client.get("/v1/products", params={"limit": 3, "offset": 3}).json()
    assert [p["sku"] for p in second["products"]] == [p["sku"] for p in everything["products"][3:6]]
    milk1 = next(p for p in everything["products"] if p["sku"] == "milk-1")
    assert milk1["images"] == 2 and milk1["image_url"] == f"/v1/images/{milk1['image_id']}"
    assert {p["sku"] for p in client.get("/v1/products", params={"q": "MILK"}).json()["products"]} == {"milk-1", "milk-3"}
    assert [p["sku"] for p in client.get("/v1/products", params={"q": "1.5%"}).json()["products"]] == ["milk-1"]
    assert client.get("/v1/products", params={"q": "_"}).json()["total"] == 0  # LIKE wildcards are literal
    fruit = client.get("/v1/products", params={"category": "Fruit"}).json()
    assert {p["sku"] for p in fruit["products"]} == {"apple", "lime"} and fruit["total"] == 2
    assert client.get("/v1/products", params={"category": "fruit"}).json()["total"] == 0  # case-sensitive, as search
    assert client.get("/v1/products", params={"limit": 0}).status_code == 422


def test_product_detail_and_unknown_sku(client):
    milk = client.get("/v1/products/milk-1").json()
    assert milk["name"] == "Milk 1.5%" and milk["category"] == "Dairy/Milk" and len(milk["images"]) == 2
    assert all(i["width"] == 96 and i["image_url"].startswith("/v1/images/") for i in milk["images"])
    missing = client.get("/v1/products/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]


def test_categories_tree_counts_subtrees(client):
    body = client.get("/v1/categories").json()
    assert body["uncategorised"] == 1
    tops = {c["path"]: c for c in body["categories"]}
    assert set(tops) == {"Dairy", "Fruit", "Fruitcake"}
    assert tops["Dairy"]["products"] == 3 and tops["Fruit"]["products"] == 2
    assert [(c["path"], c["products"]) for c in tops["Dairy"]["children"]] == [("Dairy/Milk", 2), ("Dairy/Yogurt", 1)]
    assert category_tree({"A/B": 2, "A": 1, None: 3}) == (
        [{"name": "A", "path": "A", "products": 3,
          "children": [{"name": "B", "path": "A/B", "products": 2, "children": []}]}], 3)


def test_images_originals_thumbnails_and_cache_headers(client, served_index):
    milk = client.get("/v1/products/milk-1").json()["images"][0]
    original = client.get(milk["image_url"])
    path = client.service.index.catalog.image(milk["image_id"])["path"]
    assert original.status_code == 200 and original.content == Path(path).read_bytes()
    assert original.headers["content-type"] == "image/jpeg" and "immutable" in original.headers["cache-control"]
    thumb = client.get(milk["image_url"], params={"size": 50})
    assert thumb.status_code == 200 and max(Image.open(io.BytesIO(thumb.content)).size) <= 64
    assert list((served_index / "thumbnails").glob("*-64.jpg"))
    again = client.get(milk["image_url"], params={"size": 50}, headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get("/v1/images/999999").status_code == 404
    assert client.get(milk["image_url"], params={"size": 5}).status_code == 422
    assert client.get("/v1/images/abc").status_code == 422


# ------------------------------------------------------------------ operations

def test_index_health_ready_metrics_and_openapi(client):
    info = client.get("/v1/index").json()
    assert info["products"] == len(PRODUCTS) and info["images"] == len(PRODUCTS) + 1
    assert info["runtime"] == "onnx" and info["model"] == "tf_efficientnet_lite0" and info["dim"] == 1280
    assert info["generation"] == info["serving_generation"]
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    client.post("/v1/search", files=files(query_photo(0)))
    client.get("/v1/products/nope")
    metrics = client.get("/metrics").text
    assert 'prodsearch_requests_total{method="POST",route="/v1/search",status="200"}' in metrics
    assert 'route="/v1/products/{sku:path}",status="404"' in metrics and "nope" not in metrics
    for stage in ("decode", "embed", "search", "total"):
        assert f'prodsearch_search_stage_seconds_count{{stage="{stage}"}}' in metrics
    assert "prodsearch_embed_batch_photos_bucket" in metrics and "prodsearch_index_generation 1.0" in metrics
    spec = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/products", "/v1/products/{sku}", "/v1/categories", "/v1/images/{image_id}",
            "/v1/products/{sku}/images", "/v1/index", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    assert set(spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]) == {"multipart/form-data",
                                                                                  "application/json"}
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'capture="environment"' in page.text
    assert client.get("/catalog").status_code == 200 and client.get("/static/style.css").status_code == 200
    assert client.get("/static/../service.py").status_code == 404


# ------------------------------------------------------------------ writes

def test_writes_need_a_token(served_index, index_copy):
    with client_for(served_index, token=None) as client:
        refused = client.delete("/v1/products/lime", headers=AUTH)
        assert refused.status_code == 403 and "--token-file" in refused.json()["error"]
    with client_for(index_copy) as client:
        missing = client.delete("/v1/products/lime")
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        wrong = client.delete("/v1/products/lime", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json() == {"error": "wrong token"}
        assert client.get("/v1/products/lime").status_code == 200
        assert client.delete("/v1/products/lime", headers=AUTH).status_code == 200


@pytest.mark.parametrize("store", ["faiss", "milvus"])
def test_add_search_and_delete_through_the_api(request, tmp_path, store):
    served = request.getfixturevalue("served_index" if store == "faiss" else "served_milvus_index")
    index_copy = Path(shutil.copytree(served, tmp_path / "idx"))
    with client_for(index_copy) as client:
        start = client.get("/v1/index").json()["generation"]
        new = product_image(424242)
        added = client.post("/v1/products/new%2Fone/images", files=files(jpeg(new), name="../../evil.jpg"),
                            data={"name": "New one", "category": "Dairy/New"}, headers=AUTH)
        assert added.status_code == 200, added.text
        body = added.json()
        assert body["generation"] == start + 1 and len(body["added"]) == 1 and body["unchanged"] == 0
        answer = client.post("/v1/search", files=files(jpeg(snapshot(new, seed=1)))).json()
        assert answer["match"] == "new/one" and answer["generation"] == start + 1
        product = client.get("/v1/products/new/one").json()
        assert product["name"] == "New one" and product["category"] == "Dairy/New"
        row = client.service.index.catalog.image(body["added"][0])
        stored = Path(row["path"])
        assert stored.parent.parent == index_copy / UPLOADS and stored.name == f"{row['md5']}.jpg"
        assert not list(index_copy.parent.rglob("evil.jpg"))
        again = client.post("/v1/products/new%2Fone/images", files=files(jpeg(new)), headers=AUTH).json()
        assert again["unchanged"] == 1 and again["added"] == [] and again["generation"] == start + 1
        # A second photo, then the first one removed: its uploaded file goes with it.
        second = client.post("/v1/products/new%2Fone/images", files=files(jpeg(product_image(4343))), headers=AUTH).json()
        removed = client.delete(f"/v1/images/{body['added'][0]}", headers=AUTH).json()
        assert removed["removed"] == body["added"] and removed["removed_skus"] == [] and not stored.exists()
        gone = client.delete("/v1/products/new%2Fone", headers=AUTH).json()
        assert gone["removed"] == second["added"] and gone["removed_skus"] == ["new/one"]
        assert gone["generation"] == start + 4 and not list((index_copy / UPLOADS).rglob("*.jpg"))
        assert client.get("/v1/products/new/one").status_code == 404
        assert client.delete("/v1/products/new%2Fone", headers=AUTH).status_code == 404
        assert client.delete("/v1/images/987654", headers=AUTH).status_code == 404
        after = client.post("/v1/search", files=files(jpeg(snapshot(new, seed=1)))).json()
        assert "new/one" not in [m["sku"] for m in after["matches"]]
    info = index_info(index_copy)
    assert info.consistent and info.generation == start + 4 and info.skus == len(PRODUCTS)


def test_uploads_belong_to_the_index_folder_wherever_it_is_reached_from(index_copy, tmp_path, monkeypatch):
    """Two servers name one index differently (relative to another working directory, absolute);
    the same photo uploaded to two SKUs is one file, kept while either has it; the catalog records
    it relative to the index folder, so it serves after the folder moved. An older catalog's
    cwd-relative upload path is adopted by the next write."""
    monkeypatch.chdir(index_copy.parent)
    photo = jpeg(product_image(60606))
    with client_for(Path(index_copy.name)) as relative, client_for(index_copy) as absolute:
        one = relative.post("/v1/products/Shared-P1/images", files=files(photo), headers=AUTH).json()["added"][0]
        absolute.post("/v1/products/Shared-P2/images", files=files(photo), headers=AUTH).raise_for_status()
        assert absolute.delete("/v1/products/Shared-P2", headers=AUTH).status_code == 200
        for client in (relative, absolute):
            served = client.get(f"/v1/images/{one}")
            assert served.status_code == 200 and served.content == photo
    with sqlite3.connect(index_copy / "catalog.db") as db:
        stored = db.execute("select path from images where id = ?", [one]).fetchone()[0]
    assert stored.startswith(f"{UPLOADS}/") and len(list((index_copy / UPLOADS).rglob("*.jpg"))) == 1
    moved = Path(shutil.move(str(index_copy), str(tmp_path / "elsewhere" / "idx")))
    monkeypatch.chdir(tmp_path)
    with client_for(moved) as client:
        assert client.get(f"/v1/images/{one}").content == photo
        assert client.get(f"/v1/images/{one}", params={"size": 96}).status_code == 200
        with sqlite3.connect(moved / "catalog.db") as db:  # as a server in another folder once recorded it
            db.execute("update images set path = ? where id = ?", [f"shop/idx/{stored}", one])
            db.execute("delete from meta where key = 'uploads_relative'")
        assert client.get(f"/v1/images/{one}").status_code == 404
        assert client.delete("/v1/products/lime", headers=AUTH).status_code == 200  # any write adopts it
        assert client.get(f"/v1/images/{one}").content == photo
    info = index_info(moved)
    assert info.consistent and info.leftovers == {"uploads": 0, "chunk_files": 0}


def test_an_update_that_removes_uploads_removes_their_files(served_index, index_copy):
    """The shop's catalog does not list the photos uploaded over HTTP: an update removes them, and
    their files with them."""
    with client_for(index_copy) as client:
        client.post("/v1/products/up/images", files=files(jpeg(product_image(8080))), headers=AUTH).raise_for_status()
    assert len(list((index_copy / UPLOADS).rglob("*.jpg"))) == 1
    report = update_index(served_index.parent / "catalog" / "catalog.csv", index_copy, num_workers=0,
                          allow_mass_removal=True)
    assert report.removed == 1 and report.removed_skus == ["up"]
    assert not list((index_copy / UPLOADS).rglob("*.jpg"))


def test_bad_writes_change_nothing(index_copy):
    with client_for(index_copy, max_upload_mb=0.1) as client:
        generation = client.get("/v1/index").json()["generation"]
        cases = [(files(jpeg(product_image(1)), b"garbage"), 422), (files(noise_jpeg(400)), 413), ([], 422)]
        for photos, status in cases:
            response = client.post("/v1/products/x/images", files=photos, data={"name": "X"}, headers=AUTH)
            assert response.status_code == status, response.text
        clash = client.post("/v1/products/MILK-1/images", files=files(jpeg(product_image(2))), headers=AUTH)
        assert clash.status_code == 422 and clash.json()["error"] == (
            "SKU 'MILK-1' differs only in case from the existing 'milk-1'; use the existing spelling; nothing was "
            "changed in idx")
        spaced = client.post("/v1/products/%20x/images", files=files(jpeg(product_image(2))), headers=AUTH)
        assert spaced.status_code == 422
        assert client.get("/v1/index").json()["generation"] == generation
        assert not (index_copy / UPLOADS).exists() or not list((index_copy / UPLOADS).rglob("*.*"))


def test_writes_to_a_read_only_index_are_a_409_and_store_nothing(served_index, public_tmp):
    index_dir = Path(shutil.copytree(served_index, public_tmp / "idx"))
    with client_for(index_dir) as client:
        for path in index_dir.iterdir():
            path.chmod(0o444)
        index_dir.chmod(0o555)
        with unprivileged():
            added = client.post("/v1/products/x/images", files=files(jpeg(product_image(2))), headers=AUTH)
            deleted = client.delete("/v1/products/lime", headers=AUTH)
        for response in (added, deleted):
            assert response.status_code == 409, response.text
            assert "is read-only" in response.json()["error"] and "writable copy" in response.json()["error"]
        assert not (index_dir / UPLOADS).exists()
        assert client.post("/v1/search", files=files(query_photo(0))).json()["match"] == "milk-1"


def test_an_upload_folder_this_user_cannot_write_is_a_409(served_index, public_tmp):
    """The folder and catalog are writable, uploads/ is another user's: refused as read-only, not a 500."""
    index_dir = Path(shutil.copytree(served_index, public_tmp / "idx"))
    for path in [index_dir, *index_dir.iterdir()]:
        path.chmod(0o777 if path.is_dir() else 0o666)
    (index_dir / UPLOADS).mkdir(mode=0o555)
    with client_for(index_dir) as client, unprivileged():
        added = client.post("/v1/products/x/images", files=files(jpeg(product_image(2))), headers=AUTH)
    assert added.status_code == 409, added.text
    assert added.json()["error"].startswith("the index idx is read-only (cannot write uploads/: Permission denied)")
    assert list((index_dir / UPLOADS).iterdir()) == []


def test_a_cli_add_in_another_process_is_served_without_a_restart(index_copy, tmp_path):
    new = product_image(515151)
    (tmp_path / "more" / "fresh").mkdir(parents=True)
    new.save(tmp_path / "more" / "fresh" / "fresh.jpg", quality=92)
    with client_for(index_copy) as client:
        before = client.post("/v1/search", files=files(jpeg(snapshot(new, seed=2)))).json()
        assert before["match"] != "fresh"
        subprocess.run([sys.executable, "-m", "prodsearch", "add", str(tmp_path / "more"), "--index", str(index_copy),
                        "-q"], check=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        deadline = time.monotonic() + 20
        while client.get("/v1/index").json()["serving_generation"] == before["generation"]:
            assert time.monotonic() < deadline, "the server did not pick up the CLI's add"
            time.sleep(0.1)
        after = client.post("/v1/search", files=files(jpeg(snapshot(new, seed=2)))).json()
        assert after["match"] == "fresh" and after["generation"] == before["generation"] + 1


def test_a_photo_file_changed_after_indexing_is_never_served(index_copy, tmp_path):
    """Whatever an image's path points to now (a symlink to /etc/passwd, other bytes of the same
    size, a FIFO, garbage, nothing) is a 404 naming the update command, for the original and for a
    thumbnail not made yet; not one byte of it is sent. The ETag is the content's MD5."""
    with client_for(index_copy) as client:
        added = client.post("/v1/products/x/images", files=files(jpeg(product_image(31337))), headers=AUTH).json()
        image_id = added["added"][0]
        row = client.service.index.catalog.image(image_id)
        path, url = Path(row["path"]), f"/v1/images/{image_id}"
        photo = path.read_bytes()
        original = client.get(url)
        assert original.status_code == 200 and original.content == photo
        assert original.headers["etag"] == f'"{row["md5"]}"'
        secret = b"root:x:0:0:secret" * (len(photo) // 17 + 1)
        (tmp_path / "secret").write_bytes(secret[:len(photo)])  # the same size as the photo
        (tmp_path / "passwd").write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
        swaps = {"a symlink out": lambda: path.symlink_to("/etc/passwd" if Path("/etc/passwd").is_file()
                                                          else tmp_path / "passwd"),
                 "same size, other bytes": lambda: path.symlink_to(tmp_path / "secret"),
                 "a FIFO": lambda: os.mkfifo(path),
                 "garbage": lambda: path.write_bytes(b"no longer a photo"),
                 "nothing": lambda: None}
        for what, swap in swaps.items():
            path.unlink(missing_ok=True)
            swap()
            for params in ({}, {"size": 480}):
                response = client.get(url, params=params)
                assert response.status_code == 404, (what, params, response.status_code)
                error = response.json()["error"]
                assert "since it was indexed" in error and "prodsearch update" in error, (what, error)
                assert b"root:" not in response.content
        path.write_bytes(photo)
        assert client.get(url).content == photo and client.get(url, params={"size": 480}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_a_client_that_disconnects_mid_upload_is_no_error(served_index, caplog):
    """Not the server's fault: one INFO line, counted as 499 (nginx's "client closed request"), never a 500."""
    with client_for(served_index) as client:
        body, content_type = multipart([query_photo(0)] * 2)
        messages = [{"type": "http.request", "body": body[:len(body) // 2], "more_body": True},
                    {"type": "http.disconnect"}]
        sent = []

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/search", "raw_path": b"/v1/search", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
                 "headers": [(b"host", b"testserver"), (b"content-type", content_type.encode()),
                             (b"content-length", str(len(body)).encode())]}
        with caplog.at_level(logging.INFO):
            asyncio.run(client.app(scope, receive, send))
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert "Traceback" not in caplog.text and "disconnected" in caplog.text
        metrics = client.get("/metrics").text
        assert 'route="/v1/search",status="499"' in metrics and 'status="500"' not in metrics
        assert client.post("/v1/search", files=files(query_photo(0))).json()["match"] == "milk-1"


def png(side: int) -> bytes:
    """A large photo in a small file (a gradient compresses well): what costs memory is its pixels."""
    out = io.BytesIO()
    Image.linear_gradient("L").resize((side, side)).convert("RGB").save(out, "PNG", compress_level=1)
    return out.getvalue()


def test_photos_that_decode_to_too_many_pixels_are_a_413_before_decoding(client):
    """8 photos of 2600 x 2600 px are 54 megapixels: over MAX_REQUEST_PIXELS together, though each is fine;
    8 phone photos as JPEG count as their downscaled drafts, a few hundred pixels a side."""
    response = client.post("/v1/search", files=[("image", (f"{i}.png", png(2600), "image/png")) for i in range(8)])
    assert response.status_code == 413, response.text
    assert response.json()["error"] == ("the photos would decode to 54 megapixels, more than the 50 a request may "
                                        "have; send smaller photos (the model sees a few hundred pixels a side)")
    phone = jpeg(product_image(3).resize((4000, 3000)), 80)
    assert client.post("/v1/search", files=files(*[phone] * 8)).status_code == 200
    assert client.post("/v1/search", files=files(png(2600))).status_code == 200


def test_concurrent_requests_take_turns_within_the_pixel_budget():
    budget = PixelBudget(100)
    order = []

    def decode(name, pixels, seconds):
        with budget.held(pixels):
            order.append((name, "in", budget.used))
            time.sleep(seconds)
            order.append((name, "out"))

    first = threading.Thread(target=decode, args=("a", 60, 0.3))
    first.start()
    time.sleep(0.05)
    decode("b", 60, 0)  # waits: 120 would be over the budget
    first.join()
    assert order == [("a", "in", 60), ("a", "out"), ("b", "in", 60), ("b", "out")]
    decode("alone", 500, 0)  # over the budget, but alone: let through (the request limit is smaller)
    assert budget.used == 0
