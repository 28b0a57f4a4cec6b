"""Reading a catalog (or a labelled query set): a folder per SKU, or a CSV manifest.

Both formats yield the same :class:`Listing`; files that cannot be used are listed with a reason
instead of stopping the run. A CSV manifest must be UTF-8 text (with or without a BOM) or UTF-16
with a BOM; anything else is refused with the line where it goes wrong, since guessing an encoding
would silently turn accented SKUs and file names into other ones.
"""

from __future__ import annotations

import codecs
import csv
import errno
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, TextIO

from prodsearch.errors import CatalogError
from prodsearch.catalog.files import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

FORMAT_HELP = ("expected a folder with one sub-folder per SKU (catalog/<sku>/*.jpg) or a CSV file with header "
               "image,sku[,name,category,product]")
ENCODING_HELP = "save it as UTF-8 (or UTF-16 with BOM)"
NOT_IN_SKU_FOLDER = "not inside a SKU folder (catalog/<sku>/image.jpg)"


@dataclass(frozen=True, slots=True)  # slots: a catalog of a million photos holds a million of them
class Item:
    """One labelled image; ``name`` and ``category`` are optional product metadata, ``product``
    groups the photos of one physical product (a query set's several shots of it). ``origin`` is
    where the listing found it (the unresolved path in a folder, ``<csv>:<line>`` in a manifest), so
    reports can name what the user wrote rather than the resolved file; it is not part of an item's
    identity (the same photo listed by two manifests is the same item)."""

    path: Path
    sku: str
    name: str | None = None
    category: str | None = None
    product: str | None = None
    origin: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"path": str(self.path), "reason": self.reason}


@dataclass
class Listing:
    source: Path
    kind: str  # "folder" or "csv"
    items: list[Item] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def skus(self) -> list[str]:
        return sorted({it.sku for it in self.items})


