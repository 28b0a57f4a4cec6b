"""What a search answers: ranked SKUs with the catalog's details, per photo or for several photos
of one product. Plain data, ``to_dict()`` for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Match:
    sku: str
    score: float
    name: str
    category: str | None
    image_id: int
    image_path: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Answer:
    """Ranked SKUs for one product's photos, and the catalog generation they come from."""

    generation: int
    matches: list[Match]


@dataclass(frozen=True)
class QueryResult:
    path: str
    matches: list[Match]
    error: str | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.error, "matches": [m.to_dict() for m in self.matches]}


@dataclass(frozen=True)
class FusedResult:
    """Several photos of one product, answered together."""

    paths: list[str]
    matches: list[Match]
    errors: dict[str, str]  # photo -> why it was left out

    def to_dict(self) -> dict:
        return {"paths": self.paths, "errors": self.errors, "matches": [m.to_dict() for m in self.matches]}
