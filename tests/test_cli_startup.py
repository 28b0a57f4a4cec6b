"""``prodsearch --help`` answers at once: parsing the command line loads no deep-learning stack.

Each case runs in a fresh interpreter, since this test process has imported torch long ago.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "timm", "torchvision", "faiss", "matplotlib", "pytorch_metric_learning", "pymongo", "bson")
COMMANDS = ("index", "query", "eval", "train", "tune", "add", "update", "remove", "info", "import", "stats", "demo")

PROBE = """
import json, sys
from prodsearch.cli import cli
args = json.loads(sys.argv[1])
code = 0 if args is None else cli.main(args, prog_name="prodsearch", standalone_mode=False)
print()
print(json.dumps({"code": code, "heavy": sorted({m.split(".")[0] for m in sys.modules} & %r)}))
""" % (set(HEAVY),)


def probe(args: list[str] | None) -> tuple[str, dict]:
    """Run ``args`` through the CLI in a new interpreter: its output, exit code and heavy modules loaded."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    output, _, last = done.stdout.rstrip("\n").rpartition("\n")
    return output, json.loads(last)


def test_importing_the_cli_loads_nothing_heavy():
    _, result = probe(None)
    assert result["heavy"] == []


@pytest.mark.parametrize("args", [["--help"], ["--version"]] + [[command, "--help"] for command in COMMANDS],
                         ids=" ".join)
def test_help_and_version_load_nothing_heavy(args):
    output, result = probe(args)
    assert result["code"] == 0
    assert result["heavy"] == []
    assert ("version" in output) if args == ["--version"] else output.startswith("Usage: prodsearch")


def test_names_the_help_lists_are_the_libraries_own():
    """The CLI keeps light copies of a few names so that its help needs no heavy import; they must not drift."""
    from prodsearch import choices
    from prodsearch.cli.lifecycle import MASS_REMOVAL_SHARE
    from prodsearch.indexer import lifecycle
    from prodsearch.retrieval import device, embedder, losses, views

    assert MASS_REMOVAL_SHARE == lifecycle.MASS_REMOVAL_SHARE
    assert (embedder.MODELS, embedder.ALIASES, embedder.DEFAULT_MODEL) == (
        choices.MODELS, choices.ALIASES, choices.DEFAULT_MODEL)
    assert (device.DEVICE_CHOICES, device.PRECISION_CHOICES) == (choices.DEVICE_CHOICES, choices.PRECISION_CHOICES)
    assert (losses.CLASSIFICATION_LOSSES, losses.METRIC_LOSSES) == (
        choices.CLASSIFICATION_LOSSES, choices.METRIC_LOSSES)
    assert views.MAX_VIEWS == choices.MAX_VIEWS
