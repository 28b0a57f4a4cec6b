"""Batch embedding of files: workers change nothing but speed; bad files never stop a batch."""

import numpy as np

from prodsearch.retrieval import embed_files, embed_pil, load_image

from conftest import product_image


def test_workers_and_batches_give_the_same_vectors(tmp_path, embedder):
    paths = []
    for i in range(11):
        product_image(i).save(tmp_path / f"{i}.jpg")
        paths.append(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    paths.insert(4, tmp_path / "bad.jpg")
    calls = []
    serial = embed_files(embedder, paths, batch_size=8, num_workers=0, device="cpu")
    parallel = embed_files(embedder, paths, batch_size=3, num_workers=2, device="cpu",
                           progress=lambda done, total: calls.append((done, total)))
    assert serial.positions.tolist() == [i for i in range(12) if i != 4]
    assert np.array_equal(serial.positions, parallel.positions)
    assert np.allclose(serial.vectors, parallel.vectors, atol=1e-5)
    assert serial.failures == parallel.failures == {4: "not an image (unrecognised format)"}
    assert serial.sizes.tolist() == [[96, 96]] * 11
    assert calls[-1] == (12, 12) and len(calls) == 4


def test_files_and_in_memory_images_agree(tmp_path, embedder):
    product_image(1).save(tmp_path / "a.png")
    from_file = embed_files(embedder, [tmp_path / "a.png"], device="cpu").vectors[0]
    in_memory = embed_pil(embedder, [load_image(tmp_path / "a.png")], device="cpu")[0]
    assert np.allclose(from_file, in_memory, atol=1e-6)


def test_nothing_readable_gives_empty_vectors(tmp_path, embedder):
    (tmp_path / "x.jpg").write_bytes(b"")
    result = embed_files(embedder, [tmp_path / "x.jpg"], device="cpu")
    assert result.vectors.shape == (0, 1280)
    assert result.failures == {0: "empty file"}
