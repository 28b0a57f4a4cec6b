"""The settings of a training run, with their defaults and what each means.

Kept free of heavy imports (torch, timm) so that ``prodsearch train --help`` can show these defaults
without loading the training stack: this dataclass is where every default is defined, once, and
``prodsearch.retrieval.training`` re-exports it. Each field's ``metadata["help"]`` is the help text
of its command-line option.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from prodsearch.choices import DEFAULT_MODEL


def setting(default: Any, help: str) -> Any:
    """A field with its default and the one sentence that explains it (the option's help)."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of a training run; saved as ``config.json`` and inside each checkpoint."""

    train: str = field(metadata={"help": "Labelled training photos (catalog formats)."})
    out: str = field(metadata={"help": "Folder the run writes: checkpoints, model.pt, config.json, history.json."})
    val: str | None = setting(None, "Validation photos (catalog formats), for monitoring.")
    model: str = setting(DEFAULT_MODEL, "Backbone to start from (ImageNet weights).")
    embed_dim: int = setting(512, "Size of the embedding the head projects to.")
    img_size: int = setting(224, "Training crop and evaluation centre crop (paper: 448).")
    resize: int = setting(256, "Short side before cropping (paper: 512).")
    epochs: int = setting(10, "Epochs of the main stage, on the full training set.")
    lr_steps: tuple[int, ...] = setting((7,), "Epochs after which the learning rates are multiplied by the "
                                             "decay factor (0.1); below --epochs, or the rate never decays.")
    lr_gamma: float = setting(0.1, "Learning-rate decay factor at each of the lr_steps.")
    lr_head: float = setting(3e-4, "Learning rate of the new layers (embedding head and classifier).")
    lr_backbone: float = setting(3e-5, "Learning rate of the pretrained backbone.")
    weight_decay: float = setting(1e-4, "Adam weight decay.")
    batch_size: int = setting(32, "Images per training batch (a multiple of --m-per-class).")
    accumulate: int = setting(2, "Optimizer step every N batches (32 x 2 emulates the paper's batch 64).")
    m_per_class: int = setting(4, "Images per SKU in each batch, so the metric loss has positive pairs.")
    classification_loss: str = setting("arcface", "Classification (margin) loss on the SKU labels.")
    metric_loss: str = setting("multisimilarity", "Pair-based metric loss on each batch.")
    classification_weight: float = setting(1.0, "Weight of the classification loss in the total.")
    metric_weight: float = setting(1.0, "Weight of the metric loss in the total.")
    balanced_epochs: int = setting(0, "Balanced-subset finetune epochs (at most 5 images per SKU).")
    balanced_max_per_class: int = setting(5, "Images per SKU in the balanced subset.")
    accuracy_epochs: int = setting(0, "Accuracy-loss finetune epochs on the balanced subset (paper: 2-3).")
    finetune_lr_scale: float = setting(0.1, "Finetune stages run at the base learning rates times this.")
    frozen_stages: int = setting(0, "Do not train the stem and the first N backbone stages (cheaper on CPU).")
    freeze_backbone: bool = setting(False, "Cache backbone features once, train only the heads.")
    augment: str = setting("standard", "Training augmentation: standard (random crop, flip, colour jitter), "
                                       "customer (each photo rendered as a customer's phone photo: shelf, tilt, "
                                       "hand or price tag, blur, low resolution, JPEG) or degrade (standard, half "
                                       "the photos first made small and blurry, as far shelf photos and video "
                                       "crops are).")
    hflip: bool = setting(True, "Random horizontal flips (mirrored text never appears on a real package).")
    views: int = setting(1, "With --freeze-backbone: augmented views of each photo whose features are cached "
                            "beside the photo's own (1: the photo only); each draw picks one.")
    freeze_bn: bool = setting(True, "Keep the backbone's BatchNorm statistics (small batches); off, they are "
                                    "learnt, over every GPU of a torchrun run (SyncBatchNorm).")
    amp: str = setting("auto", "CUDA mixed precision: auto (bf16 where supported, else fp16) or off.")
    seed: int = setting(0, "Seed of sampling, augmentation and initialisation.")
    device: str = setting("auto", "Where the model trains; auto uses CUDA when present.")
    workers: int | None = setting(None, "Image-decoding worker processes [default: up to 4, 0 for few files].")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_steps"] = list(self.lr_steps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        kwargs["lr_steps"] = tuple(kwargs.get("lr_steps", ()))
        return cls(**kwargs)

    def stage_epochs(self) -> list[int]:
        return [self.epochs, self.balanced_epochs, self.accuracy_epochs]

    def idle_lr_steps(self) -> str | None:
        """Why the learning rate never decays although ``lr_steps`` asks it to (every step at or
        after the main stage's last epoch); None when it does decay, or no step was asked for."""
        if not self.lr_steps or min(self.lr_steps) < self.epochs:
            return None
        example = f" (e.g. --lr-steps {self.epochs * 7 // 10})" if self.epochs * 7 // 10 else ""
        return (f"--lr-steps {','.join(map(str, self.lr_steps))} come at or after the last of the {self.epochs} epochs "
                f"(--epochs {self.epochs}): the learning rate would never decay; give steps below {self.epochs}"
                f"{example}, or --lr-steps '' for a constant rate")


__all__ = ["TrainConfig"]
