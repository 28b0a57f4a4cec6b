"""``prodsearch train``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from prodsearch.choices import CLASSIFICATION_LOSSES, DEFAULT_MODEL, METRIC_LOSSES
from prodsearch.cli.app import cli, device_option, silent_option, workers_option

if TYPE_CHECKING:
    from prodsearch.retrieval.training import TrainResult


class TrainProgress:
    """One progress bar per epoch, showing the running loss and images/s."""

    def __init__(self, silent: bool):
        self.silent, self.bar, self.key, self.text = silent, None, None, ""

    def __call__(self, event: dict) -> None:
        if self.silent:
            return
        key = (event["stage"], event["epoch"])
        if key != self.key:
            self.close()
            self.key = key
            self.bar = click.progressbar(length=event["steps"], label=f"{event['stage']} epoch {event['epoch']}",
                                         file=sys.stderr, item_show_func=lambda _: self.text)
            self.bar.__enter__()
        self.text = f"loss {event['loss']:.4f}  {event['images_per_second']:.1f} img/s"
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _steps(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected epochs separated by commas, like 20,40,60; got {value!r}") from None


@cli.command()
@click.argument("train_set", metavar="TRAIN", type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for checkpoints and config.")
@click.option("--val", type=click.Path(), default=None, help="Validation photos (catalog formats), for monitoring.")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="Backbone to start from (ImageNet weights).")
@click.option("--embed-dim", type=click.IntRange(min=8), default=512, show_default=True)
@click.option("--img-size", type=click.IntRange(min=32), default=224, show_default=True,
              help="Training crop and evaluation centre crop (paper: 448).")
@click.option("--resize", type=click.IntRange(min=32), default=256, show_default=True,
              help="Short side before cropping (paper: 512).")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--lr-steps", default="20,40,60", show_default=True, callback=lambda c, p, v: _steps(v),
              help="Epochs after which the learning rates are multiplied by 0.1.")
@click.option("--lr-head", type=float, default=3e-4, show_default=True, help="Learning rate of the new layers.")
@click.option("--lr-backbone", type=float, default=3e-5, show_default=True, help="Learning rate of the backbone.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=32, show_default=True)
@click.option("--accumulate", type=click.IntRange(min=1), default=2, show_default=True,
              help="Optimizer step every N batches (32 x 2 emulates batch 64).")
@click.option("--m-per-class", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per SKU in each batch.")
@click.option("--classification-loss", type=click.Choice(CLASSIFICATION_LOSSES), default="arcface", show_default=True)
@click.option("--metric-loss", type=click.Choice(METRIC_LOSSES), default="multisimilarity", show_default=True)
@click.option("--classification-weight", type=float, default=1.0, show_default=True)
@click.option("--metric-weight", type=float, default=1.0, show_default=True)
@click.option("--balanced-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Balanced-subset finetune epochs (at most 5 images per SKU).")
@click.option("--accuracy-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Accuracy-loss finetune epochs on the balanced subset (paper: 2-3).")
@click.option("--frozen-stages", type=click.IntRange(min=0, max=7), default=0, show_default=True,
              help="Do not train the stem and the first N backbone stages (faster on CPU).")
@click.option("--freeze-backbone", is_flag=True, help="Cache backbone features once, train only the heads.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue the run saved in this last.pt (its own settings are used).")
@device_option
@workers_option
@silent_option
def train(train_set, out, val, model, embed_dim, img_size, resize, epochs, lr_steps, lr_head, lr_backbone,
          weight_decay, batch_size, accumulate, m_per_class, classification_loss, metric_loss,
          classification_weight, metric_weight, balanced_epochs, accuracy_epochs, frozen_stages,
          freeze_backbone, seed, resume, device, workers, silent):
    """Train the embedder on labelled photos in TRAIN (catalog formats: folder per SKU or CSV).

    ArcFace (or another classification loss) plus a pair-based metric loss, Adam with weight decay,
    and the Products-10K tricks as switches: --img-size 448 --resize 512, --balanced-epochs,
    --accuracy-epochs. Writes OUT/model.pt, which index, query and eval take as --model.

    \b
    Example (CPU, minutes):
        prodsearch train shop/train.csv --val shop/val.csv --out runs/heads --freeze-backbone --epochs 30
    Example (GPU, the paper's recipe):
        prodsearch train shop/train.csv --out runs/p10k --img-size 448 --resize 512 --epochs 70 \\
            --balanced-epochs 5 --accuracy-epochs 3
    """
    from prodsearch.retrieval.training import TrainConfig, train as run_training

    config = TrainConfig(
        train=train_set, out=out, val=val, model=model, embed_dim=embed_dim, img_size=img_size, resize=resize,
        epochs=epochs, lr_steps=lr_steps, lr_head=lr_head, lr_backbone=lr_backbone, weight_decay=weight_decay,
        batch_size=batch_size, accumulate=accumulate, m_per_class=m_per_class,
        classification_loss=classification_loss, metric_loss=metric_loss,
        classification_weight=classification_weight, metric_weight=metric_weight,
        balanced_epochs=balanced_epochs, accuracy_epochs=accuracy_epochs, frozen_stages=frozen_stages,
        freeze_backbone=freeze_backbone, seed=seed, device=device, workers=workers,
    )
    progress = TrainProgress(silent)
    try:
        result = run_training(config, resume=resume, progress=progress)
    finally:
        progress.close()
    click.echo(format_train_result(result))


def format_train_result(result: TrainResult) -> str:
    lines = [f"Trained on {len(result.classes)} SKUs; model written to {result.model_path}"]
    for r in result.history:
        val = f"  val top-1 {r.val_top1:.4f}" if r.val_top1 is not None else ""
        lines.append(f"  {r.stage:<8} epoch {r.epoch:>3}  loss {r.loss:.4f}  {r.images_per_second:7.1f} img/s{val}")
    if result.best_path:
        lines.append(f"Best validation epoch saved as {result.best_path}")
    lines.append(f"Use it: prodsearch index CATALOG --index DIR --model {result.model_path}")
    return "\n".join(lines)
