"""Batch embedding of files: threads and batches change nothing but speed; bad files never stop a batch."""

import numpy as np
import pytest
import torch

from prodsearch.errors import DeviceError
from prodsearch.retrieval import embed_files, embed_pil, load_image
from prodsearch.retrieval.device import inference_dtype
from prodsearch.retrieval.torch_encoder import TorchEncoder

from conftest import product_image


@pytest.fixture(params=["torch", "onnx"])
def encoder(request, torch_encoder, onnx_encoder):
    return torch_encoder if request.param == "torch" else onnx_encoder


def test_workers_and_batches_give_the_same_vectors(tmp_path, encoder):
    paths = []
    for i in range(11):
        product_image(i).save(tmp_path / f"{i}.jpg")
        paths.append(tmp_path / f"{i}.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    paths.insert(4, tmp_path / "bad.jpg")
    calls = []
    serial = embed_files(encoder, paths, batch_size=8, num_workers=0)
    parallel = embed_files(encoder, paths, batch_size=3, num_workers=2,
                           progress=lambda done, total: calls.append((done, total)))
    assert serial.positions.tolist() == [i for i in range(12) if i != 4]
    assert np.array_equal(serial.positions, parallel.positions)
    assert np.allclose(serial.vectors, parallel.vectors, atol=1e-5)
    assert serial.failures == parallel.failures == {4: "not an image (unrecognised format)"}
    assert serial.sizes.tolist() == [[96, 96]] * 11
    assert calls[-1] == (12, 12) and len(calls) == 4


def test_files_and_in_memory_images_agree(tmp_path, encoder):
    product_image(1).save(tmp_path / "a.png")
    from_file = embed_files(encoder, [tmp_path / "a.png"]).vectors[0]
    in_memory = embed_pil(encoder, [load_image(tmp_path / "a.png")])[0]
    assert np.allclose(from_file, in_memory, atol=1e-6)


def test_nothing_readable_gives_empty_vectors(tmp_path, encoder):
    (tmp_path / "x.jpg").write_bytes(b"")
    result = embed_files(encoder, [tmp_path / "x.jpg"])
    assert result.vectors.shape == (0, 1280)
    assert result.failures == {0: "empty file"}


def test_bfloat16_embeddings_agree_with_float32(tmp_path, embedder, torch_encoder):
    """Reduced precision is a speed choice: the vectors stay unit length and point the same way."""
    paths = []
    for i in range(6):
        product_image(i).save(tmp_path / f"{i}.jpg")
        paths.append(tmp_path / f"{i}.jpg")
    fp32 = embed_files(torch_encoder, paths).vectors
    bf16 = embed_files(TorchEncoder(embedder, "cpu", "bf16"), paths).vectors
    assert bf16.dtype == np.float32 and np.allclose(np.linalg.norm(bf16, axis=1), 1, atol=1e-5)
    assert np.min(np.sum(fp32 * bf16, axis=1)) > 0.99
    assert np.array_equal(np.argmax(fp32 @ fp32.T, axis=1), np.argmax(bf16 @ fp32.T, axis=1))
    in_memory = embed_pil(torch_encoder, [load_image(p) for p in paths])
    assert np.allclose(in_memory, fp32, atol=1e-5)


@pytest.mark.parametrize("avx512_bf16,amx,expected", [(True, False, torch.bfloat16), (False, True, torch.bfloat16),
                                                      (False, False, None)])
def test_precision_choice_on_cpus(monkeypatch, avx512_bf16, amx, expected):
    """auto: bfloat16 only where the CPU computes it natively (elsewhere it is emulated, slower)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert inference_dtype(torch.device("cpu"), "auto") is expected


@pytest.mark.parametrize("bf16,expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_precision_choice_on_gpus(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert inference_dtype(torch.device("cuda"), "auto") is expected


def test_precision_choice():
    cpu = torch.device("cpu")
    assert inference_dtype(cpu, "fp32") is None and inference_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(DeviceError, match="unknown precision 'fp8'; use one of auto, fp32, bf16, int8"):
        inference_dtype(cpu, "fp8")
