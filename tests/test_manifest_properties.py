"""Whatever manifest.json holds, reading it gives a Manifest or an IndexDirError, never a crash."""

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prodsearch.errors import IndexDirError
from prodsearch.indexer.manifest import Manifest, read_manifest

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "format": "prodsearch-index", "format_version": 2, "prodsearch_version": "0.1.0", "created": "2026-11-29T15:33:31+00:00",
    "model": {"name": "tf_efficientnet_lite0", "weights": "imagenet:efficientnet-lite0", "embed_dim": 1280,
              "data_config": {"input_size": [3, 224, 224], "interpolation": "bicubic", "mean": [0.5, 0.5, 0.5],
                              "std": [0.5, 0.5, 0.5], "crop_pct": 0.875, "crop_mode": "center"},
              "head": False, "source": None},
    "embed_dim": 1280,
    "vector_index": {"type": "IndexFlatIP", "factory": "Flat", "metric": "inner_product"},
    "catalog": {"source": "/shop/catalog.csv"},
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def index_dir():
    """A folder with a catalog.db, so that only the manifest decides (``@given`` cannot take tmp_path)."""
    path = Path(tempfile.mkdtemp())
    (path / "catalog.db").write_bytes(b"")
    yield path
    shutil.rmtree(path)


def read_or_refuse(index_dir: Path, data: bytes) -> None:
    (index_dir / "manifest.json").write_bytes(data)
    try:
        assert isinstance(read_manifest(index_dir), Manifest)
    except IndexDirError as exc:
        assert "\n" not in str(exc), "an error message must be one line"


def test_the_valid_manifest_reads(index_dir):
    (index_dir / "manifest.json").write_text(json.dumps(VALID))
    assert read_manifest(index_dir).model.data_config["input_size"] == [3, 224, 224]


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes(index_dir, data):
    read_or_refuse(index_dir, data)


@SETTINGS
@given(value=json_values)
def test_arbitrary_json(index_dir, value):
    read_or_refuse(index_dir, json.dumps(value).encode())


def leaf_paths(node, prefix=()):
    """Every key path of a nested dict (the dicts themselves included)."""
    if isinstance(node, dict):
        for key, child in node.items():
            yield prefix + (key,)
            yield from leaf_paths(child, prefix + (key,))


PATHS = list(leaf_paths(VALID))


@SETTINGS
@given(path=st.sampled_from(PATHS), value=json_values, drop=st.booleans())
def test_a_valid_manifest_with_one_field_replaced_or_removed(index_dir, path, value, drop):
    manifest = json.loads(json.dumps(VALID))
    parent = manifest
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    read_or_refuse(index_dir, json.dumps(manifest).encode())
