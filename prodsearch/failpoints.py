"""Failure injection for the crash tests: with ``PRODSEARCH_CRASH_AT=<name>`` in the environment the
process kills itself (SIGKILL, like ``kill -9``) when it reaches that point of a write."""

from __future__ import annotations

import os
import signal

CRASH_ENV = "PRODSEARCH_CRASH_AT"
POINTS = ("before-commit", "inside-commit", "after-commit", "snapshot-written", "after-snapshot")  # of a write
BUILD_POINTS = ("build-staged",)  # of an index built into a new folder
TEAM_POINTS = ("embedded-chunk-N",  # rank 0 of a torchrun index/add/update, once every share of chunk N is written
               "rank-R-chunk-N")  # rank R > 0 of one, when it is handed chunk N (before embedding its share)
TRAIN_POINTS = ("train-epoch",)  # after a training epoch is saved in last.pt (by rank 0 of a distributed run)


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
