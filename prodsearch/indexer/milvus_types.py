"""Which Milvus index a collection gets: the FAISS ``--index-type`` logic mapped onto Milvus names.

``auto`` chooses by catalog size exactly as for FAISS (:func:`~prodsearch.indexer.index_types.choose_index_type`)
and maps the choice: ``Flat`` -> ``FLAT``, ``IVF{n},SQfp16`` -> ``IVF_SQ8`` (Milvus has no float16
scalar quantiser), ``IVF{n}_HNSW32,PQ{m},Refine(SQ8)`` -> ``IVF_PQ`` on a server, ``IVF_SQ8`` on Milvus Lite,
which builds no PQ index. A FAISS factory string of a kind Milvus has is mapped the same way
(``IVF4096,Flat``, ``HNSW32,Flat``); a Milvus name (``HNSW``, ``IVF_PQ``, ``GPU_CAGRA``...) is taken as
it is, with parameters sized to the catalog. A spec is written ``TYPE`` or ``TYPE:key=value,...``.
"""

from __future__ import annotations

import re

from prodsearch.errors import IndexTypeError
from prodsearch.indexer.index_types import choose_index_type, nlist_for, pq_subquantizers

# What milvus-lite (3.x) builds; any other type needs a Milvus server. (Milvus Lite 2.x built FLAT and
# IVF_FLAT only.)
LITE_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "HNSW")
SERVER_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "SCANN", "DISKANN", "AUTOINDEX", "GPU_CAGRA",
                "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE")
_FAISS_KINDS = ((re.compile(r"Flat"), "FLAT"), (re.compile(r"IVF(\d+),Flat"), "IVF_FLAT"),
                (re.compile(r"IVF(\d+),SQ(8|fp16)"), "IVF_SQ8"), (re.compile(r"IVF(\d+)(_HNSW\d+)?,PQ(\d+).*"), "IVF_PQ"),
                (re.compile(r"HNSW(\d+)(,Flat)?"), "HNSW"))


def milvus_index_spec(requested: str, count: int, dim: int, *, lite: bool) -> str:
    """The ``TYPE:key=value,...`` spec a collection of ``count`` ``dim``-d vectors is built with."""
    auto = requested == "auto"
    factory = choose_index_type(count, dim) if auto else requested
    kind, params = _from_faiss(factory, count, dim) or _from_milvus(factory, count, dim)
    if lite and kind not in LITE_TYPES:
        if auto:  # the largest catalogs: Milvus Lite has no PQ index; its IVF_SQ8 is the nearest
            kind, params = "IVF_SQ8", {"nlist": params["nlist"]}
        else:
            raise IndexTypeError(
                f"Milvus Lite builds {', '.join(LITE_TYPES)} indexes, not {kind}; {kind} needs a Milvus server "
                "(--milvus-uri http://HOST:19530), or choose --index-type auto or one of those")
    return format_spec(kind, params)


def parse_spec(spec: str) -> tuple[str, dict[str, int]]:
    """``"IVF_SQ8:nlist=1024"`` -> ``("IVF_SQ8", {"nlist": 1024})``."""
    kind, _, rest = spec.partition(":")
    return kind, {k: int(v) for k, v in (part.split("=") for part in rest.split(",") if part)}


def format_spec(kind: str, params: dict[str, int]) -> str:
    return kind + (":" + ",".join(f"{k}={v}" for k, v in params.items()) if params else "")


def search_params(kind: str, overrides: dict[str, int] | None = None) -> dict:
    """Milvus search parameters for an index ``kind``: nprobe 16 (IVF), ef 128 (HNSW), the defaults
    of the FAISS indexes; ``overrides`` uses the CLI's names (``nprobe``, ``efSearch``)."""
    overrides = overrides or {}
    if kind.startswith(("IVF", "GPU_IVF", "SCANN")):
        return {"nprobe": int(overrides.get("nprobe", 16))}
    if kind == "HNSW":
        return {"ef": int(overrides.get("efSearch", 128))}
    return {}


def _from_faiss(factory: str, count: int, dim: int) -> tuple[str, dict[str, int]] | None:
    for pattern, kind in _FAISS_KINDS:
        match = pattern.fullmatch(factory)
        if match is None:
            continue
        if kind == "FLAT":
            return kind, {}
        if kind == "HNSW":
            return kind, {"M": int(match.group(1)), "efConstruction": 200}
        nlist = int(match.group(1))
        return kind, ({"nlist": nlist, "m": int(match.group(3))} if kind == "IVF_PQ" else {"nlist": nlist})
    return None


def _from_milvus(spec: str, count: int, dim: int) -> tuple[str, dict[str, int]]:
    try:
        kind, given = parse_spec(spec)
    except ValueError:
        kind, given = spec, None
    if kind not in SERVER_TYPES or given is None:
        raise IndexTypeError(f"{spec!r} is not an index type for Milvus; use auto, FLAT, IVF_FLAT, IVF_SQ8, HNSW, "
                             "IVF_PQ (a server), a FAISS type Milvus has (IVF4096,Flat, HNSW32,Flat), or TYPE:key=value")
    defaults = {"IVF_FLAT": {"nlist": nlist_for(count)}, "IVF_SQ8": {"nlist": nlist_for(count)},
                "IVF_PQ": {"nlist": nlist_for(count), "m": pq_subquantizers(dim)},
                "HNSW": {"M": 32, "efConstruction": 200}}.get(kind, {})
    return kind, {**defaults, **given}
