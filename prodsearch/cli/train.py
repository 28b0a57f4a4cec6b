"""``prodsearch train``."""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from prodsearch.choices import AUGMENTATIONS, CLASSIFICATION_LOSSES, DEVICE_CHOICES, METRIC_LOSSES
from prodsearch.cli.app import cli, echo_json, json_option, quiet_option, shows_progress, speaks_for_run
from prodsearch.cli.reports import train_result_dict
from prodsearch.retrieval.recipes import (RECIPE_CHOICES, RECIPES, CatalogOnlyError, Recipe, catalog_only_advice,
                                          choose_recipe, photos_per_sku)
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
@setting_option("--freeze-bn/--no-freeze-bn")
@setting_option("--seed", type=int)
@click.option("--recipe", type=click.Choice(RECIPE_CHOICES), default="auto", show_default=True,
              help="Defaults for the situation: " + "; ".join(f"{r.name}: {r.situation}" for r in RECIPES.values())
              + "; auto picks one from the photos per SKU and the device; none: the plain defaults below. "
              "Options given here override the recipe.")
@click.option("--resume", type=click.Path(dir_okay=False), default=None,
              help="Continue the run saved in this last.pt (its own settings are used).")
@setting_option("--device", type=click.Choice(DEVICE_CHOICES))
@setting_option("--workers", type=click.IntRange(min=0))
@quiet_option
@json_option
def train(train_set, recipe, resume, quiet, as_json, **settings):
    """Train the embedder on labelled photos in TRAIN (catalog formats: folder per SKU or CSV).

    ArcFace (or another classification loss) plus a pair-based metric loss, Adam with weight decay,
    and the Products-10K tricks as switches: --img-size 448 --resize 512, --balanced-epochs,
    --accuracy-epochs. Writes OUT/model.pt, which index, query and eval take as --model. --recipe
    (default auto) sets the defaults for what TRAIN holds: one catalog photo per SKU is not trained
    on, since that makes shelf photos worse; the command says what to index instead. After training
    the model is compared with the untrained one on --val photos (else on photos held out of TRAIN,
    degraded as customer photos): both numbers are shown, with a warning when training did not help.

    \b
    Example (the recipe for what it is given):
        prodsearch train shop/train.csv --val shop/val.csv --out runs/shop
    Example (CPU, minutes: heads only):
        prodsearch train shop/train.csv --val shop/val.csv --out runs/heads --recipe none --freeze-backbone
    Example (8 GPUs; --batch-size is the global batch, shared by the processes):
        torchrun --standalone --nproc-per-node 8 -m prodsearch train shop/train.csv --out runs/shop --batch-size 256
    """
    from prodsearch.retrieval.training import TrainingError
    from prodsearch.retrieval.training import train as run_training

    main = speaks_for_run()
    chosen = None if resume else pick_recipe(recipe, train_set, settings["device"])
    given = click.get_current_context().get_parameter_source
    if chosen is not None:
        settings |= {k: v for k, v in chosen.settings.items() if given(k) == ParameterSource.DEFAULT}
        if main and not quiet and not as_json:
            click.echo(f"Recipe {chosen.name}: {chosen.situation}", err=True)
    config = TrainConfig(train=train_set, **settings)
    if not resume and given("lr_steps") != ParameterSource.DEFAULT and config.idle_lr_steps():
        raise TrainingError(config.idle_lr_steps())  # asked for explicitly: refused, not trained without
    start = time.perf_counter()
    progress = TrainProgress(quiet or not main)
    try:
        result = run_training(config, resume=resume, progress=progress)
    finally:
        progress.close()
    if not main:
        return
    if as_json:
        echo_json(train_result_dict(result, time.perf_counter() - start) | {"recipe": chosen and chosen.name})
    else:
        click.echo(format_train_result(result))


def pick_recipe(name: str, train_set: str, device: str) -> Recipe | None:
    """The recipe asked for, or for ``auto`` the one for this training set and device; a catalog
    alone is refused with the command that serves it better (:class:`CatalogOnlyError`)."""
    if name != "auto":
        return choose_recipe(name, 0.0, False)
    from prodsearch.catalog.listing import read_listing
    from prodsearch.retrieval.device import resolve_device

    median = photos_per_sku(item.sku for item in read_listing(train_set).items)
    chosen = choose_recipe(name, median, resolve_device(device).type == "cuda")
    if chosen is not None and not chosen.trains:
        raise CatalogOnlyError(catalog_only_advice(train_set, median))
    return chosen


def format_train_result(result: TrainResult) -> str:
    lines = [f"Trained on {len(result.classes)} SKUs; model written to {result.model_path}"]
    for r in result.history:
        val = f"  val top-1 {r.val_top1:.4f}" if r.val_top1 is not None else ""
        lines.append(f"  {r.stage:<8} epoch {r.epoch:>3}  loss {r.loss:.4f}  {r.images_per_second:7.1f} img/s{val}")
    if result.best_path:
        lines.append(f"Best validation epoch saved as {result.best_path}")
    if result.comparison is not None:
        lines.append(result.comparison.summary())
    elif result.uncompared:
        lines.append(f"Not compared with the untrained model: {result.uncompared}")
    if result.comparison is not None and not result.comparison.better:
        lines.append(f"Training did not help: index untrained, prodsearch index CATALOG --index DIR (this model "
                     f"anyway: --model {result.model_path})")
    else:
        lines.append(f"Use it: prodsearch index CATALOG --index DIR --model {result.model_path}")
    return "\n".join(lines)
