"""ONNX models kept in a folder (an index's): ``model-<precision>-<sha256 prefix>.onnx``.

The name carries a digest of the content, so a damaged file is recognised and never used; each
file is written under a temporary name and renamed, so it appears whole or not at all; and a file
is used only if the embedder config in its metadata is the one asked for (the weights digest the
manifest records included). Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from prodsearch.catalog.files import write_atomically
from prodsearch.retrieval.config import EmbedderConfig

if TYPE_CHECKING:
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder

log = logging.getLogger(__name__)

MODEL_FILE_PATTERN = r"model-(fp32|int8)-([0-9a-f]{16})\.onnx"
MODEL_FILE = re.compile(f"^{MODEL_FILE_PATTERN}$")


def model_file_name(data: bytes, precision: str) -> str:
    return f"model-{precision}-{hashlib.sha256(data).hexdigest()[:16]}.onnx"


def load_stored(folder: Path, config: EmbedderConfig, precision: str = "fp32",
                keep_bytes: bool = False) -> "OnnxEncoder | None":
    """The folder's ONNX model of ``config`` in ``precision``, checked whole; files that fail the
    check (damaged, unreadable, exported from another model) are logged with the reason and skipped."""
    for path in _candidates(folder, precision):
        problem, encoder = _check(path, config, keep_bytes=keep_bytes)
        if encoder is not None:
            return encoder
        log.warning("not using %s: %s", path, problem)
    return None


def _candidates(folder: Path, precision: str) -> list[Path]:
    try:
        paths = [p for p in folder.iterdir() if (m := MODEL_FILE.match(p.name)) and m.group(1) == precision]
    except OSError:
        return []
    return sorted(paths, key=_mtime, reverse=True)  # the newest export first


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_checked(path: Path) -> tuple[bytes | None, str]:
    """(the file's bytes, "") if its content matches the digest in its name, else (None, why not)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"unreadable ({exc.strerror or exc})"
    if model_file_name(data, MODEL_FILE.match(path.name).group(1)) != path.name:
        return None, "damaged (its content does not match the digest in its name)"
    return data, ""


def _check_digest(path: Path) -> bool:
    return path.is_file() and _read_checked(path)[0] is not None


def _check(path: Path, config: EmbedderConfig, keep_bytes: bool = False) -> tuple[str, "OnnxEncoder | None"]:
    from prodsearch.retrieval.onnx_encoder import OnnxEncoder, OnnxModelError  # onnxruntime: once a file is there

    data, problem = _read_checked(path)
    if data is None:
        return problem, None
    try:
        encoder = OnnxEncoder(data, name=str(path), keep_bytes=keep_bytes)
    except OnnxModelError as exc:
        return str(exc), None
    if encoder.config.identity() != config.identity():
        return f"exported from another model ({encoder.config.label})", None
    return "", encoder


def stored_models(folder: Path, config: EmbedderConfig) -> dict[str, str]:
    """Each ONNX model file in ``folder`` -> ``"ok"`` or why it would not be used (``info`` shows them)."""
    found = {}
    for precision in ("fp32", "int8"):
        for path in _candidates(folder, precision):
            problem, encoder = _check(path, config)
            found[path.name] = "ok" if encoder is not None else problem
    return found


def remove_models(folder: Path, precision: str) -> None:
    """Remove the folder's models of ``precision`` (a file that cannot be removed stays, and is logged)."""
    for path in _candidates(folder, precision):
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s (%s)", path, exc.strerror or exc)
        else:
            log.info("removed %s", path)


def save_model(folder: Path, data: bytes, precision: str) -> Path | None:
    """Write ``data`` into ``folder`` atomically, replacing the folder's other models of that
    precision (a caller saves only when none of them served); ``None`` (and a log line) where the
    folder cannot be written: the model then lives in memory only."""
    path = folder / model_file_name(data, precision)
    if _check_digest(path):
        return path
    try:
        write_atomically(path, data)
    except OSError as exc:
        log.warning("could not keep the ONNX model in %s (%s); it is exported again by the next command "
                    "that needs it", folder, exc.strerror or exc)
        return None
    for old in _candidates(folder, precision):
        if old != path:
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)
    log.info("kept the %s ONNX model in %s", precision, path)
    return path
