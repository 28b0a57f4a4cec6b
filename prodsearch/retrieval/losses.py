"""Training losses, composed from pytorch-metric-learning by name.

A classification loss on the embedding (ArcFace, SubCenterArcFace, CosFace, normalised softmax, or
plain softmax cross-entropy) holds the classification head over the training SKUs; a pair-based
metric loss with its miner shapes the neighbourhoods retrieval uses. :class:`AccuracyLoss` is the
Products-10K paper's finetuning loss, ``1 - mean softmax probability of the true class``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper
from torch import nn

from prodsearch.choices import CLASSIFICATION_LOSSES, METRIC_LOSSES


class AccuracyLoss(nn.Module):
    """L_acc = 1 - sum(softmax(logits) * onehot(y)) / N: optimises top-1 accuracy more directly
    than cross-entropy (Products-10K paper, eq. 1)."""

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        probs = logits.float().softmax(dim=1)
        return 1.0 - probs.gather(1, labels.view(-1, 1)).sum() / len(labels)


class SoftmaxLoss(nn.Module):
    """Plain softmax cross-entropy through a linear classifier on the embedding."""

    def __init__(self, num_classes: int, embedding_size: int):
        super().__init__()
        self.classifier = nn.Linear(embedding_size, num_classes)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.classifier(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.get_logits(embeddings), labels)


def create_classification_loss(name: str, num_classes: int, embedding_size: int) -> nn.Module | None:
    """A loss whose weights are the classification head; it offers ``get_logits(embeddings)``."""
    if name == "none":
        return None
    factories = {
        "arcface": lambda: losses.ArcFaceLoss(num_classes, embedding_size),
        "subcenter_arcface": lambda: losses.SubCenterArcFaceLoss(num_classes, embedding_size),
        "cosface": lambda: losses.CosFaceLoss(num_classes, embedding_size),
        "normalized_softmax": lambda: losses.NormalizedSoftmaxLoss(num_classes, embedding_size),
        "softmax": lambda: SoftmaxLoss(num_classes, embedding_size),
    }
    if name not in factories:
        raise ValueError(f"unknown classification loss {name!r}; choose one of {', '.join(CLASSIFICATION_LOSSES)}")
    return factories[name]()


def create_metric_loss(name: str) -> tuple[nn.Module | None, nn.Module | None]:
    """A pair-based loss and the miner that picks its informative pairs."""
    if name == "none":
        return None, None
    factories = {
        "multisimilarity": lambda: (losses.MultiSimilarityLoss(), miners.MultiSimilarityMiner()),
        "triplet": lambda: (losses.TripletMarginLoss(margin=0.1), miners.TripletMarginMiner(margin=0.1)),
        "contrastive": lambda: (losses.ContrastiveLoss(), miners.PairMarginMiner()),
    }
    if name not in factories:
        raise ValueError(f"unknown metric loss {name!r}; choose one of {', '.join(METRIC_LOSSES)}")
    return factories[name]()


@dataclass
class LossParts:
    total: torch.Tensor  # what is back-propagated
    parts: dict[str, float]  # each loss's value
    value: float  # the loss of the batch, as one process would compute it on the whole batch


class RetrievalLoss(nn.Module):
    """``w_cls * classification(emb, y) + w_metric * metric(emb, y, miner(emb, y))``, or, in the
    accuracy finetune, ``AccuracyLoss(classification logits, y)``.

    With ``world_size`` > 1 (processes of one distributed run) the miner and the metric loss see
    every process's embeddings (pytorch-metric-learning's distributed wrappers), as one process
    would see the whole batch; the classification loss, whose head is replicated, sees this
    process's share, and averaging the gradients over the processes makes it the batch mean.
    """

    def __init__(self, classification: nn.Module | None, metric: nn.Module | None, miner: nn.Module | None,
                 classification_weight: float = 1.0, metric_weight: float = 1.0, world_size: int = 1):
        super().__init__()
        if classification is None and metric is None:
            raise ValueError("at least one of the classification and metric losses is needed")
        self.classification, self.metric, self.miner = classification, metric, miner
        self.classification_weight, self.metric_weight = classification_weight, metric_weight
        self.accuracy = AccuracyLoss()
        self.world_size = world_size
        # A plain tuple: the wrappers are not registered, so checkpoints name the same weights either way.
        self._gathered = (DistributedLossWrapper(metric) if metric is not None else None,
                          DistributedMinerWrapper(miner) if miner is not None else None) if world_size > 1 else None

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.classification is None:
            raise ValueError("logits need a classification loss (its weights are the classifier)")
        return self.classification.get_logits(embeddings.float())

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, accuracy_only: bool = False) -> LossParts:
        embeddings = embeddings.float()  # margin losses are unstable in half precision
        if accuracy_only:
            acc = self.accuracy(self.logits(embeddings), labels)
            return LossParts(acc, {"accuracy": float(acc.detach())}, float(acc.detach()))
        total, parts, value = embeddings.new_zeros(()), {}, 0.0
        if self.classification is not None:
            cls = self.classification(embeddings, labels)
            total, parts["classification"] = total + self.classification_weight * cls, float(cls.detach())
            value += self.classification_weight * parts["classification"]
        if self.metric is not None:
            metric_loss, miner = self._gathered or (self.metric, self.miner)
            pairs = miner(embeddings, labels) if miner is not None else None
            # Gathered, the loss comes multiplied by the number of processes: the mean of their
            # gradients is then the gradient of the whole batch's loss.
            metric = metric_loss(embeddings, labels, pairs)
            total, parts["metric"] = total + self.metric_weight * metric, float(metric.detach()) / self.world_size
            value += self.metric_weight * parts["metric"]
        return LossParts(total, parts, value)
