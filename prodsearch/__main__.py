"""``python -m prodsearch`` is the ``prodsearch`` command."""

from prodsearch.cli import main

main()
