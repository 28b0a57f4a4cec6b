"""Training the embedder with the Products-10K tricks, each a switch so an ablation can run.

Stages, in order: ``main`` (the full training set), ``balanced`` (at most 5 images per SKU) and
``accuracy`` (the accuracy loss on the balanced subset). Every epoch writes ``last.pt`` (weights,
losses, optimizer: what ``resume`` needs); each stage's end writes ``model-<stage>.pt``; the end
writes ``model.pt``, the trained embedder that ``prodsearch index --model`` takes, and
``config.json`` / ``history.json`` beside it. Before it, the model is compared with the untrained
embedder the run started from (:mod:`.comparison`), on the ``--val`` photos or, without them, on
photos held out of training (:mod:`.heldout`); ``model.pt`` and ``comparison.json`` keep the result.

Under torchrun the same run trains in N processes with DistributedDataParallel (NCCL between
GPUs, gloo between CPUs): ``--batch-size`` stays the global batch, each process embeds its share of
it (:mod:`.sampling`), the metric loss sees every process's embeddings (:mod:`.losses`), and only
rank 0 writes files. The result matches one process with the same settings, up to float rounding,
and either resumes the other's ``last.pt``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from prodsearch.catalog.listing import read_listing
from prodsearch.failpoints import crash_point
from prodsearch.retrieval.checkpoint import load_checkpoint, save_checkpoint
from prodsearch.retrieval.comparison import TRAIN_ADVICE, Comparison, compare, comparison_dict
from prodsearch.retrieval.distributed import World, all_sum, backend_for, local_device, process_group, world_from_env
from prodsearch.retrieval.embedder import Embedder, parse_model_name
from prodsearch.retrieval.factory import create_embedder, is_checkpoint_path
from prodsearch.retrieval.embedding import embed_files
from prodsearch.retrieval.feature_cache import cache_features
from prodsearch.retrieval.heldout import MIN_PHOTOS_TO_HOLD_OUT, HeldOut, hold_out
from prodsearch.retrieval.losses import LossParts, RetrievalLoss, create_classification_loss, create_metric_loss
from prodsearch.retrieval.preprocess import decode_min_side
from prodsearch.retrieval.sampling import EpochBatches
from prodsearch.retrieval.torch_encoder import TorchEncoder
from prodsearch.retrieval.sync_bn import sync_batchnorm
from prodsearch.retrieval.train_data import (MIN_FILES_FOR_WORKERS, AugmentedImages, CachedViews, LabelledSet,
                                             TrainingError, balanced_subset, decode_worker_init, train_transform)
from prodsearch.train_config import TrainConfig  # the settings live in a light module: train --help shows them

log = logging.getLogger(__name__)

STAGES = ("main", "balanced", "accuracy")
EpochDone = Callable[[dict[str, Any]], None]  # called with each finished epoch's figures

__all__ = ["STAGES", "TrainConfig", "Trainer", "TrainingError", "TrainResult", "EpochRecord", "train"]


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
    comparison: Comparison | None = None  # the trained model against the untrained one it started from
    uncompared: str | None = None  # why there is no comparison, where there is none


def seed_everything(seed: int) -> None:
    """Seeds Python, numpy (MPerClassSampler draws from it) and torch (workers derive from it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def learning_rate(base: float, epoch: int, steps: tuple[int, ...], gamma: float) -> float:
    """Step decay: ``base * gamma ** (number of steps passed)``, a pure function of the epoch so a
    resumed run continues on the same schedule."""
    return base * gamma ** sum(epoch >= s for s in steps)


class TrainStep(torch.nn.Module):
    """The embedder and the losses as one module, which DistributedDataParallel wraps whole: the
    classification head's gradients are then averaged over the processes with the backbone's."""

    def __init__(self, embedder: Embedder, loss: RetrievalLoss, pooled: bool, autocast: Callable):
        super().__init__()
        self.embedder, self.loss, self.pooled, self.autocast = embedder, loss, pooled, autocast

    def forward(self, x: torch.Tensor, y: torch.Tensor, accuracy_only: bool) -> LossParts:
        with self.autocast():
            embeddings = (self.embedder.embed_pooled(x) if self.pooled
                          else self.embedder(x.contiguous(memory_format=torch.channels_last)))
        return self.loss(embeddings, y, accuracy_only=accuracy_only)


class Trainer:
    """One training run's state: data, embedder, losses, frozen parts, cached features, history.
    :func:`train` drives it stage by stage and epoch by epoch."""

    def __init__(self, config: TrainConfig, progress: EpochDone | None, world: World = World(),
                 resumed: bool = False):
        self.config, self.world = config, world
        self.progress = progress if world.is_main else None
        self.device = local_device(config.device, world)
        seed_everything(config.seed)
        items = read_listing(config.train).items
        self.held_out: HeldOut | None = None
        if not config.val:  # the photos the trained model is compared on, kept out of training
            items, self.held_out = hold_out(items, config.out, config.seed, resumed=resumed, write=world.is_main)
        self.data = LabelledSet.from_items(items)
        if len(self.data.classes) < 2:
            raise TrainingError(f"{config.train} has {len(self.data.classes)} SKU; training needs at least 2")
        self.val = LabelledSet.from_items(read_listing(config.val).items, self.data.classes) if config.val else None
        self._check_settings()
        self.embedder = self._create_embedder()
        self.loss = RetrievalLoss(
            create_classification_loss(config.classification_loss, len(self.data.classes), self.embedder.embed_dim),
            *create_metric_loss(config.metric_loss), config.classification_weight, config.metric_weight, world.size,
        ).to(self.device)
        if config.accuracy_epochs and self.loss.classification is None:
            raise TrainingError("the accuracy-loss finetune needs a classification loss (--classification-loss)")
        self._freeze()
        self.balanced = balanced_subset(self.data.labels, config.balanced_max_per_class, config.seed)
        self.features = (cache_features(self.embedder, self.device, config, self.data, self.val, world)
                         if config.freeze_backbone else None)
        self.history: list[EpochRecord] = []
        self.best_val: float | None = None
        self.autocast, self.scaler = self._mixed_precision()
        self.step = self._train_step()

    def _check_settings(self) -> None:
        c, world = self.config, self.world
        if c.batch_size % world.size:
            raise TrainingError(f"--batch-size {c.batch_size} (the global batch) is shared by {world.size} processes: "
                                f"make it a multiple of {world.size}")
        if world.is_distributed and not c.freeze_bn and not c.freeze_backbone and self.device.type != "cuda":
            raise TrainingError("--no-freeze-bn across CPU processes would normalise each process's share of the "
                                "batch on its own (SyncBatchNorm needs GPUs): keep --freeze-bn, or train on GPUs "
                                "or in one process")
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
        if self.world.is_distributed:  # the head's BatchNorm (and an unfrozen backbone's) sees the whole batch
            embedder = sync_batchnorm(embedder, self.device)
        return embedder.to(self.device, memory_format=torch.channels_last)

    def _train_step(self) -> torch.nn.Module:
        """The module a training step calls: :class:`TrainStep`, in DistributedDataParallel when
        several processes train (the model's starting weights are then rank 0's)."""
        step = TrainStep(self.embedder, self.loss, self.features is not None, self.autocast)
        if not self.world.is_distributed:
            return step
        from torch.nn.parallel import DistributedDataParallel

        # BatchNorm buffers need no broadcast at each step: whole-batch statistics (sync_batchnorm)
        # keep them the same in every process.
        return DistributedDataParallel(step, device_ids=[self.device] if self.device.type == "cuda" else None,
                                       forward_sync_buffers=False)

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

    def loader(self, stage: int) -> DataLoader:
        """The stage's batches (the whole training set, or the balanced subset), this process's
        share of each; its sampler draws a new epoch at each ``set_epoch``."""
        c = self.config
        indices = np.arange(len(self.data)) if stage == 0 else self.balanced
        labels = self.data.labels[indices]
        views = 1 if self.features is None else self.features["train"].shape[1]
        seed = c.seed * 1_000_003 + stage * 1_009
        sampler = EpochBatches(labels, c.m_per_class, c.batch_size,  # an epoch: every cached view once
                               max(len(indices) * views, c.batch_size), seed, self.world)
        local_batch = c.batch_size // self.world.size
        if self.features is not None:
            return DataLoader(CachedViews(self.features["train"][indices], labels), batch_size=local_batch,
                              sampler=sampler, drop_last=True)
        cfg = self.embedder.data_config
        transform = train_transform(c.img_size, c.resize, cfg["mean"], cfg["std"], c.augment, c.hflip)
        dataset = AugmentedImages(self.data.subset(indices), transform, decode_min_side(cfg))
        # Training decodes and augments in workers, as its benchmark (BENCHMARKS.md) was measured.
        default = min(4, os.cpu_count() or 1) if len(indices) >= MIN_FILES_FOR_WORKERS else 0
        workers = default if c.workers is None else c.workers
        return DataLoader(dataset, batch_size=local_batch, sampler=sampler, drop_last=True, num_workers=workers,
                          worker_init_fn=decode_worker_init, pin_memory=self.device.type == "cuda")

    def run_epoch(self, stage: int, epoch: int, optimizer: torch.optim.Optimizer, loader: DataLoader) -> EpochRecord:
        c = self.config
        seed_everything(c.seed * 1_000_003 + stage * 1_009 + epoch)
        lr_steps = c.lr_steps if stage == 0 else ()  # finetune stages run at a constant rate
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(group["base_lr"], epoch, lr_steps, c.lr_gamma)
        self.set_train_mode()
        loader.sampler.set_epoch(epoch)
        total, parts_sum, images, start, batches = 0.0, {}, 0, time.perf_counter(), 0
        optimizer.zero_grad(set_to_none=True)
        for step, (x, y) in enumerate(loader):
            stepping = (step + 1) % c.accumulate == 0 or step + 1 == len(loader)
            # Between optimizer steps the processes need not average gradients: they add up locally.
            with contextlib.nullcontext() if stepping or not self.world.is_distributed else self.step.no_sync():
                out = self.step(x.to(self.device, non_blocking=True), y.to(self.device),
                                accuracy_only=STAGES[stage] == "accuracy")
                self._backward(out.total / c.accumulate)
            if stepping:
                self._step(optimizer)
            total += out.value
            for k, v in out.parts.items():
                parts_sum[k] = parts_sum.get(k, 0.0) + v
            images, batches = images + len(y), batches + 1
            if self.progress:
                self.progress({"stage": STAGES[stage], "epoch": epoch + 1, "step": step + 1, "steps": len(loader),
                               "loss": total / batches, "images_per_second": images / (time.perf_counter() - start)})
        # Every process's figures: their mean is the loss of the whole batches.
        names = sorted(parts_sum)
        total, *parts, images = all_sum([total, *(parts_sum[k] for k in names), images], self.world)
        mean = self.world.size * max(batches, 1)
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        return EpochRecord(STAGES[stage], epoch + 1, total / mean, {k: v / mean for k, v in zip(names, parts)},
                           int(images), time.perf_counter() - start, lrs["head"], lrs.get("backbone", 0.0),
                           self.validate())

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
        """Top-1 SKU classification accuracy on the validation set (never the test set); each
        process classifies its share of it."""
        if self.val is None or self.loss.classification is None or not len(self.val):
            return None
        self.embedder.eval()
        share = self.world.share(len(self.val))
        if self.features is not None:
            embeddings = self.embedder.embed_pooled(self.features["val"][share].to(self.device))
            labels = torch.from_numpy(self.val.labels[share])
        else:
            result = embed_files(TorchEncoder(self.embedder, self.device), self.val.paths[share],
                                 num_workers=self.config.workers)
            embeddings = torch.from_numpy(result.vectors).to(self.device)
            labels = torch.from_numpy(self.val.labels[share][result.positions])
        predicted = self.loss.logits(embeddings).argmax(dim=1).cpu() if len(labels) else labels
        correct, count = all_sum([float((predicted == labels).sum()), len(labels)], self.world)
        return correct / count if count else None

    def compare(self) -> tuple[Comparison | None, str | None]:
        """(the trained model against the untrained one it started from, None) on the ``--val``
        photos or the held-out ones, the training photos as the catalog; (None, why) where there
        are no photos to compare on."""
        queries: list[str] | list[Path]
        if self.val is not None:
            queries, labels, source = self.val.paths, self.val.labels, "val"
            if not len(queries):
                return None, (f"no photo of {self.config.val} is of a SKU of the training set, so the trained model "
                              "was not compared with the untrained one: pass --val photos of the trained SKUs")
        elif self.held_out is not None:
            index = {sku: i for i, sku in enumerate(self.data.classes)}
            kept = [(q, index[s]) for q, s in zip(self.held_out.queries, self.held_out.skus) if s in index]
            queries, labels, source = [q for q, _ in kept], np.array([k for _, k in kept], dtype=np.int64), "held-out"
        else:
            return None, (f"no SKU of {self.config.train} has {MIN_PHOTOS_TO_HOLD_OUT} or more photos to hold one out, "
                          "so the trained model was not compared with the untrained one: pass --val PHOTOS "
                          "(customer photos of the trained SKUs) to compare them")
        comparison = compare(self.embedder, self.config.model, self.data.paths, self.data.labels, queries, labels,
                             source, device=str(self.device), num_workers=self.config.workers)
        return comparison, None

    def save(self, path: Path, stage: int, epoch: int, optimizer: torch.optim.Optimizer | None,
             comparison: Comparison | None = None) -> Path:
        """Write a checkpoint (rank 0 only: the processes hold the same weights); return its path."""
        if not self.world.is_main:
            return path
        extra = {"classes": self.data.classes, "config": self.config.to_dict(),
                 "history": [asdict(r) for r in self.history], "stage": stage, "epoch": epoch}
        if comparison is not None:
            extra["comparison"] = comparison.to_dict()
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
    elif config.idle_lr_steps() and world_from_env().is_main:  # a resumed run keeps the schedule it started with
        log.warning("%s", config.idle_lr_steps())
    check_trainable(config)
    world = world_from_env()
    with process_group(world, backend_for(local_device(config.device, world))):
        return _train(config, payload, progress, world)


def _train(config: TrainConfig, payload: dict | None, progress: EpochDone | None, world: World) -> TrainResult:
    out = Path(config.out)
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    trainer = Trainer(config, progress, world, resumed=payload is not None)
    start_stage, start_epoch, optimizer_state = trainer.restore(payload) if payload else (0, 0, None)
    best_path = out / "best.pt" if payload and (out / "best.pt").is_file() else None
    for stage, epochs in enumerate(config.stage_epochs()):
        if stage < start_stage or not epochs:
            continue
        optimizer = trainer.optimizer(stage)
        if optimizer_state is not None and stage == start_stage:
            optimizer.load_state_dict(optimizer_state)
        loader = trainer.loader(stage)
        for epoch in range(start_epoch if stage == start_stage else 0, epochs):
            record = trainer.run_epoch(stage, epoch, optimizer, loader)
            trainer.history.append(record)
            if world.is_main:
                log.info("%s epoch %d/%d: loss %.4f %s, %.1f img/s%s", record.stage, record.epoch, epochs, record.loss,
                         record.parts, record.images_per_second,
                         f", val top-1 {record.val_top1:.4f}" if record.val_top1 is not None else "")
            trainer.save(out / "last.pt", stage, epoch, optimizer)
            if world.is_main:
                crash_point("train-epoch")
            if record.val_top1 is not None and (trainer.best_val is None or record.val_top1 > trainer.best_val):
                trainer.best_val = record.val_top1
                best_path = trainer.save(out / "best.pt", stage, epoch, None)
        trainer.save(out / f"model-{STAGES[stage]}.pt", stage, epochs - 1, None)  # each stage's result, for ablations
    final_stage = max((s for s, e in enumerate(config.stage_epochs()) if e), default=0)
    comparison, uncompared = trainer.compare() if world.is_main else (None, None)  # the others' work is done
    model_path = trainer.save(out / "model.pt", final_stage, config.stage_epochs()[final_stage] - 1, None,
                              comparison)
    if world.is_main:
        (out / "history.json").write_text(json.dumps([asdict(r) for r in trainer.history], indent=2) + "\n")
        (out / "comparison.json").write_text(json.dumps(comparison_dict(comparison, uncompared), indent=2) + "\n")
        if comparison is not None and not comparison.better:
            log.warning("%s", comparison.not_better("the trained model", TRAIN_ADVICE))
        elif uncompared:
            log.info("%s", uncompared)
    return TrainResult(out, model_path, trainer.data.classes, trainer.history, best_path, comparison, uncompared)
