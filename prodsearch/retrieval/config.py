"""What determines the vectors an embedder produces, free of torch: the index manifest and the
ONNX runtime read it on machines that never import torch."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from prodsearch.choices import DEFAULT_POOLING


@dataclass(frozen=True)
class EmbedderConfig:
    """Everything that determines the vectors an embedder produces; stored in the index manifest."""

    name: str  # timm architecture, or an ensemble's members with their sizes ("a@224+b@448")
    weights: str  # "imagenet:<package>...", "random:seed=0" or "checkpoint:<digest of the weights>"; an
    # ensemble's members' joined by " + "
    embed_dim: int
    data_config: dict[str, Any] = field(default_factory=dict)
    head: bool = False  # a trained projection + BatchNorm embedding head follows the pooling
    source: str | None = None  # the checkpoint file it came from; where, not what: not part of identity()
    pooling: str = DEFAULT_POOLING  # global pooling of the feature map (prodsearch.retrieval.pooling)

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON; the default pooling is left out, so every manifest and ONNX file
        written before poolings existed keeps its identity."""
        d = asdict(self)
        d["data_config"] = _jsonable(self.data_config)
        if self.pooling == DEFAULT_POOLING:
            del d["pooling"]
        return d

    @property
    def label(self) -> str:
        """How a user names this model: the checkpoint file, or the architecture."""
        return self.source or self.name

    def identity(self) -> dict[str, Any]:
        """What must match between index and query: all but the checkpoint's file path."""
        d = self.to_dict()
        del d["source"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmbedderConfig":
        return cls(name=d["name"], weights=d["weights"], embed_dim=int(d["embed_dim"]),
                   data_config=_jsonable(d["data_config"]), head=bool(d.get("head", False)),
                   source=d.get("source"), pooling=d.get("pooling", DEFAULT_POOLING))


def _jsonable(data_config: dict[str, Any]) -> dict[str, Any]:
    """Tuples become lists so a config compares equal to itself after a JSON round trip."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()}


class ConfiguredModel:
    """What every model prodsearch embeds with shows of its :class:`EmbedderConfig` (a single
    backbone and an ensemble alike): its embedding size and its preprocessing."""

    config: EmbedderConfig

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def data_config(self) -> dict[str, Any]:
        return self.config.data_config
