"""The vector index factory: the documented type at each size, exact where it should be, recall
bounds where approximate, save/load, and removal on every type."""

import numpy as np
import pytest

from prodsearch.indexer.index_types import (IndexTypeError, choose_index_type, create_index, deletes_in_place,
                                            resolve_index_type, set_search_params, train_index)
from prodsearch.indexer.vectors import (add_vectors, read_vector_index, remove_vectors, search, vector_ids,
                                        write_vector_index)

from conftest import clustered_vectors

APPROXIMATE = ["IVF64,Flat", "IVF64,SQfp16", "HNSW32,Flat", "IVF64,PQ32x4,Refine(SQ8)", "IVF64_HNSW32,PQ32x4,Refine(SQ8)"]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    base, queries = clustered_vectors(6000, 32, rng, 200, 0.25), clustered_vectors(200, 32, rng, 200, 0.25)
    return base, queries, np.arange(6000, dtype=np.int64) * 5 + 2


def built(spec, base, ids):
    index = create_index(spec, base.shape[1])
    train_index(index, base)
    add_vectors(index, base, ids)
    return index


@pytest.mark.parametrize("count, dim, expected", [
    (0, 512, "Flat"), (99_999, 512, "Flat"), (100_000, 512, "IVF1024,SQfp16"), (1_000_000, 512, "IVF4096,SQfp16"),
    (1_999_999, 1280, "IVF4096,SQfp16"), (12_400_000, 512, "IVF8192_HNSW32,PQ64,Refine(SQ8)"),
    (12_400_000, 1280, "IVF8192_HNSW32,PQ64,Refine(SQ8)"), (3_000_000, 96, "IVF8192_HNSW32,PQ32,Refine(SQ8)"),
    (2_000_000, 512, "IVF4096_HNSW32,PQ64,Refine(SQ8)")])
def test_auto_picks_the_documented_type(count, dim, expected):
    assert choose_index_type(count, dim) == expected == resolve_index_type("auto", count, dim)


def test_unknown_factory_string_is_refused():
    with pytest.raises(IndexTypeError, match=r"FAISS cannot build index type 'Fancy42' for 16-d vectors"):
        resolve_index_type("Fancy42", 10, 16)
    assert resolve_index_type("HNSW16,Flat", 10, 16) == "HNSW16,Flat"


def test_flat_is_exact(data):
    base, queries, ids = data
    scores, found = search(built("Flat", base, ids), queries, 10)
    sims = queries @ base.T
    expected = np.argsort(-sims, axis=1)[:, :10]
    assert np.array_equal(found, ids[expected])


@pytest.mark.parametrize("spec", APPROXIMATE)
def test_approximate_types_reach_their_recall(data, spec):
    base, queries, ids = data
    _, found = search(built(spec, base, ids), queries, 10)
    exact = ids[np.argmax(queries @ base.T, axis=1)]
    recall1 = np.mean(found[:, 0] == exact)
    recall10 = np.mean([e in row for e, row in zip(exact, found)])
    assert recall1 >= 0.9 and recall10 >= 0.97, (spec, recall1, recall10)


@pytest.mark.parametrize("spec", ["Flat"] + APPROXIMATE)
def test_save_load_round_trip(data, spec, tmp_path):
    base, queries, ids = data
    index = built(spec, base, ids)
    write_vector_index(index, tmp_path / "v.faiss")
    loaded = read_vector_index(tmp_path / "v.faiss")
    set_search_params(loaded)
    assert np.array_equal(search(loaded, queries, 5)[1], search(index, queries, 5)[1])
    assert np.array_equal(np.sort(vector_ids(loaded)), ids)


@pytest.mark.parametrize("spec, in_place", [("Flat", True), ("IVF64,Flat", True), ("IVF64,SQfp16", True), ("HNSW32,Flat", False),
                                            ("IVF64,PQ32x4,Refine(SQ8)", False), ("IVF64_HNSW32,Flat", True),
                                            ("IVF64_HNSW32,PQ32x4,Refine(SQ8)", False)])
def test_removal_in_place_or_reported_for_a_rebuild(data, spec, in_place):
    base, queries, ids = data
    index = built(spec, base, ids)
    gone = ids[:3000]
    assert deletes_in_place(spec) is in_place
    assert remove_vectors(index, gone) is in_place
    if in_place:
        assert index.ntotal == 3000 and not np.isin(search(index, queries, 10)[1], gone).any()


def test_training_needs_enough_vectors(data):
    base, _, _ = data
    with pytest.raises(IndexTypeError, match="an index with 64 inverted lists needs at least 64 vectors to train, not 10"):
        train_index(create_index("IVF64,Flat", 32), base[:10])


