"""The click group and what every command shares: error handling, logging, progress bars."""

from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import click

from prodsearch import __version__
from prodsearch.choices import DEVICE_CHOICES, PRECISION_CHOICES, RUNTIME_CHOICES
from prodsearch.errors import ProdsearchError


class DomainErrorGroup(click.Group):
    """Turns every :class:`ProdsearchError` into ``Error: ...`` and exit code 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ProdsearchError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=DomainErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="prodsearch")
@click.option("-v", "--verbose", is_flag=True, help="Log what prodsearch is doing (to stderr).")
def cli(verbose: bool) -> None:
    """Visual product search: index catalog photos, then ask which SKU a photo shows.

    \b
    Example:
        prodsearch index catalog/ --index idx/
        prodsearch query photo.jpg --index idx/
        prodsearch eval queries/ --index idx/
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)
    warnings.showwarning = log_warning


def log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Libraries' warnings (Pillow's "Corrupt EXIF data", DataLoader's) as one log line each,
    naming the library, instead of raw text with a source line on stderr."""
    module = Path(filename).parent.name if Path(filename).stem == "__init__" else Path(filename).stem
    logging.getLogger(f"warnings.{module}").warning("%s: %s", category.__name__, message)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def speaks_for_run() -> bool:
    """Whether this process reports: always, but under torchrun only rank 0 (the others help it)."""
    from prodsearch.retrieval.distributed import world_from_env  # the environment only: no torch

    return world_from_env().is_main


def shows_progress(quiet: bool) -> bool:
    """Progress bars are drawn for a person at a terminal. Piped or logged, stderr keeps to warnings
    and errors (click would write each bar's label alone on a line, which tells nothing), so that a
    run that succeeds writes nothing there and one that fails writes one line."""
    return not quiet and stderr_is_terminal()


class Progress:
    """Click progress bars on stderr, fed with ``(done, total)``; a count that restarts opens a new
    bar (one per phase), a ``total`` of None a bar that counts without an end (a stream of rows).
    Nothing is shown with ``quiet`` or off a terminal. Redrawn at most every ``REDRAW_SECONDS``: a
    bar fed once per row of a 12-million-row import must not cost more than the import."""

    REDRAW_SECONDS = 0.1

    def __init__(self, label: str, quiet: bool = False):
        self.label, self.hidden = label, not shows_progress(quiet)
        self.bar = None
        self.done = 0  # what the bar shows
        self.latest = 0  # what was reported last (drawn by the next redraw or by close)
        self.drawn_at = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        if self.hidden:
            return
        if self.bar is not None and done < self.latest:
            self.close()
        if self.bar is None:
            self.open(total)
        self.latest = done
        now = time.monotonic()
        if done == total or now - self.drawn_at >= self.REDRAW_SECONDS:
            self.draw()
            self.drawn_at = now

    def open(self, total: int | None) -> None:
        if total is None:  # an iterable without a length: click counts rows, with no bar to fill
            self.bar = click.progressbar((_ for _ in ()), label=self.label, file=sys.stderr, show_pos=True,
                                         bar_template="%(label)s  %(info)s")
        else:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
        self.bar.__enter__()
        self.done = self.latest = 0

    def draw(self) -> None:
        if self.latest > self.done:
            self.bar.update(self.latest - self.done)
            self.done = self.latest

    def close(self) -> None:
        if self.bar is not None:
            self.draw()
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AliasOption(click.Option):
    """An option with old spellings that still work but are left out of ``--help``
    (``--silent`` for ``--quiet``, ``demo --dir`` for ``--out``): one flag, one documented name."""

    def __init__(self, *args, hidden_aliases: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_aliases = hidden_aliases

    def get_help_record(self, ctx: click.Context):
        shown = copy.copy(self)
        shown.opts = [name for name in self.opts if name not in self.hidden_aliases]
        return click.Option.get_help_record(shown, ctx)


def echo_json(data: Any, indent: int | None = 2) -> None:
    """The one JSON document a ``--json`` command prints on stdout (progress bars are on stderr).
    A number that is not finite (an undefined rate) is ``null``: ``NaN`` and ``Infinity`` are not JSON."""
    click.echo(json.dumps(finite(data), indent=indent, allow_nan=False))


def finite(data: Any) -> Any:
    """``data`` with every float that is not finite replaced by None."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [finite(v) for v in data]
    return data


index_option = click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
                            help="Index folder (written by 'prodsearch index').")
device_option = click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
                             help="Where the model runs; auto uses CUDA when present.")


def runtime_options(command):
    """--runtime, --device, --precision: where and how the model runs (not part of an index's identity)."""
    command = click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="auto", show_default=True,
                           help="Number format: auto picks the fastest that keeps accuracy; bf16 needs torch "
                                "(and AVX512-BF16/AMX or a GPU); int8 needs ONNX.")(command)
    command = device_option(command)
    return click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True,
                        help="Model runtime: auto is ONNX Runtime on the CPU (no torch import, 2x faster) and "
                             "torch on a GPU.")(command)


batch_option = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                            help="Images per model call [default: 8 on CPU, 128 on CUDA].")
workers_option = click.option("--workers", type=click.IntRange(min=0), default=None,
                              help="Image-decoding threads [default: 2, more on many-core machines; 0: none].")
quiet_option = click.option("-q", "--quiet", "--silent", "quiet", is_flag=True, cls=AliasOption,
                            hidden_aliases=("--silent",), help="Hide progress bars (drawn on stderr at a terminal).")
query_model_option = click.option("--model", default=None,
                                  help="Embedder (name, checkpoint or exported .onnx) to embed photos with "
                                       "[default: the index's].")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON document on stdout instead of text (keys: README).")


def search_options(command):
    """--nprobe and --ef-search: how hard approximate indexes search (exact ones ignore them)."""
    command = click.option("--ef-search", type=click.IntRange(min=1), default=None,
                           help="HNSW indexes: candidates kept while searching [default: 128].")(command)
    return click.option("--nprobe", type=click.IntRange(min=1), default=None,
                        help="IVF indexes: inverted lists searched [default: 16].")(command)
wait_option = click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
                           help="Seconds to wait for another process writing to the index.")


def rejection_options(command):
    """--threshold and --no-reject: how answers use the index's "not in catalog" rule."""
    command = click.option("--no-reject", is_flag=True,
                           help="Always name the nearest SKU: ignore the index's \"not in catalog\" rule.")(command)
    return click.option("--threshold", type=float, default=None,
                        help="Answer \"not in catalog\" below this value of the index's rule instead of the "
                             "calibrated threshold (an uncalibrated index: of the top-1 similarity).")(command)


def rejection_choice(threshold: float | None, no_reject: bool) -> float | str | None:
    """What answers take for ``rejection`` (:func:`prodsearch.indexer.rejection.chosen`); called
    inside a command, so ``--help`` does not load it."""
    if no_reject and threshold is not None:
        raise click.UsageError("--threshold and --no-reject contradict each other; give one")
    from prodsearch.indexer.rejection import chosen

    return chosen(threshold, reject=not no_reject)