class SkuSpellings:
    """One rule for SKU case in every format: the first spelling of a SKU wins and a spelling that
    differs from it only in case is refused, because to a person 'Milk' and 'milk' are one product
    while the index would keep two. ``known`` seeds the spellings already taken (an index's SKUs)."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._first: dict[str, str] = {}
        for sku in known:
            self._first.setdefault(sku.casefold(), sku)

    def clash(self, sku: str) -> str | None:
        """The spelling taken that ``sku`` differs from only in case, or None (``sku`` is then taken)."""
        first = self._first.setdefault(sku.casefold(), sku)
        return None if first == sku else first

    def problem(self, sku: str) -> str | None:
        """Why ``sku`` cannot be used as spelled, or None."""
        other = self.clash(sku)
        return None if other is None else f"SKU {sku!r} differs from {other!r} only in case; use one spelling"


def read_listing(source: str | os.PathLike) -> Listing:
    """Read a catalog or query set in either supported format; raise :class:`CatalogError` if unusable."""
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # ~someone/... of an unknown user
        raise CatalogError(f"{_one_line(source)}: cannot find that home folder; write the path in full") from None
    try:
        listing = _read_any(source, path)
    except OSError as exc:  # the catalog itself (not one of its files) could not be read
        where = exc.filename if isinstance(exc.filename, str) else source
        raise CatalogError(f"cannot read {_one_line(where)}: {exc.strerror or exc}; check that it exists and that "
                           "you may read it") from None
    if not listing.items:
        first = listing.skipped[0] if listing.skipped else None
        detail = (f" ({len(listing.skipped)} files skipped, e.g. {_one_line(first.path)}: {first.reason})"
                  if first else "")
        raise CatalogError(f"no images found in {_one_line(source)}{detail}; {FORMAT_HELP}")
    return listing


def _read_any(source: str | os.PathLike, path: Path) -> Listing:
    if not path.exists():
        raise CatalogError(f"{_one_line(source)} does not exist; {FORMAT_HELP}")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    raise CatalogError(f"{_one_line(source)} is neither a folder nor a .csv file; {FORMAT_HELP}")


def _one_line(text: object, limit: int = 200) -> str:
    """``text`` fit for a one-line message: line breaks shown escaped, long text cut."""
    s = str(text).replace("\r", "\\r").replace("\n", "\\n")
    return s if len(s) <= limit else s[:limit] + "..."


def _resolve(path: Path) -> tuple[Path | None, str | None]:
    """Where ``path`` leads, or why nowhere; never raises, since one odd path (a loop, a dangling
    link, a name the system refuses) must not stop a run."""
    try:
        return path.resolve(strict=True), None
    except RuntimeError:  # Python < 3.13 reports a symlink loop this way
        return None, "symlink loop"
    except FileNotFoundError:
        return None, "broken symlink (target missing)" if os.path.islink(path) else "file not found"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symlink loop"
        return None, f"cannot read path: {exc.strerror or exc}"
    except ValueError as exc:  # a NUL byte, a name the file system cannot encode
        return None, f"invalid path: {exc}"


def _resolve_file(path: Path) -> tuple[Path | None, str | None]:
    """The regular file ``path`` leads to, or why there is none."""
    resolved, reason = _resolve(path)
    if resolved is not None and not resolved.is_file():
        return None, "not a regular file"
    return resolved, reason


def entry_path(path: Path) -> Path:
    """``path`` (a CSV row's file) as an index names it: absolute, the symlinks and ``..`` of its folder
    resolved as the system resolves them, its own name kept (a link stays the link: the catalog's
    entry, whatever it leads to now), so that ``update`` can tell a file that is gone from one that
    cannot be read now. A folder catalog names its files by their place below the real catalog folder."""
    return Path(os.path.realpath(path.parent)) / path.name


def kept_reason(path: str, listing: Listing, listed: set[str], skipped: dict[str, str]) -> str | None:
    """Why a file an index holds, which ``listing`` no longer yields as it was, keeps its image, or
    None if the image goes. Only a file with no directory entry left is gone (or one the catalog no
    longer names: a CSV row deleted, a file listed again with new content or another SKU): one that
    cannot be used now (corrupt, a dangling link, a folder in its place, below a folder that cannot be
    read) keeps its place, since a half-copied or half-mounted catalog must not empty an index.
    ``listed``: the listing's item paths; ``skipped``: why files were left out, by path."""
    entry = Path(path)
    for folder in entry.parents:  # what a folder that could not be read or followed holds is unknown
        if str(folder) in skipped:
            return skipped[str(folder)]
    try:
        os.lstat(entry)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return None
    except OSError as exc:  # no permission to look: not known to be gone
        return skipped.get(path) or f"cannot read path: {exc.strerror or exc}"
    if path in skipped:
        return skipped[path]
    if path in listed:
        return None
    if listing.kind == "folder" and entry.is_relative_to(listing.source):
        return "not a regular file"  # a folder in its place, say: walked into, not listed
    return None


# -- folder catalogs -----------------------------------------------------------------------------
# Symlinks are followed as torchvision's ImageFolder follows them (a folder of links is the usual way
# to cut train/val/test splits without copying); only a link that would loop is not followed. Whether
# a file may be *served* is decided where files are served, not here.


def _read_folder(root: Path) -> Listing:
    listing = Listing(root.resolve(), "folder")
    spellings = SkuSpellings()
    for name in sorted(os.listdir(listing.source)):
        if name.startswith("."):
            continue
        path = listing.source / name
        reason = _folder_link_problem(path, (listing.source,))
        if reason:
            listing.skipped.append(Skipped(str(path), reason))
            continue
        if not _is_dir(path):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                listing.skipped.append(Skipped(str(path), NOT_IN_SKU_FOLDER))
            continue  # README files and the like beside the SKU folders are not catalog content
        for found, reason in _walk_sku_folder(path, listing.source):
            item = None if reason else _folder_item(found, root, listing.source, spellings)
            if isinstance(item, Item):
                listing.items.append(item)
            else:
                listing.skipped.append(Skipped(str(found), reason or item))
    return listing


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def _folder_link_problem(path: Path, inside: tuple[Path, ...]) -> str | None:
    """Why the symlink ``path`` (a SKU folder, or a folder in one) is not followed, or None (also when it
    is no symlink): it leads nowhere, or to a folder that contains one of ``inside`` (the real folders
    it was reached through), which would list that folder inside itself for ever."""
    if not os.path.islink(path):
        return None
    target, reason = _resolve(path)
    if reason:
        return reason
    if target.is_dir() and any(folder.is_relative_to(target) for folder in inside):
        return f"symlinked folder to {target}, which contains this folder (a loop; not followed)"
    return None


def _walk_sku_folder(folder: Path, real_root: Path) -> list[tuple[Path, str | None]]:
    """Every non-hidden file below ``folder`` (None: still to examine) and every folder that cannot
    be used with its reason, in path order; symlinked folders are followed unless they loop."""
    found: list[tuple[Path, str | None]] = []
    inside = {str(folder): (real_root, Path(os.path.realpath(folder)))}  # the real folders above each one

    def unreadable(exc: OSError) -> None:
        found.append((Path(exc.filename), f"cannot read folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable, followlinks=True):
        here, above = Path(dirpath), inside.pop(dirpath, (real_root,))
        kept = []
        for name in dirnames:
            if name.startswith("."):
                continue
            reason = _folder_link_problem(here / name, above)
            if reason:
                found.append((here / name, reason))
            else:
                kept.append(name)
                inside[str(here / name)] = (*above, Path(os.path.realpath(here / name)))
        dirnames[:] = kept
        found += [(here / name, None) for name in filenames if not name.startswith(".")]
    return sorted(found, key=lambda f: f[0])


def _folder_item(path: Path, root: Path, real_root: Path, spellings: SkuSpellings) -> Item | str:
    """The item a file of a folder catalog makes (``path`` is below ``real_root``, the catalog folder
    ``root`` resolved), or why it cannot be used."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"unsupported file type {path.suffix or '(none)'}"
    rel = path.relative_to(real_root)
    try:
        str(rel).encode("utf-8")
    except UnicodeEncodeError:
        return "file or folder name is not valid UTF-8; rename it"
    _, reason = _resolve_file(path)
    if reason:
        return reason
    sku = rel.parts[0]
    taken = spellings.clash(sku)
    if taken:
        return f"SKU folder {sku!r} differs from {taken!r} only in case; merge or rename one of them"
    return Item(path, sku, origin=str(root / rel))


# -- CSV manifests -------------------------------------------------------------------------------


def _read_csv(csv_path: Path) -> Listing:
    listing = Listing(csv_path.resolve(), "csv")
    encoding = _csv_encoding(csv_path)
    reader = None
    try:
        with open(csv_path, newline="", encoding=encoding) as f:
            reader = csv.reader(_checked_lines(f, csv_path))
            header = [h.strip().lower() for h in next(reader, [])]
            if "image" not in header or "sku" not in header:
                shown = _one_line(",".join(header)) or "(empty)"
                raise CatalogError(f"{_one_line(csv_path)} has header {shown}; {FORMAT_HELP}")
            _read_rows(reader, header, csv_path, listing)
    except UnicodeDecodeError:
        raise _decode_error(csv_path, encoding) from None
    except csv.Error as exc:
        line = reader.line_num if reader is not None else 1
        raise CatalogError(f"{_one_line(csv_path)} line {line} cannot be read as CSV: {exc}; "
                           "check that line for an unclosed quote or an overlong field") from None
    return listing


def _csv_encoding(csv_path: Path) -> str:
    with open(csv_path, "rb") as f:
        start = f.read(2)
    return "utf-16" if start in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"


def _checked_lines(f: TextIO, csv_path: Path) -> Iterator[str]:
    """The file's lines, numbered as the csv reader numbers them; a NUL byte means binary data or
    UTF-16 without a BOM, never a catalog."""
    for number, line in enumerate(f, start=1):
        if "\0" in line:
            raise CatalogError(f"{_one_line(csv_path)} line {number} contains a NUL byte; save it as a plain CSV "
                               "text file in UTF-8 (or UTF-16 with BOM)")
        yield line


def _decode_error(csv_path: Path, encoding: str) -> CatalogError:
    """Where and why ``csv_path`` is not text in ``encoding`` (read again whole: the text reader
    decodes ahead in blocks, so its error cannot name the line)."""
    data = csv_path.read_bytes()
    if encoding == "utf-8-sig" and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    codec = "utf-16" if encoding == "utf-16" else "utf-8"
    try:
        data.decode(codec)
    except UnicodeDecodeError as exc:
        line = len(re.findall("\r\n|\r|\n", data[:exc.start].decode(codec, errors="replace"))) + 1
        if codec == "utf-8":
            return CatalogError(f"{_one_line(csv_path)} is not UTF-8 text: line {line} has byte "
                                f"0x{data[exc.start]:02x}; {ENCODING_HELP}")
        return CatalogError(f"{_one_line(csv_path)} is not valid UTF-16 text: line {line}: {exc.reason}; "
                            f"{ENCODING_HELP}")
    return CatalogError(f"{_one_line(csv_path)} changed while it was read; read it again when nothing writes it")


def _read_rows(reader, header: list[str], csv_path: Path, listing: Listing) -> None:
    base = listing.source.parent
    spellings = SkuSpellings()
    end = reader.line_num
    for row in reader:
        line, end = end + 1, reader.line_num  # a quoted field may span lines: name the first
        if not row:
            continue  # a blank line
        item = _csv_item(dict(zip(header, row)), base, f"{csv_path}:{line}", spellings)
        if isinstance(item, Item):
            listing.items.append(item)
        else:
            listing.skipped.append(item)


def _csv_item(row: dict[str, str], base: Path, origin: str, spellings: SkuSpellings) -> Item | Skipped:
    """The item a manifest row makes, or why it is skipped."""
    image, sku = row.get("image", "").strip(), row.get("sku", "").strip()
    if not image or not sku:
        return Skipped(origin, "row without image or sku")
    try:
        path = entry_path(base / image)  # relative to the CSV's folder; ``..`` may leave it
    except ValueError as exc:  # a NUL byte
        return Skipped(str(base / image), f"invalid path: {exc}")
    _, reason = _resolve_file(path)
    if reason:
        return Skipped(str(path), reason)
    reason = spellings.problem(sku)
    if reason:
        return Skipped(origin, reason)
    name = row.get("name", "").strip() or None
    category = row.get("category", "").strip().strip("/") or None
    product = row.get("product", "").strip() or None
    return Item(path, sku, name, category, product, origin)
