"""The click group and what every command shares: error handling, logging, progress bars."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click

from prodsearch import __version__
from prodsearch.choices import DEVICE_CHOICES
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


class Progress:
    """Click progress bars on stderr, fed with ``(done, total)``; a count that restarts opens a new
    bar (one per phase). ``silent`` shows nothing."""

    def __init__(self, label: str, silent: bool = False):
        self.label, self.silent = label, silent
        self.bar = None
        self.done = 0

    def __call__(self, done: int, total: int) -> None:
        if self.silent:
            return
        if self.bar is not None and done < self.done:
            self.close()
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr, show_pos=True)
            self.bar.__enter__()
            self.done = 0
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


index_option = click.option("--index", "index_dir", required=True, type=click.Path(file_okay=False),
                            help="Index folder (written by 'prodsearch index').")
device_option = click.option("--device", type=click.Choice(DEVICE_CHOICES), default="auto", show_default=True,
                             help="Where the model runs; auto uses CUDA when present.")
batch_option = click.option("--batch-size", type=click.IntRange(min=1), default=None,
                            help="Images per model call [default: 8 on CPU, 128 on CUDA].")
workers_option = click.option("--workers", type=click.IntRange(min=0), default=None,
                              help="Image-decoding worker processes [default: up to 4, 0 for few files].")
silent_option = click.option("--silent", is_flag=True, help="Hide progress bars.")
query_model_option = click.option("--model", default=None,
                                  help="Embedder (name or checkpoint) to embed photos with [default: the index's].")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


def search_options(command):
    """--nprobe and --ef-search: how hard approximate indexes search (exact ones ignore them)."""
    command = click.option("--ef-search", type=click.IntRange(min=1), default=None,
                           help="HNSW indexes: candidates kept while searching [default: 128].")(command)
    return click.option("--nprobe", type=click.IntRange(min=1), default=None,
                        help="IVF indexes: inverted lists searched [default: 16].")(command)
wait_option = click.option("--wait", type=click.FloatRange(min=0), default=0.0, show_default=True,
                           help="Seconds to wait for another process writing to the index.")
