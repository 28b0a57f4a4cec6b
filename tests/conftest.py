"""Shared fixtures: tiny catalogs drawn on the fly, one real embedder per session."""

from __future__ import annotations

import contextlib
import csv
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from prodsearch.retrieval import create_embedder


def product_image(seed: int, size: int = 96) -> Image.Image:
    """A distinct 'product': a box with its own pattern (stripes, checks, rings...) and shapes, on white."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))
    m = size // 8
    a, b = colour(), colour()
    draw.rectangle([m, m, size - m, size - m], fill=a)
    step = int(rng.integers(size // 12, size // 5))
    pattern = int(rng.integers(0, 4))
    for k in range(m, size - m, 2 * step):
        if pattern == 0:
            draw.rectangle([m, k, size - m, min(k + step, size - m)], fill=b)
        elif pattern == 1:
            draw.rectangle([k, m, min(k + step, size - m), size - m], fill=b)
        elif pattern == 2:
            for j in range(m, size - m, 2 * step):
                draw.rectangle([k, j, min(k + step, size - m), min(j + step, size - m)], fill=b)
        else:
            r = size // 2 - k
            if r > 0:
                draw.ellipse([size // 2 - r, size // 2 - r, size // 2 + r, size // 2 + r], outline=b, width=max(1, step // 2))
    for _ in range(3):
        x0, y0 = rng.integers(m, size - 3 * m, 2)
        w, h = rng.integers(m, 3 * m, 2)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=colour())
    return img


def clustered_vectors(n: int, dim: int, rng: np.random.Generator, clusters: int = 20,
                      noise: float = 0.3) -> np.ndarray:
    """L2-normalised vectors in ``clusters`` groups, like embeddings of look-alike products."""
    centres = rng.normal(size=(clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + noise * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def snapshot(img: Image.Image, seed: int) -> Image.Image:
    """A 'customer photo' of a product image: slightly rotated, cropped, darker."""
    rng = np.random.default_rng(seed)
    out = img.rotate(float(rng.uniform(-6, 6)), fillcolor=(200, 200, 190))
    w, h = out.size
    c = int(w * 0.04)
    out = out.crop((c, c, w - c, h - c)).resize((w, h))
    return Image.eval(out, lambda v: int(v * 0.92))


def write_folder_catalog(root: Path, skus: list[str], per_sku: int = 1, seed0: int = 0) -> Path:
    """root/<sku>/<sku>_<i>.jpg with distinct images per SKU."""
    for s, sku in enumerate(skus):
        (root / sku).mkdir(parents=True, exist_ok=True)
        for i in range(per_sku):
            product_image(seed0 + 1000 * s + i).save(root / sku / f"{sku}_{i}.jpg", quality=92)
    return root


def write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="session")
def embedder():
    """The default ImageNet lite0 embedder, created once (tests must not modify it)."""
    return create_embedder()


GROCERY_STORE_PHOTOS = Path(__file__).parent / "data" / "grocery-store"


@pytest.fixture(scope="session")
def real_photos() -> list[Path]:
    """A dozen real phone and catalog photos of the Grocery Store dataset, carried in tests/data
    (its licence and source beside them), so the equivalence tests run without the dataset."""
    phone = sorted((GROCERY_STORE_PHOTOS / "dataset" / "test").glob("**/*.jpg"))
    iconic = sorted((GROCERY_STORE_PHOTOS / "dataset" / "iconic-images-and-descriptions").glob("**/*_Iconic.jpg"))
    assert (len(phone), len(iconic)) == (10, 2), f"tests/data/grocery-store lost photos: {phone + iconic}"
    return phone + iconic


@pytest.fixture(scope="session")
def torch_encoder(embedder):
    """The default embedder on torch, float32 on the CPU."""
    from prodsearch.retrieval.torch_encoder import TorchEncoder

    return TorchEncoder(embedder, "cpu", "fp32")


@pytest.fixture(scope="session")
def onnx_encoder(embedder):
    """The default embedder exported to ONNX Runtime."""
    from prodsearch.retrieval.encoders import create_encoder

    return create_encoder(embedder, runtime="onnx")


@pytest.fixture
def folder_catalog(tmp_path) -> Path:
    return write_folder_catalog(tmp_path / "catalog", [f"sku-{i}" for i in range(6)])


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, embedder):
    """A small index (6 SKUs, one of them with 2 photos) and query snapshots with ground truth."""
    from prodsearch.indexer import build_index

    root = tmp_path_factory.mktemp("built")
    skus = [f"sku-{i}" for i in range(6)]
    catalog = write_folder_catalog(root / "catalog", skus)
    product_image(5001).save(catalog / "sku-5" / "extra.jpg")
    queries = root / "queries"
    for s, sku in enumerate(skus):
        (queries / sku).mkdir(parents=True)
        snapshot(product_image(1000 * s), seed=s).save(queries / sku / "q.jpg", quality=90)
    index_dir = root / "idx"
    build_index(catalog, index_dir, model=embedder, num_workers=0)
    return {"root": root, "catalog": catalog, "queries": queries, "index": index_dir, "skus": skus}


# (class name, class id, coarse class, coarse id, class folder): fine classes sit in a folder of their
# own below the coarse one, coarse-only classes (Lime) directly in theirs, as in the real dataset.
GROCERY_CLASSES = [("Granny-Smith", 0, "Apple", 0, "Fruit/Apple/Granny-Smith"),
                   ("Oatly-Oat-Milk", 1, "Oat-Milk", 1, "Packages/Oat-Milk/Oatly-Oat-Milk"),
                   ("Lime", 2, "Lime", 2, "Fruit/Lime")]


def fake_grocery_store(root: Path, per_split: tuple[int, int, int] = (2, 1, 1)) -> Path:
    """The Grocery Store layout (classes.csv, iconic photos, train/val/test lists) with tiny images."""
    data = root / "dataset"
    data.mkdir(parents=True)
    with open(data / "classes.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Class Name (str)", "Class ID (int)", "Coarse Class Name (str)", "Coarse Class ID (int)",
                    "Iconic Image Path (str)", "Product Description Path (str)"])
        for name, fine, coarse, coarse_id, folder in GROCERY_CLASSES:
            icon = f"/iconic-images-and-descriptions/{folder}/{name}_Iconic.jpg"
            (data / icon.lstrip("/")).parent.mkdir(parents=True)
            product_image(fine, 48).save(data / icon.lstrip("/"))
            w.writerow([name, fine, coarse, coarse_id, icon, icon.replace("Iconic.jpg", "Description.txt")])
    for split, n in zip(("train", "val", "test"), per_split):
        lines = []
        for name, fine, _, coarse_id, folder in GROCERY_CLASSES:
            for i in range(n):
                rel = f"{split}/{folder}/{name}_{i:03d}.jpg"
                (data / rel).parent.mkdir(parents=True, exist_ok=True)
                product_image(100 * fine + i, 48).save(data / rel)
                lines.append(f"{rel}, {fine}, {coarse_id}")
        (data / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def public_tmp():
    """A folder every user may enter, for tests that drop privileges (pytest's tmp_path sits in a
    0700 folder of root's)."""
    path = Path(tempfile.mkdtemp(dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in [path, *path.rglob("*")]:
            if not sub.is_symlink():
                sub.chmod(0o755 if sub.is_dir() else 0o644)
        shutil.rmtree(path)


@contextlib.contextmanager
def unprivileged():
    """File permissions apply inside: as root they do not, so root drops to nobody for the while
    (the effective user only, so it can come back)."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(65534)
        os.seteuid(65534)
    except OSError:
        pytest.skip("running as root without the right to drop privileges")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


# ------------------------------------------------------------------ indexes straight from vectors

def image_rows(owners):
    return [{"sku": s, "path": f"/c/{i}.jpg", "md5": str(i), "width": 1, "height": 1, "size": 1, "mtime": 0.0}
            for i, s in enumerate(owners)]


def write_vectors_index(index_dir, owners, vectors, products=None, index_type="auto"):
    """An index folder straight from vectors: image i (id i) belongs to SKU owners[i]."""
    from prodsearch.indexer import ProductIndex
    from prodsearch.indexer.build import create_index_dir
    from prodsearch.indexer.manifest import Manifest, read_manifest
    from prodsearch.retrieval.embedder import EmbedderConfig

    products = products or [{"sku": s, "name": s.upper(), "category": "Cat/Sub"} for s in sorted(set(owners))]
    config = EmbedderConfig("test", "none", vectors.shape[1], {"input_size": [3, 8, 8]})
    create_index_dir(index_dir, Manifest(config, "", "test"), products, image_rows(owners), vectors, index_type)
    return ProductIndex(index_dir, read_manifest(index_dir))


def plain_sku_ranking(query, vectors, owners, top_k):
    best = {}
    for v, sku in zip(vectors, owners):
        best[sku] = max(best.get(sku, -2.0), float(v @ query))
    return sorted(best.items(), key=lambda kv: -kv[1])[:top_k]


def own_lines(stderr: str) -> list[str]:
    """What the processes wrote on stderr: torchrun's own log lines and its closing traceback
    (ChildFailedError, with its report) left out."""
    assert stderr.count("Traceback") == stderr.count("ChildFailedError(") == 1, stderr[-3000:]  # torchrun's alone
    before = stderr.split("Traceback (most recent call last):")[0]
    # torchrun's banner where OMP_NUM_THREADS is not set (as in CI), and its log lines
    before = re.sub(r"^\n?\*+\nSetting OMP_NUM_THREADS [^\n]*\n\*+\n", "", before)
    return [line for line in before.splitlines() if not re.match(r"[WEI]\d{4} ", line)]
