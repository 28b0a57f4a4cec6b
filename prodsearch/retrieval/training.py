"""Training the embedder with the Products-10K tricks, each a switch so an ablation can run.

Stages, in order: ``main`` (the full training set), ``balanced`` (at most 5 images per SKU) and
``accuracy`` (the accuracy loss on the balanced subset). Every epoch writes ``last.pt`` (weights,
losses, optimizer: what ``resume`` needs); each stage's end writes ``model-<stage>.pt``; the end
writes ``model.pt``, the trained embedder that ``prodsearch index --model`` takes, and
``config.json`` / ``history.json`` beside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from pytorch_metric_learning.samplers import MPerClassSampler
from torch.utils.data import DataLoader

from prodsearch.errors import ProdsearchError
from prodsearch.catalog.listing import read_listing
from prodsearch.retrieval.checkpoint import load_checkpoint, save_checkpoint
from prodsearch.retrieval.device import resolve_device
from prodsearch.retrieval.embedder import Embedder, parse_model_name
from prodsearch.retrieval.factory import create_embedder, is_checkpoint_path
from prodsearch.retrieval.embedding import embed_files
from prodsearch.retrieval.images import load_image
from prodsearch.retrieval.losses import RetrievalLoss, create_classification_loss, create_metric_loss
from prodsearch.retrieval.preprocess import decode_min_side
from prodsearch.retrieval.torch_encoder import TorchEncoder
from prodsearch.retrieval.train_data import (MIN_FILES_FOR_WORKERS, AugmentedImages, CachedViews, LabelledSet,
                                             balanced_subset, collate_labelled, decode_worker_init,
                                             photo_augmentation, train_transform)
from prodsearch.train_config import TrainConfig  # the settings live in a light module: train --help shows them

log = logging.getLogger(__name__)

STAGES = ("main", "balanced", "accuracy")
EpochDone = Callable[[dict[str, Any]], None]  # called with each finished epoch's figures


class TrainingError(ProdsearchError):
    """A training set or configuration that cannot be trained on."""


@dataclass
class EpochRecord:
    stage: str
    epoch: int
    loss: float
    parts: dict[str, float]
    images: int
    seconds: float
    lr_head: float
    lr_backbone: float
    val_top1: float | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class TrainResult:
    out: Path
    model_path: Path
    classes: list[str]
    history: list[EpochRecord] = field(default_factory=list)
    best_path: Path | None = None


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy (MPerClassSampler draws from it) and torch (workers derive from it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learning_rate(base: float, epoch: int, steps: tuple[int, ...], gamma: float) -> float:
    """Step decay: ``base * gamma ** (number of steps passed)``, a pure function of the epoch so a
    resumed run continues on the same schedule."""
    return base * gamma ** sum(epoch >= s for s in steps)


class Trainer:
    """One training run's state: data, embedder, losses, frozen parts, cached features, history.
    :func:`train` drives it stage by stage and epoch by epoch."""

    def __init__(self, config: TrainConfig, progress: EpochDone | None):
        self.config, self.progress = config, progress
        self.device = resolve_device(config.device)
        seed_everything(config.seed)
        self.data = LabelledSet.from_items(read_listing(config.train).items)
        if len(self.data.classes) < 2:
            raise TrainingError(f"{config.train} has {len(self.data.classes)} SKU; training needs at least 2")
        self.val = LabelledSet.from_items(read_listing(config.val).items, self.data.classes) if config.val else None
        self._check_settings()
        self.embedder = self._create_embedder()
        self.loss = RetrievalLoss(
            create_classification_loss(config.classification_loss, len(self.data.classes), self.embedder.embed_dim),
            *create_metric_loss(config.metric_loss), config.classification_weight, config.metric_weight,
        ).to(self.device)
        if config.accuracy_epochs and self.loss.classification is None:
            raise TrainingError("the accuracy-loss finetune needs a classification loss (--classification-loss)")
        self._freeze()
        self.balanced = balanced_subset(self.data.labels, config.balanced_max_per_class, config.seed)
        self.features = self._cache_features() if config.freeze_backbone else None
        self.history: list[EpochRecord] = []
        self.best_val: float | None = None
        self.autocast, self.scaler = self._mixed_precision()

    def _check_settings(self) -> None:
        c = self.config
        if c.views > 1 and not c.freeze_backbone:
            raise TrainingError("--views caches augmented views for --freeze-backbone; without it every epoch "
                                "augments the photos anew")
        if c.batch_size % c.m_per_class or c.m_per_class * len(self.data.classes) < c.batch_size:
            raise TrainingError(
                f"--batch-size {c.batch_size} must be a multiple of --m-per-class {c.m_per_class} and at most "
                f"{c.m_per_class} x {len(self.data.classes)} SKUs")

    def _create_embedder(self) -> Embedder:
        c = self.config
        embedder = create_embedder(c.model, embed_dim=c.embed_dim, img_size=c.img_size, crop_pct=c.img_size / c.resize)
        if not embedder.config.head:
            raise TrainingError(f"{c.model} has no embedding head to train; train from a model name")
        return embedder.to(self.device, memory_format=torch.channels_last)

    def _frozen_modules(self) -> list[torch.nn.Module]:
        backbone = self.embedder.backbone
        if self.config.freeze_backbone:
            return [backbone]
        return [backbone.conv_stem, backbone.bn1, *backbone.blocks[: self.config.frozen_stages]]

    def _freeze(self) -> None:
        """Frozen parts get no gradients, so autograd neither stores nor back-propagates through them."""
        for module in self._frozen_modules():
            module.requires_grad_(False)

    def set_train_mode(self) -> None:
        """Train mode, except frozen parts and (``freeze_bn``) the backbone's BatchNorm statistics."""
        self.embedder.train()
        self.loss.train()
        for module in self._frozen_modules():
            module.eval()
        if self.config.freeze_bn:
            for module in self.embedder.backbone.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _mixed_precision(self):
        if self.device.type != "cuda" or self.config.amp == "off":
            return contextlib.nullcontext, None
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return (lambda: torch.autocast("cuda", dtype=dtype)), scaler

    def _cache_features(self) -> dict[str, torch.Tensor]:
        """Pooled backbone features of every training (and validation) image, computed once; the
        training photos' as photos x views x dim (view 0: the photo itself, then ``views - 1``
        augmented ones), the validation photos' as photos x dim."""
        cached = {"train": torch.stack([self._pooled(self.data.paths, "train")]
                                       + [self._pooled(paths, f"view {v}") for v, paths in self._views()], dim=1)}
        if self.val:
            cached["val"] = self._pooled(self.val.paths, "val")
        return cached

    def _pooled(self, paths: list[str], name: str) -> torch.Tensor:
        result = embed_files(TorchEncoder(self.embedder, self.device, pooled=True), paths,
                             num_workers=self.config.workers)
        if result.failures:
            raise TrainingError(f"{len(result.failures)} {name} images could not be read, e.g. "
                                f"{paths[next(iter(result.failures))]}")
        log.info("cached %d %s features (%.1f img/s)", len(result.vectors), name, result.images_per_second)
        return torch.from_numpy(result.vectors)

    def _views(self) -> Iterator[tuple[int, list[str]]]:
        """Augmented views of the training photos, one set of files at a time (high-quality JPEGs in
        a temporary folder, removed after), each set drawn from its own seed."""
        c = self.config
        augment = photo_augmentation(c.resize, c.augment, c.hflip)
        min_side = decode_min_side(self.embedder.data_config)
        with tempfile.TemporaryDirectory(prefix="prodsearch-views-") as tmp:
            for v in range(1, c.views):
                random.seed(c.seed * 1_000_003 + v)
                torch.manual_seed(c.seed * 1_000_003 + v)  # torchvision's random transforms
                paths = []
                for i, path in enumerate(self.data.paths):
                    out = os.path.join(tmp, f"{v}-{i}.jpg")
                    augment(load_image(path, min_side=min_side)).save(out, quality=95)
                    paths.append(out)
                yield v, paths
                for out in paths:
                    os.remove(out)

    def optimizer(self, stage: int) -> torch.optim.Optimizer:
        c = self.config
        scale = 1.0 if stage == 0 else c.finetune_lr_scale
        backbone = [p for p in self.embedder.backbone.parameters() if p.requires_grad]
        head = list(self.embedder.proj.parameters()) + list(self.loss.parameters())
        groups = [{"params": head, "lr": c.lr_head * scale, "base_lr": c.lr_head * scale, "name": "head"}]
        if backbone:
            groups.append({"params": backbone, "lr": c.lr_backbone * scale, "base_lr": c.lr_backbone * scale,
                           "name": "backbone"})
        return torch.optim.Adam(groups, weight_decay=c.weight_decay)

    def loader(self, indices: np.ndarray, seed: int) -> DataLoader:
        c = self.config
        labels = self.data.labels[indices]
        views = 1 if self.features is None else self.features["train"].shape[1]
        sampler = MPerClassSampler(labels, c.m_per_class, c.batch_size,  # an epoch: every cached view once
                                   length_before_new_iter=max(len(indices) * views, c.batch_size))
        if self.features is not None:
            dataset = CachedViews(self.features["train"][indices], labels, seed)
            return DataLoader(dataset, batch_size=c.batch_size, sampler=sampler, drop_last=True)
        cfg = self.embedder.data_config
        transform = train_transform(c.img_size, c.resize, cfg["mean"], cfg["std"], c.augment, c.hflip)
        dataset = AugmentedImages(self.data.subset(indices), transform, decode_min_side(cfg))
        # Training decodes and augments in workers, as its benchmark (BENCHMARKS.md) was measured.
        default = min(4, os.cpu_count() or 1) if len(indices) >= MIN_FILES_FOR_WORKERS else 0
        workers = default if c.workers is None else c.workers
        return DataLoader(dataset, batch_size=c.batch_size, sampler=sampler, drop_last=True, num_workers=workers,
                          collate_fn=collate_labelled, worker_init_fn=decode_worker_init,
                          pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(seed))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.features is not None:
            return self.embedder.embed_pooled(x)
        return self.embedder(x.contiguous(memory_format=torch.channels_last))

    def run_epoch(self, stage: int, epoch: int, optimizer: torch.optim.Optimizer) -> EpochRecord:
        c = self.config
        seed = c.seed * 1_000_003 + stage * 1_009 + epoch
        seed_everything(seed)
        lr_steps = c.lr_steps if stage == 0 else ()  # finetune stages run at a constant rate
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(group["base_lr"], epoch, lr_steps, c.lr_gamma)
        self.set_train_mode()
        loader = self.loader(np.arange(len(self.data)) if stage == 0 else self.balanced, seed)
        total, parts_sum, images, start, batches = 0.0, {}, 0, time.perf_counter(), 0
        optimizer.zero_grad(set_to_none=True)
        for step, batch in enumerate(loader):
            if batch is None:
                continue
            x, y = batch
            with self.autocast():
                embeddings = self.embed(x)
            out = self.loss(embeddings, y.to(self.device), accuracy_only=STAGES[stage] == "accuracy")
            self._backward(out.total / c.accumulate)
            if (step + 1) % c.accumulate == 0:
                self._step(optimizer)
            total += float(out.total.detach())
            for k, v in out.parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            images, batches = images + len(y), batches + 1
            if self.progress:
                self.progress({"stage": STAGES[stage], "epoch": epoch + 1, "step": step + 1, "steps": len(loader),
                               "loss": total / batches, "images_per_second": images / (time.perf_counter() - start)})
        if batches % c.accumulate:
            self._step(optimizer)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        return EpochRecord(STAGES[stage], epoch + 1, total / max(batches, 1),
                           {k: v / max(batches, 1) for k, v in parts_sum.items()}, images,
                           time.perf_counter() - start, lrs["head"], lrs.get("backbone", 0.0), self.validate())

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def _step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def validate(self) -> float | None:
        """Top-1 SKU classification accuracy on the validation set (never the test set)."""
        if self.val is None or self.loss.classification is None or not len(self.val):
            return None
        self.embedder.eval()
        if self.features is not None:
            embeddings = self.embedder.embed_pooled(self.features["val"].to(self.device))
            labels = torch.from_numpy(self.val.labels)
        else:
            result = embed_files(TorchEncoder(self.embedder, self.device), self.val.paths,
                                 num_workers=self.config.workers)
            embeddings = torch.from_numpy(result.vectors).to(self.device)
            labels = torch.from_numpy(self.val.labels[result.positions])
        predicted = self.loss.logits(embeddings).argmax(dim=1).cpu()
        return float((predicted == labels).float().mean())

    def save(self, path: Path, stage: int, epoch: int, optimizer: torch.optim.Optimizer | None) -> Path:
        extra = {"classes": self.data.classes, "config": self.config.to_dict(),
                 "history": [asdict(r) for r in self.history], "stage": stage, "epoch": epoch}
        if optimizer is not None:
            extra |= {"optimizer": optimizer.state_dict(), "loss_state": self.loss.state_dict()}
        return save_checkpoint(path, self.embedder, **extra)

    def restore(self, payload: dict[str, Any]) -> tuple[int, int, dict | None]:
        """Load a ``last.pt``; return where to continue (stage, epoch) and the optimizer state."""
        self.embedder.load_state_dict(payload["state_dict"])
        self.loss.load_state_dict(payload["loss_state"])
        self.history = [EpochRecord(**r) for r in payload["history"]]
        vals = [r.val_top1 for r in self.history if r.val_top1 is not None]
        self.best_val = max(vals) if vals else None
        stage, epoch = int(payload["stage"]), int(payload["epoch"])
        if epoch + 1 < self.config.stage_epochs()[stage]:
            return stage, epoch + 1, payload["optimizer"]
        return stage + 1, 0, None


