"""The model an index embeds with, on the runtime asked for.

An index folder keeps its model exported to ONNX (:mod:`prodsearch.retrieval.onnx_files`), so a
shipped folder answers queries without torch: the ONNX runtime uses the folder's file when it holds
the manifest's model, and otherwise exports the model from torch and keeps the export there.
"""

from __future__ import annotations

import logging
import os
from contextlib import closing
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prodsearch.errors import IndexDirError, ReadOnlyIndexError
from prodsearch.indexer.catalog_db import CatalogDB
from prodsearch.indexer.manifest import Manifest, check_model, read_manifest
from prodsearch.indexer.store import CATALOG_DB
from prodsearch.retrieval.encoders import (CALIBRATION_PHOTOS, ModelSource, as_embedder, as_int8, create_embedder,
                                           create_encoder, is_encoder, is_onnx_path, onnx_from_torch, wants_int8)
from prodsearch.retrieval.onnx_files import load_stored, save_model
from prodsearch.retrieval.runtime import Encoder, describe, resolve_runtime

if TYPE_CHECKING:
    from prodsearch.retrieval.embedder import Embedder
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder

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
                           img_size=built.data_config["input_size"][-1], pooling=built.pooling)


def encoder_for(manifest: Manifest, index_dir: Path, *, model: ModelSource | None = None, runtime: str = "auto",
                device: str = "auto", precision: str = "auto", check: bool = True,
                calibration: Sequence[str | os.PathLike] = ()) -> Encoder:
    """The encoder for an index: ``model`` (a name, a path, an :class:`Embedder` or an encoder) if
    given, else the manifest's model; ``check`` refuses one that is not the index's model.

    On the ONNX runtime the folder's stored export of that model is used (without importing
    torch); where it has none (or a damaged one), the model is exported from torch and the export
    kept in the folder for the next command. ``auto`` runs int8 only where the manifest does not
    record that int8 was refused (:mod:`.precision_check`). ``calibration`` (a rebuild's catalog
    photos): where int8 would run, an int8 model (the stored one, else quantized on them) with its
    fp32 model beside it, so that the rebuild measures again whether int8 keeps the answers."""
    runtime, device = resolve_runtime(runtime, device, precision)
    if runtime == "torch" or is_encoder(model):
        source = embedder_for(manifest, index_dir) if model is None else model
        encoder = create_encoder(source, runtime=runtime, device=device, precision=precision)
    else:
        encoder = _onnx_for(manifest, index_dir, model, precision, check, calibration)
    if check:
        check_model(manifest, encoder.config, index_dir)
    _keep(index_dir, manifest, encoder)
    log.info("embedding with %s (%s)", encoder.config.label, describe(encoder))
    return encoder


def _onnx_for(manifest: Manifest, index_dir: Path, model: ModelSource | None, precision: str,
              check: bool, calibration: Sequence[str | os.PathLike] = ()) -> "OnnxEncoder":
    """The folder's stored model in the precision asked for, else one made for it: exported from
    torch, or quantized to int8 on the index's own photos (only when int8 is asked for by name, or
    on ``calibration``: ``auto`` takes int8 where the folder holds it and the index did not refuse it)."""
    if model is None:
        config, made = manifest.model, lambda: onnx_from_torch(embedder_for(manifest, index_dir))
    elif is_onnx_path(model):
        given = create_encoder(model, runtime="onnx", precision="fp32")
        config, made = given.config, lambda: given
    else:
        embedder = as_embedder(model)
        if check:  # before an export: a wrong model is refused at once
            check_model(manifest, embedder.config, index_dir)
        config, made = embedder.config, lambda: onnx_from_torch(embedder)
    if wants_int8(precision, can_calibrate=True):
        if calibration:
            return _int8_beside_fp32(index_dir, config, made, calibration, required=precision == "int8")
        if precision == "auto" and manifest.precision_check is not None and refused_int8(manifest):
            log.info("int8 was refused when %s was built (%s)", index_dir, manifest.precision_check.describe())
            return load_stored(index_dir, config) or made()
        stored = load_stored(index_dir, config, "int8")
        if stored is not None:
            return stored
        if precision == "int8":
            fp32 = load_stored(index_dir, config, keep_bytes=True) or made()
            return as_int8(fp32, _catalog_photos(index_dir))
        log.info("%s holds no int8 model: embedding in fp32 (to make one: prodsearch export --index %s "
                 "--precision int8)", index_dir, index_dir)
    return load_stored(index_dir, config) or made()


def refused_int8(manifest: Manifest) -> bool:
    """Whether the index measured int8 on its photos and embeds in fp32 instead: auto keeps to that."""
    return manifest.precision_check is not None and manifest.precision_check.chosen == "fp32"


def _int8_beside_fp32(index_dir: Path, config, made, photos: Sequence[str | os.PathLike],
                      required: bool) -> OnnxEncoder:
    """The folder's int8 model (else one quantized on ``photos``) with its fp32 model in ``fp32``."""
    fp32 = load_stored(index_dir, config, keep_bytes=True) or made()
    int8 = load_stored(index_dir, config, "int8")
    if int8 is None:
        return as_int8(fp32, photos, required=required)
    int8.fp32 = fp32
    return int8


def _catalog_photos(index_dir: Path) -> list[str]:
    db = CatalogDB(index_dir / CATALOG_DB)
    with closing(db), db.guarded():
        return db.sample_image_paths(CALIBRATION_PHOTOS)


def _keep(index_dir: Path, manifest: Manifest, encoder: Encoder) -> None:
    if encoder.config.identity() == manifest.model.identity():
        keep_model(index_dir, encoder)


def keep_model(folder: Path, encoder: Encoder) -> None:
    """Store an ONNX encoder's models in ``folder`` where they are not already: its own and, for an
    int8 one, the fp32 model it was quantized from."""
    for model in (encoder, getattr(encoder, "fp32", None)):
        data = getattr(model, "model_bytes", None)
        if data is not None:
            save_model(folder, data, model.precision)


def export_index_model(index_dir: str | os.PathLike, precision: str = "fp32") -> Path:
    """Export an index's model from torch again and keep it in the folder, replacing what it held;
    ``int8``: quantize its fp32 model (the stored one if sound) on the index's own photos."""
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    if precision == "int8":
        fp32 = load_stored(index_dir, manifest.model, keep_bytes=True)
        encoder = as_int8(fp32 or onnx_from_torch(embedder_for(manifest, index_dir)), _catalog_photos(index_dir))
    else:
        encoder = onnx_from_torch(embedder_for(manifest, index_dir))
    path = save_model(index_dir, encoder.model_bytes, encoder.precision)
    if path is None:
        raise ReadOnlyIndexError(index_dir, "its folder cannot be written")
    return path
