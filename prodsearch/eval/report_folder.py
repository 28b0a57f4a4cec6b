"""The folder of ``eval --report``: written only when it is new, empty, or an earlier report.

The rule is the one ``index`` keeps for index folders (:func:`prodsearch.indexer.manifest.check_target`):
a report rewrites ``index.html`` and deletes the images an earlier report left in ``img/``, so a
folder that holds anything else (a shop's photos, someone's own ``index.html``) is refused before
the evaluation, not cleaned after it. A report of ours is proved by its names (every entry one the
report writes) and by its page (it carries :data:`GENERATOR`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prodsearch.catalog.files import folder_names, foreign_names, listed
from prodsearch.errors import ProdsearchError
from prodsearch.indexer.catalog_db import can_write

PAGE = "index.html"
IMAGES = "img"  # the folder beside index.html
GENERATOR = '<meta name="generator" content="prodsearch eval --report">'
OLD_PAGE_MARK = '<section id="headline"><h2>Headline</h2>'  # every report before GENERATOR had it
TEMPORARY = r"\..+\.tmp-.*"  # what write_atomically leaves when it is killed
REPORT_ENTRY = re.compile(rf"^({re.escape(PAGE)}|{IMAGES}|{TEMPORARY})$")
IMAGE_FILE = re.compile(rf"^([cqu]-\d+\.jpg|unreadable\.jpg|categories\.png|scores\.png|dir_far\.png|{TEMPORARY})$")
MAX_PAGE_BYTES = 64 << 20  # a page of ours stays far below; a larger index.html is not one


class ReportDirError(ProdsearchError):
    """The folder given to ``--report`` cannot hold a report: not a folder, not writable, or not ours."""


def check_report_dir(out: str | os.PathLike) -> None:
    """Refuse, before the (slow) evaluation, a folder the report could not be written into or must
    not overwrite."""
    out = Path(out)
    give = "give a new folder for --report"
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise ReportDirError(f"{out} exists and is not a folder; {give}")
        names = _names(out)
        if names and not is_earlier_report(out, names):
            raise ReportDirError(f"{out} is not empty and not an earlier prodsearch report (it holds {listed(names)}); "
                                 f"{give}")
        where = out
    else:
        where = out.parent
        while not where.exists() and where != where.parent:
            where = where.parent
        if not where.is_dir():
            raise ReportDirError(f"cannot create the report folder {out}: {where} is not a folder; {give}")
    if not can_write(where, os.W_OK | os.X_OK):
        raise ReportDirError(f"cannot write the report into {out}: {where} is not writable; give a folder you can "
                             "write for --report")


def is_earlier_report(out: Path, names: list[str]) -> bool:
    """Whether ``out`` holds nothing but what a report writes, its page one of ours."""
    if foreign_names(names, REPORT_ENTRY):
        return False
    images = out / IMAGES
    if IMAGES in names and (not images.is_dir() or images.is_symlink() or foreign_names(_names(images), IMAGE_FILE)):
        return False
    return PAGE not in names or _is_our_page(out / PAGE)


def _is_our_page(path: Path) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_PAGE_BYTES:
            return False
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return GENERATOR in text or OLD_PAGE_MARK in text


def report_error(out: Path, exc: OSError) -> ReportDirError:
    """An OSError while writing the report (a full disk, a folder changed meanwhile), in one line."""
    where = exc.filename or out
    return ReportDirError(f"cannot write the report into {out}: {where}: {exc.strerror or exc}; give a folder you can "
                          "write for --report")


def _names(folder: Path) -> list[str]:
    return folder_names(folder, lambda why: ReportDirError(f"{why}; give a new folder for --report"))