def check_trainable(config: TrainConfig) -> None:
    """Training trains one backbone's head at ``--img-size``: refuse an ensemble (its members have no
    head to train together) or a ``NAME@SIZE`` at odds with ``--img-size`` before anything is written."""
    if is_checkpoint_path(config.model):
        return
    members = parse_model_name(config.model)
    if len(members) > 1:
        raise TrainingError(
            f"--model {config.model} is an ensemble of {len(members)} backbones, and training trains one: train a "
            f"single backbone (e.g. --model {members[-1][0]} --img-size {members[-1][1] or config.img_size}), or use "
            f"the ensemble untrained: prodsearch index CATALOG --index DIR --model {config.model}")
    [(name, size)] = members
    if size is not None and size != config.img_size:
        raise TrainingError(f"--model {config.model} asks for {size} px but training crops at --img-size "
                            f"{config.img_size}: give the size once, with --model {name} --img-size {size}")


def train(config: TrainConfig, *, resume: str | os.PathLike | None = None,
          progress: EpochDone | None = None) -> TrainResult:
    """Run (or, from a ``last.pt``, continue) a training run; return where the model was written.

    With ``resume`` the run's saved configuration is used, not ``config``, except where the
    model runs (``device``, ``workers``).
    """
    payload = None
    if resume:
        payload = load_checkpoint(resume)
        if "optimizer" not in payload:
            raise TrainingError(f"{resume} holds a finished model, not a run to resume: resume from last.pt")
        config = TrainConfig.from_dict({**payload["config"], "device": config.device, "workers": config.workers})
    check_trainable(config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    trainer = Trainer(config, progress)
    start_stage, start_epoch, optimizer_state = trainer.restore(payload) if payload else (0, 0, None)
    best_path = out / "best.pt" if payload and (out / "best.pt").is_file() else None
    for stage, epochs in enumerate(config.stage_epochs()):
        if stage < start_stage or not epochs:
            continue
        optimizer = trainer.optimizer(stage)
        if optimizer_state is not None and stage == start_stage:
            optimizer.load_state_dict(optimizer_state)
        for epoch in range(start_epoch if stage == start_stage else 0, epochs):
            record = trainer.run_epoch(stage, epoch, optimizer)
            trainer.history.append(record)
            log.info("%s epoch %d/%d: loss %.4f %s, %.1f img/s%s", record.stage, record.epoch, epochs, record.loss,
                     record.parts, record.images_per_second,
                     f", val top-1 {record.val_top1:.4f}" if record.val_top1 is not None else "")
            trainer.save(out / "last.pt", stage, epoch, optimizer)
            if record.val_top1 is not None and (trainer.best_val is None or record.val_top1 > trainer.best_val):
                trainer.best_val = record.val_top1
                best_path = trainer.save(out / "best.pt", stage, epoch, None)
        trainer.save(out / f"model-{STAGES[stage]}.pt", stage, epochs - 1, None)  # each stage's result, for ablations
    final_stage = max((s for s, e in enumerate(config.stage_epochs()) if e), default=0)
    model_path = trainer.save(out / "model.pt", final_stage, config.stage_epochs()[final_stage] - 1, None)
    (out / "history.json").write_text(json.dumps([asdict(r) for r in trainer.history], indent=2) + "\n")
    return TrainResult(out, model_path, trainer.data.classes, trainer.history, best_path)
