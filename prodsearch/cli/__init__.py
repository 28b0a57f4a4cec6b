"""The ``prodsearch`` command line: a thin click layer over the Python API."""

from prodsearch.cli import calibrate, commands, demo, export, importer, lifecycle, serve, stats, train  # noqa: F401  (registers the commands)
from prodsearch.cli.app import cli


def main() -> None:
    cli(prog_name="prodsearch")


__all__ = ["cli", "main"]
