"""The shape of ``manifest.json``, checked whole on every read.

A manifest edited by hand, truncated, or written by something else must give one clear
"damaged" message, not a ``KeyError`` three calls later. pydantic checks every field at once and
says where the first problem is (``model.data_config.input_size: Field required``).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from prodsearch.choices import MAX_VIEWS

Positive = Annotated[int, Field(gt=0)]
Channels = tuple[float, float, float]


class _Schema(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # unknown keys: a newer minor version's additions


class DataConfig(_Schema):
    """timm's data config; only the input size has no default in timm's transforms."""

    input_size: tuple[Literal[3], Positive, Positive]
    interpolation: str = "bicubic"
    mean: Channels = (0.5, 0.5, 0.5)
    std: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] = (0.5, 0.5, 0.5)
    crop_pct: Annotated[float, Field(gt=0, le=1)] = 1.0
    crop_mode: str = "center"


class ModelSection(_Schema):
    name: Annotated[str, Field(min_length=1)]
    weights: Annotated[str, Field(min_length=1)]
    embed_dim: Positive
    data_config: DataConfig
    head: bool = False
    source: Optional[str] = None


class VectorIndexSection(_Schema):
    type: str
    factory: str = "auto"
    requested: Optional[str] = None
    metric: Literal["inner_product"] = "inner_product"


class EmbeddingSection(_Schema):
    """How photos become vectors beyond the model: ``views`` fixed views each, fused (absent before views)."""

    views: Annotated[int, Field(ge=1, le=MAX_VIEWS)] = 1


class CatalogSection(_Schema):
    source: str


class VectorStoreSection(_Schema):
    """Where the vectors are searched (absent before Milvus: FAISS snapshots in the folder)."""

    kind: Literal["faiss", "milvus"] = "faiss"
    uri: Annotated[str, Field(min_length=1)] = "milvus.db"
    collection: Annotated[str, Field(min_length=1)] = "prodsearch_images"


Share = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]


class PrecisionCheckSection(_Schema):
    """Whether int8 kept the shop's top-1 answers (absent where it was not measured)."""

    photos: Count
    changed: Count
    agreement: Share
    limit: Share
    chosen: Literal["fp32", "int8"]
    asked: Literal["auto", "int8"] = "auto"
    source: str = "catalog photos"
    fp32_right: Count = 0
    int8_right: Count = 0

    @model_validator(mode="after")
    def _within_photos(self) -> PrecisionCheckSection:
        if max(self.changed, self.fp32_right, self.int8_right) > self.photos:
            raise ValueError(f"counts above the {self.photos} photos measured")
        return self


class TunedCandidate(_Schema):
    """One setting ``prodsearch tune`` measured: its index options and its scores on the shop's photos
    (None where it was not scored: ``skipped`` says why)."""

    name: Annotated[str, Field(min_length=1)]
    options: str
    top1: float | None = None
    low: float | None = None
    high: float | None = None
    top5: float | None = None
    minutes: float | None = None
    skipped: str | None = None


class TuningSection(_Schema):
    """What ``prodsearch tune`` chose the index's settings on (absent: not tuned)."""

    chosen: Annotated[str, Field(min_length=1)]
    photos: Annotated[int, Field(ge=0)]
    rule: str
    reason: str = ""
    candidates: list[TunedCandidate]


class ManifestSchema(_Schema):
    format: Literal["prodsearch-index"]
    format_version: int
    prodsearch_version: str
    created: str = ""
    model: ModelSection
    embed_dim: Positive
    embedding: EmbeddingSection = Field(default_factory=EmbeddingSection)
    vector_index: VectorIndexSection
    catalog: CatalogSection
    vector_store: VectorStoreSection = Field(default_factory=VectorStoreSection)
    precision_check: PrecisionCheckSection | None = None
    tuning: TuningSection | None = None

    @model_validator(mode="after")
    def _same_width(self) -> "ManifestSchema":
        if self.embed_dim != self.model.embed_dim:
            raise ValueError(f"embed_dim {self.embed_dim} differs from model.embed_dim {self.model.embed_dim}")
        return self


def manifest_problem(text: bytes) -> str | None:
    """Why ``text`` is not a valid manifest (the first problem, where it is), or ``None``."""
    try:
        ManifestSchema.model_validate_json(text)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        return f"{where}: {message}" if where else message
    return None
