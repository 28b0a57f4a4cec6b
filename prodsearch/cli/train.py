"""``prodsearch train``."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from prodsearch.choices import AUGMENTATIONS, CLASSIFICATION_LOSSES, DEVICE_CHOICES, METRIC_LOSSES
from prodsearch.cli.app import cli, echo_json, json_option, quiet_option, shows_progress
from prodsearch.cli.reports import train_result_dict
from prodsearch.train_config import TrainConfig

if TYPE_CHECKING:
    from prodsearch.retrieval.training import TrainResult


class TrainProgress:
    """One progress bar per epoch, showing the running loss and images/s."""

    def __init__(self, quiet: bool):
        self.hidden, self.bar, self.key, self.text = not shows_progress(quiet), None, None, ""

    def __call__(self, event: dict) -> None:
        if self.hidden:
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


SETTINGS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def setting_option(*decls: str, **kwargs: Any):
    """The option for the :class:`TrainConfig` field of the same name, with that field's default and
    help: the defaults are defined once, in the config a run saves, not restated here."""
    spec = SETTINGS[decls[0].split("/")[0].lstrip("-").replace("-", "_")]  # "--hflip/--no-hflip": hflip
    if spec.default is not dataclasses.MISSING:
        default = spec.default
        kwargs["default"] = ",".join(map(str, default)) if isinstance(default, tuple) else default
        kwargs.setdefault("show_default", default is not None and not kwargs.get("is_flag"))
    return click.option(*decls, help=spec.metadata["help"], **kwargs)


@cli.command()
@click.argument("train_set", metavar="TRAIN", type=click.Path())
@setting_option("--out", required=True, type=click.Path(file_okay=False))
@setting_option("--val", type=click.Path())
@setting_option("--model")
@setting_option("--embed-dim", type=click.IntRange(min=8))
@setting_option("--img-size", type=click.IntRange(min=32))
@setting_option("--resize", type=click.IntRange(min=32))
@setting_option("--epochs", type=click.IntRange(min=1))
@setting_option("--lr-steps", callback=lambda c, p, v: _steps(v))
@setting_option("--lr-head", type=float)
@setting_option("--lr-backbone", type=float)
@setting_option("--weight-decay", type=float)
@setting_option("--batch-size", type=click.IntRange(min=2))
@setting_option("--accumulate", type=click.IntRange(min=1))
@setting_option("--m-per-class", type=click.IntRange(min=1))
@setting_option("--classification-loss", type=click.Choice(CLASSIFICATION_LOSSES))
@setting_option("--metric-loss", type=click.Choice(METRIC_LOSSES))
@setting_option("--classification-weight", type=float)
@setting_option("--metric-weight", type=float)
@setting_option("--balanced-epochs", type=click.IntRange(min=0))
@setting_option("--accuracy-epochs", type=click.IntRange(min=0))
@setting_option("--frozen-stages", type=click.IntRange(min=0, max=7))
@setting_option("--freeze-backbone", is_flag=True)
@setting_option("--augment", type=click.Choice(AUGMENTATIONS))
@setting_option("--hflip/--no-hflip")
@setting_option("--views", type=click.IntRange(min=1))
@setting_option("--seed", type=int)
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue the run saved in this last.pt (its own settings are used).")
@setting_option("--device", type=click.Choice(DEVICE_CHOICES))
@setting_option("--workers", type=click.IntRange(min=0))
@quiet_option
@json_option
def train(train_set, resume, quiet, as_json, **settings):
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
    from prodsearch.retrieval.training import train as run_training

    config = TrainConfig(train=train_set, **settings)
    start = time.perf_counter()
    progress = TrainProgress(quiet)
    try:
        result = run_training(config, resume=resume, progress=progress)
    finally:
        progress.close()
    if as_json:
        echo_json(train_result_dict(result, time.perf_counter() - start))
    else:
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
