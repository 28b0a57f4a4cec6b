"""The ``prodsearch`` command line: a thin click layer over the Python API."""

import sys
import time

import click

from prodsearch.cli import calibrate, commands, demo, export, importer, lifecycle, serve, stats, train, tune  # noqa: F401  (registers the commands)
from prodsearch.cli.app import cli, speaks_for_run

HELPER_EXIT_DELAY_SECONDS = 1.0


def main() -> None:
    """The command. Under torchrun only rank 0 reports: the other processes end with the same exit
    code and say nothing of a usage or domain error (rank 0 says it once), except the one that
    tells that the process which would have said it stopped."""
    if speaks_for_run():
        cli(prog_name="prodsearch")
        return
    from prodsearch.retrieval.run_end import RunEndedError  # no torch

    try:
        code = cli.main(prog_name="prodsearch", standalone_mode=False)  # --help and Exit: their code
    except click.ClickException as exc:
        if isinstance(exc.__cause__, RunEndedError) and exc.__cause__.reports:
            exc.show()
        else:  # rank 0 fails alike: let it say so before torchrun, seeing this exit, stops it
            time.sleep(HELPER_EXIT_DELAY_SECONDS)
        sys.exit(exc.exit_code)
    except click.Abort:
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["cli", "main"]