@pytest.mark.parametrize("spec, type_name", [("IVF16,Flat", "IndexIVFFlat"), ("HNSW16,Flat", "IndexHNSWFlat")])
def test_index_folders_of_each_type_survive_removal(tmp_path, spec, type_name):
    """Removal through the catalog lifecycle: IVF deletes in place, HNSW is rebuilt as HNSW."""
    from prodsearch.indexer import ProductIndex, index_info, remove_from_index
    from prodsearch.indexer.manifest import read_manifest

    from conftest import write_vectors_index

    rng = np.random.default_rng(1)
    vectors = clustered_vectors(600, 16, rng, clusters=30, noise=0.25)
    owners = [f"s{i % 60:02d}" for i in range(600)]
    write_vectors_index(tmp_path / "idx", owners, vectors, index_type=spec)
    manifest = read_manifest(tmp_path / "idx")
    assert (manifest.index_type, manifest.index_factory) == (type_name, spec)
    remove_from_index(tmp_path / "idx", skus=["s07"])
    info = index_info(tmp_path / "idx")
    assert info.pending_changes == 0 if spec.startswith("HNSW") else info.pending_changes > 0  # rebuilt once, by the writer
    index = ProductIndex(tmp_path / "idx", read_manifest(tmp_path / "idx"))
    assert len(index) == 590 and "s07" not in index.skus
    inner = __import__("faiss").downcast_index(index.vectors.index.index)
    assert type(inner).__name__ == type_name
    matches = index.search(vectors[7:8], 3)[0]  # image 7 belonged to s07
    assert "s07" not in [m.sku for m in matches] and len(matches) == 3
    assert index_info(tmp_path / "idx").consistent


def test_search_parameters_reach_the_opened_index(tmp_path):
    import faiss

    from prodsearch.indexer import ProductIndex
    from prodsearch.indexer.manifest import read_manifest

    from conftest import write_vectors_index

    vectors = clustered_vectors(600, 16, np.random.default_rng(2), clusters=30, noise=0.25)
    write_vectors_index(tmp_path / "idx", [f"s{i % 60}" for i in range(600)], vectors, index_type="IVF16,Flat")
    nprobe = lambda index: faiss.extract_index_ivf(index.vectors.index).nprobe  # noqa: E731
    assert nprobe(ProductIndex(tmp_path / "idx", read_manifest(tmp_path / "idx"))) == 16  # the default
    tuned = ProductIndex(tmp_path / "idx", read_manifest(tmp_path / "idx"), search_params={"nprobe": 3})
    assert nprobe(tuned) == 3


@pytest.mark.parametrize("requested,built,count,expected", [
    ("auto", "Flat", 20_000, "Flat"), ("auto", "Flat", 150_000, "IVF2048,SQfp16"),
    ("auto", "IVF2048,SQfp16", 5_000, "Flat"), ("IVF32,Flat", "IVF32,Flat", 20_000, "IVF512,Flat"),
    ("IVF32_HNSW32,PQ8,Refine(SQ8)", "IVF32_HNSW32,PQ8,Refine(SQ8)", 20_000, "IVF512_HNSW32,PQ8,Refine(SQ8)"),
    ("HNSW32,Flat", "HNSW32,Flat", 20_000, "HNSW32,Flat")])
def test_a_rebuild_resizes_the_index_type(requested, built, count, expected):
    from prodsearch.indexer.index_types import resize_index_type

    assert resize_index_type(requested, built, count, 16) == expected


def test_rebuilding_a_small_ivf_index_from_many_vectors_retrains_it(tmp_path):
    """'index' into an existing IVF index rebuilds it for the new size: the lists of 100 vectors
    (IVF32) would leave a catalog 200x larger with 1/16 of the lists it needs."""
    import faiss

    from prodsearch.indexer import ProductIndex, index_info
    from prodsearch.indexer.build import _replace
    from prodsearch.indexer.ingest import Embedded
    from prodsearch.indexer.manifest import read_manifest
    from prodsearch.indexer.writer import IndexWriter

    from conftest import image_rows, write_vectors_index

    rng = np.random.default_rng(3)
    write_vectors_index(tmp_path / "idx", [f"s{i % 10}" for i in range(100)], clustered_vectors(100, 16, rng),
                        index_type="IVF32,Flat")
    manifest = read_manifest(tmp_path / "idx")
    assert (manifest.index_factory, manifest.index_requested) == ("IVF32,Flat", "IVF32,Flat")
    owners = [f"t{i % 500}" for i in range(20_000)]
    vectors = clustered_vectors(20_000, 16, rng, clusters=200)
    products = [{"sku": s, "name": s, "category": None} for s in sorted(set(owners))]
    _replace(IndexWriter(tmp_path / "idx", "index"), products, Embedded(image_rows(owners), vectors), "IVF512,Flat")
    manifest = read_manifest(tmp_path / "idx")
    assert (manifest.index_factory, manifest.index_requested) == ("IVF512,Flat", "IVF32,Flat")
    index = ProductIndex(tmp_path / "idx", manifest)
    assert faiss.extract_index_ivf(index.vectors.index).nlist == 512 and len(index) == 20_000
    assert index.search(vectors[:1], 1)[0][0].sku == owners[0]
    info = index_info(tmp_path / "idx")
    assert info.consistent and info.pending_changes == 0
