"""The model an index embeds with, on the runtime asked for.

An index folder keeps its model exported to ONNX (:mod:`prodsearch.retrieval.onnx_files`), so a
shipped folder answers queries without torch: the ONNX runtime uses the folder's file when it holds
the manifest's model, and otherwise exports the model from torch and keeps the export there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from prodsearch.errors import IndexDirError, ReadOnlyIndexError
from prodsearch.indexer.manifest import Manifest, check_model, read_manifest
from prodsearch.retrieval.encoders import (ModelSource, create_embedder, create_encoder, is_encoder, is_onnx_path,
                                           onnx_from_torch)
from prodsearch.retrieval.onnx_files import load_stored, save_model
from prodsearch.retrieval.runtime import Encoder, describe, resolve_runtime

if TYPE_CHECKING:
    from prodsearch.retrieval.embedder import Embedder

log = logging.getLogger(__name__)


def embedder_for(manifest: Manifest, index_dir: Path) -> "Embedder":
    """The torch embedder an index's manifest names (its name and size, or its checkpoint file)."""
    built = manifest.model
    if built.source and not is_onnx_path(built.source):
        if not Path(built.source).is_file():
            raise IndexDirError(f"index {index_dir} was built with the checkpoint {built.source}, which is "
                                "not there any more; pass its new path with --model PATH")
        return create_embedder(built.source)
    if built.weights.startswith("checkpoint:"):
        raise IndexDirError(f"index {index_dir} was built with an ONNX export of a trained model and torch "
                            "cannot run that: use --runtime onnx, or pass the checkpoint with --model PATH")
    return create_embedder(built.name, embed_dim=built.embed_dim if built.head else None,
                           img_size=built.data_config["input_size"][-1])


def encoder_for(manifest: Manifest, index_dir: Path, *, model: ModelSource | None = None, runtime: str = "auto",
                device: str = "auto", precision: str = "auto", check: bool = True) -> Encoder:
    """The encoder for an index: ``model`` (a name, a path, an :class:`Embedder` or an encoder) if
    given, else the manifest's model; ``check`` refuses one that is not the index's model.

    On the ONNX runtime the folder's stored export of that model is used (without importing
    torch); where it has none (or a damaged one), the model is exported from torch and the export
    kept in the folder for the next command."""
    runtime, device = resolve_runtime(runtime, device, precision)
    if runtime == "onnx" and model is None:
        encoder = load_stored(index_dir, manifest.model) or onnx_from_torch(embedder_for(manifest, index_dir))
    elif runtime == "onnx" and not (is_encoder(model) or is_onnx_path(model)):
        embedder = create_embedder(model) if isinstance(model, (str, os.PathLike)) else model
        if check:  # before the export: a wrong model is refused at once
            check_model(manifest, embedder.config, index_dir)
        encoder = load_stored(index_dir, embedder.config) or onnx_from_torch(embedder)
    else:
        source = embedder_for(manifest, index_dir) if model is None else model
        encoder = create_encoder(source, runtime=runtime, device=device, precision=precision)
    if check:
        check_model(manifest, encoder.config, index_dir)
    if encoder.config.identity() == manifest.model.identity():
        keep_model(index_dir, encoder)
    log.info("embedding with %s (%s)", encoder.config.label, describe(encoder))
    return encoder


def keep_model(folder: Path, encoder: Encoder) -> None:
    """Store an ONNX encoder's exported model in ``folder``, where it is not already."""
    data = getattr(encoder, "model_bytes", None)
    if data is not None:
        save_model(folder, data, encoder.precision)


def export_index_model(index_dir: str | os.PathLike) -> Path:
    """Export an index's model from torch again and keep it in the folder, replacing what it held."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    encoder = onnx_from_torch(embedder_for(manifest, index_dir))
    path = save_model(index_dir, encoder.model_bytes, encoder.precision)
    if path is None:
        raise ReadOnlyIndexError(index_dir, "its folder cannot be written")
    return path
