"""What a search answers: ranked SKUs with the catalog's details, per photo or for several photos
of one product. Plain data, ``to_dict()`` for JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from prodsearch.indexer.rejection import Decision


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
    decision: Decision | None = None  # None: no "not in catalog" rule applied

    @property
    def match(self) -> Match | None:
        return accepted(self.matches, self.decision)


@dataclass(frozen=True)
class QueryResult:
    path: str
    matches: list[Match]
    error: str | None = None
    decision: Decision | None = None

    @property
    def match(self) -> Match | None:
        return accepted(self.matches, self.decision)

    def to_dict(self) -> dict:
        return {"path": self.path, "error": self.error, **verdict_dict(self.matches, self.decision),
                "matches": [m.to_dict() for m in self.matches]}


@dataclass(frozen=True)
class FusedResult:
    """Several photos of one product, answered together."""

    paths: list[str]
    matches: list[Match]
    errors: dict[str, str]  # photo -> why it was left out
    decision: Decision | None = None

    @property
    def match(self) -> Match | None:
        return accepted(self.matches, self.decision)

    def to_dict(self) -> dict:
        return {"paths": self.paths, "errors": self.errors, **verdict_dict(self.matches, self.decision),
                "matches": [m.to_dict() for m in self.matches]}


def accepted(matches: list[Match], decision: Decision | None) -> Match | None:
    """The answer's SKU: the first match unless the rule rejected it ("not in catalog")."""
    if not matches or (decision is not None and not decision.accepted):
        return None
    return matches[0]


def verdict_dict(matches: list[Match], decision: Decision | None) -> dict:
    """``match`` (null: not in the catalog, or nothing to answer) and the ``decision`` that made it
    (null when no rule was applied): the keys every JSON answer shares."""
    match = accepted(matches, decision)
    return {"match": None if match is None else match.to_dict(),
            "decision": None if decision is None else decision.to_dict()}
