"""The standing bad-input suite: every input a careful user or an attacker was seen to try, through
the command line. Each case asserts the exit code, the one-line message, and - where the command
failed - that the index is byte for byte what it was.

Exit codes: 1 with one line ``Error: ...`` for anything a user can fix; 2 with click's usage
message for a malformed command line (an unknown option, a value out of range).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tty  # noqa: F401  (click's progress bar imports it; as nobody the standard library cannot be read)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import pytest
from click.testing import CliRunner

from prodsearch.cli import cli
from prodsearch.indexer import build_index, update_index
from prodsearch.indexer.lock import WriterLock
from prodsearch.retrieval import create_embedder
from prodsearch.retrieval.embedder import DEFAULT_MODEL
from prodsearch.retrieval.weights import locate_weights

from conftest import product_image, unprivileged, write_csv, write_folder_catalog

codecs.lookup("utf-8-sig"), codecs.lookup("utf-16")  # looked up lazily; as nobody they could not be
SKUS = ["milk", "juice", "bread"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("pristine")
    catalog = write_folder_catalog(root / "catalog", SKUS, per_sku=2)
    build_index(catalog, root / "idx", model=create_embedder(img_size=64), num_workers=0)
    # Run each command once as root: the modules they import lazily could not be read as nobody.
    CliRunner().invoke(cli, ["stats", str(catalog), "--out", str(root / "stats")], env={"MPLCONFIGDIR": str(root)})
    return root


@dataclass
class Env:
    """A fresh copy of a small index and its catalog in a folder every user may enter."""

    root: Path
    idx: Path
    catalog: Path
    photo: Path


@dataclass
class Expect:
    args: list
    code: int = 1
    message: str = ""  # a regular expression the last line of stderr must match whole
    unchanged: Path | None = None  # a folder whose files must be byte for byte the same afterwards
    as_nobody: bool = False  # run without root's power over file permissions
    embeds: bool = False  # loads the model's weights from the installed package
    stdout: str | None = None  # a regular expression stdout must contain
    gone: list[Path] = field(default_factory=list)  # paths that must not exist afterwards
    environ: dict[str, str] = field(default_factory=dict)
    after: Callable[[], object] | None = None  # undoes what the case set up outside the folder


CASES = {}


def case(name):
    def register(make):
        CASES[name] = make
        return make
    return register


@pytest.fixture
def env(pristine, public_tmp):
    shutil.copytree(pristine / "catalog", public_tmp / "catalog")
    shutil.copytree(pristine / "idx", public_tmp / "idx")
    photo = public_tmp / "photo.jpg"
    product_image(0).save(photo)  # milk's first photo
    return Env(public_tmp, public_tmp / "idx", public_tmp / "catalog", photo)


def fingerprint(folder: Path) -> dict[str, str]:
    """Every file's bytes (SQLite's WAL side files and the writer lock's files aside: a refused writer touches them)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.endswith(("-wal", "-shm", ".lock", ".writer"))}


def readable(path) -> bool:
    return os.access(path, os.R_OK, effective_ids=os.access in os.supports_effective_ids)


def esc(path) -> str:
    return re.escape(str(path))


# ------------------------------------------------------------------ catalogs given to index / add / update / eval

@case("catalog does not exist")
def _(env):
    return Expect(["index", env.root / "nope", "--index", env.root / "new"],
                  message=rf"Error: {esc(env.root / 'nope')} does not exist; expected a folder .*",
                  gone=[env.root / "new"])


@case("catalog is neither folder nor csv")
def _(env):
    (env.root / "list.txt").write_text("milk.jpg")
    return Expect(["index", env.root / "list.txt", "--index", env.root / "new"],
                  message=r"Error: .*list.txt is neither a folder nor a .csv file; expected .*", gone=[env.root / "new"])


@case("empty catalog folder")
def _(env):
    (env.root / "empty").mkdir()
    return Expect(["index", env.root / "empty", "--index", env.root / "new"],
                  message=r"Error: no images found in .*empty; expected a folder .*", gone=[env.root / "new"])


@case("catalog of unsupported files")
def _(env):
    (env.root / "docs" / "milk").mkdir(parents=True)
    (env.root / "docs" / "milk" / "label.pdf").write_bytes(b"%PDF")
    return Expect(["index", env.root / "docs", "--index", env.root / "new"],
                  message=r"Error: no images found in .*docs \(1 files skipped, e\.g\. .*label\.pdf: unsupported "
                          r"file type \.pdf\); expected .*")


@case("catalog where no photo can be read")
def _(env):
    for path in env.catalog.glob("*/*.jpg"):
        path.write_bytes(os.urandom(64))
    return Expect(["index", env.catalog, "--index", env.root / "new", "--silent"],
                  message=r"Error: none of the 6 image files in .*catalog could be read; e\.g\. .*: not an image "
                          r"\(unrecognised format\)", gone=[env.root / "new"])


@case("catalog of symlink loops only")
def _(env):
    (env.root / "loops" / "milk").mkdir(parents=True)
    os.symlink("b.jpg", env.root / "loops" / "milk" / "a.jpg")
    os.symlink("a.jpg", env.root / "loops" / "milk" / "b.jpg")
    return Expect(["index", env.root / "loops", "--index", env.root / "new"],
                  message=r"Error: no images found in .*loops \(2 files skipped, e\.g\. .*a\.jpg: symlink loop\); .*")


@case("symlink loop beside good photos is skipped")
def _(env):
    os.symlink("b.jpg", env.catalog / "milk" / "a.jpg")
    os.symlink("a.jpg", env.catalog / "milk" / "b.jpg")
    return Expect(["index", env.catalog, "--index", env.root / "new", "--silent"], code=0,
                  stdout=r"skipped: 2\n    .*milk/a\.jpg: symlink loop\n    .*milk/b\.jpg: symlink loop")


@case("dangling symlink is skipped")
def _(env):
    os.symlink("gone.jpg", env.catalog / "milk" / "dangling.jpg")
    return Expect(["update", env.catalog, "--index", env.idx, "--silent"], code=0,
                  stdout=r"skipped: 1\n    .*dangling\.jpg: broken symlink \(target missing\)")


@case("symlinked SKU folder pointing outside is followed")
def _(env):
    (env.root / "elsewhere").mkdir()
    product_image(7).save(env.root / "elsewhere" / "x.jpg")
    os.symlink(env.root / "elsewhere", env.catalog / "linked")
    return Expect(["add", env.catalog, "--index", env.idx, "--silent"], code=0,
                  stdout=r"Added 1 image to .*\n  new SKUs: 1 \(linked\)\n  skipped: 0\n")


@case("symlinked SKU folder holding the catalog is skipped")
def _(env):
    os.symlink(env.root, env.catalog / "above")
    return Expect(["add", env.catalog, "--index", env.idx, "--silent"], code=0,
                  stdout=r"Nothing to add: .*\n  skipped: 1\n    .*above: symlinked folder to .*, which contains this "
                         r"folder \(a loop; not followed\)")


def symlinked_split(env, name="split") -> Path:
    """A folder of symlinks to the catalog's photos, SKU by SKU: a split cut without copying."""
    for photo in sorted(env.catalog.glob("*/*.jpg")):
        (env.root / name / photo.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(photo, env.root / name / photo.parent.name), env.root / name / photo.parent.name /
                   photo.name)
    return env.root / name


@case("index of a split made of symlinks")
def _(env):
    return Expect(["index", symlinked_split(env), "--index", env.root / "new", "--silent"], code=0,
                  stdout=r"Indexed 6 images of 3 SKUs into .*new\n  duplicates: 0 .*\n  skipped: 0\n")


@case("eval of a split made of symlinks")
def _(env):
    return Expect(["eval", symlinked_split(env), "--index", env.idx, "--silent", "--json"], code=0, unchanged=env.idx,
                  stdout=r'"n": 6, "top1": 1\.0, "top5": 1\.0, "skipped": \[\]')


def writable_out(env) -> Path:
    """An output folder nobody may write too."""
    out = env.root / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    return out


@case("unreadable SKU folder is skipped")
def _(env):
    (env.catalog / "juice").chmod(0o000)
    out = writable_out(env)
    return Expect(["stats", env.catalog, "--out", out, "--no-md5"], code=0, as_nobody=True,
                  environ={"MPLCONFIGDIR": str(out / "mpl")},
                  stdout=r"skipped: 1\n  .*juice: cannot read folder: Permission denied")


@case("unreadable catalog folder")
def _(env):
    env.catalog.chmod(0o000)
    out = writable_out(env)
    return Expect(["stats", env.catalog, "--out", out], as_nobody=True, environ={"MPLCONFIGDIR": str(out / "mpl")},
                  message=r"Error: cannot read .*catalog: Permission denied; check that it exists and that you may read it")


@case("csv in latin-1")
def _(env):
    (env.root / "c.csv").write_bytes("image,sku,name\ncatalog/milk/milk_0.jpg,milk,Mjölk\n".encode("latin-1"))
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new"],
                  message=r"Error: .*c\.csv is not UTF-8 text: line 2 has byte 0xf6; save it as UTF-8 \(or UTF-16 with BOM\)")


@case("csv in UTF-16 without BOM")
def _(env):
    (env.root / "c.csv").write_bytes("image,sku\ncatalog/milk/milk_0.jpg,milk\n".encode("utf-16-le"))
    return Expect(["eval", env.root / "c.csv", "--index", env.idx],
                  message=r"Error: .*c\.csv line 1 contains a NUL byte; .*", unchanged=env.idx)


@case("csv with a NUL byte")
def _(env):
    (env.root / "c.csv").write_bytes(b"image,sku\ncatalog/milk/milk_0.jpg,milk\ncatalog/milk/mi\0lk_1.jpg,milk\n")
    return Expect(["stats", env.root / "c.csv", "--out", env.root / "stats"],
                  message=r"Error: .*c\.csv line 3 contains a NUL byte; .*")


@case("csv with a field over 128 KB")
def _(env):
    (env.root / "c.csv").write_text("image,sku,name\ncatalog/milk/milk_0.jpg,milk," + "x" * 200_000 + "\n")
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new"],
                  message=r"Error: .*c\.csv line 2 cannot be read as CSV: field larger than field limit \(131072\); .*")


@case("csv without image and sku columns")
def _(env):
    (env.root / "c.csv").write_text("photo,product\na.jpg,milk\n")
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new"],
                  message=r"Error: .*c\.csv has header photo,product; expected .*")


@case("empty csv")
def _(env):
    (env.root / "c.csv").write_text("")
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new"],
                  message=r"Error: .*c\.csv has header \(empty\); expected .*")


@case("binary file named .csv")
def _(env):
    (env.root / "c.csv").write_bytes(bytes(range(256)) * 4)
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new"],
                  message=r"Error: .*c\.csv is not UTF-8 text: line 3 has byte 0x80; save it as UTF-8 \(or UTF-16 with BOM\)")


@case("csv whose photos are all missing")
def _(env):
    write_csv(env.root / "c.csv", [{"image": "gone.jpg", "sku": "milk"}])
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new"],
                  message=r"Error: no images found in .*c\.csv \(1 files skipped, e\.g\. .*gone\.jpg: file not found\); .*")


@case("csv SKUs differing only in case")
def _(env):
    write_csv(env.root / "c.csv", [{"image": "catalog/milk/milk_0.jpg", "sku": "Milk"},
                                   {"image": "catalog/milk/milk_1.jpg", "sku": "milk"}])
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new", "--silent"], code=0,
                  stdout=r"skipped: 1\n    .*c\.csv:3: SKU 'milk' differs from 'Milk' only in case; use one spelling")


@case("add a SKU the index holds in another case")
def _(env):
    (env.root / "more" / "MILK").mkdir(parents=True)
    product_image(77).save(env.root / "more" / "MILK" / "new.jpg")
    return Expect(["add", env.root / "more", "--index", env.idx, "--silent"], unchanged=env.idx,
                  message=r"Error: SKU 'MILK' differs only in case from the existing 'milk'; use the existing spelling; "
                          rf"nothing was changed in {esc(env.idx)}")


@case("add SKUs the index holds in another case beside a new one")
def _(env):
    for sku in ("MILK", "Juice", "cheese"):
        (env.root / "more" / sku).mkdir(parents=True)
        product_image(len(sku) + 70).save(env.root / "more" / sku / "new.jpg")
    return Expect(["add", env.root / "more", "--index", env.idx], code=0, embeds=True,
                  stdout=r"new SKUs: 1 \(cheese\)\n  skipped: 2\n.*Juice/new\.jpg: SKU 'Juice' differs from 'juice' only "
                         r"in case; use one spelling \(the index holds it\)\n.*MILK/new\.jpg: SKU 'MILK' ")


@case("duplicate csv rows name their lines")
def _(env):
    write_csv(env.root / "c.csv", [{"image": "catalog/milk/milk_0.jpg", "sku": "milk"},
                                   {"image": "catalog/milk/milk_0.jpg", "sku": "milk"}])
    return Expect(["index", env.root / "c.csv", "--index", env.root / "new", "--silent"], code=0,
                  stdout=r"duplicates: 1 .*\n    .*c\.csv:3 = .*c\.csv:2\n")


# ------------------------------------------------------------------ index folders given to index

@case("index target is a file")
def _(env):
    (env.root / "target").write_text("not a folder")
    return Expect(["index", env.catalog, "--index", env.root / "target"], code=2, unchanged=env.root,
                  message=r"Error: Invalid value for '--index': Directory '.*target' is a file\.")


@case("index target holds other files")
def _(env):
    (env.root / "docs").mkdir()
    (env.root / "docs" / "thesis.tex").write_text("precious")
    return Expect(["index", env.catalog, "--index", env.root / "docs"], unchanged=env.root / "docs",
                  message=r"Error: .*docs exists and is not a prodsearch index \(it holds thesis\.tex\); choose a new .*")


@case("index target holds a foreign manifest and files")
def _(env):
    victim = env.root / "victim"
    (victim / "photos").mkdir(parents=True)
    (victim / "manifest.json").write_text('{"name": "my-web-app"}')
    (victim / "important.txt").write_text("precious")
    return Expect(["index", env.catalog, "--index", victim], unchanged=victim,
                  message=r"Error: .*victim is not a prodsearch index that can be rebuilt \(.*; it holds important\.txt, "
                          r"photos, which no prodsearch index does\); nothing was changed: choose a new or empty folder .*")


@case("index target whose parent cannot be written")
def _(env):
    (env.root / "locked").mkdir(mode=0o555)
    return Expect(["index", env.catalog, "--index", env.root / "locked" / "idx"], as_nobody=True,
                  message=r"Error: cannot create the index folder .*locked/idx: .*locked cannot be written "
                          r"\(Permission denied\); choose a folder you can write for --index")


@case("rebuild with another model")
def _(env):
    return Expect(["index", env.catalog, "--index", env.idx, "--model", "lite1", "--silent"], unchanged=env.idx,
                  message=r"Error: .*idx holds an index built with model tf_efficientnet_lite0; 'index' rebuilds an index "
                          r"only with the same model, and tf_efficientnet_lite1 differs in .*weights: leave out --model "
                          r"to rebuild with the index's own, or remove the folder or choose another --index")


@case("index with an ONNX model that is not there")
def _(env):
    return Expect(["index", env.catalog, "--index", env.root / "new", "--model", env.root / "nope.onnx"],
                  message=r"Error: cannot read the ONNX model .*nope\.onnx \(No such file or directory\); give the "
                          r"path of a file written by: prodsearch export MODEL --out FILE\.onnx",
                  gone=[env.root / "new"])


@case("rebuild as another index type")
def _(env):
    return Expect(["index", env.catalog, "--index", env.idx, "--index-type", "HNSW32,Flat", "--silent"],
                  unchanged=env.idx, message=r"Error: .*idx holds a Flat index and a rebuild in place keeps its type; .*")


@case("index type FAISS cannot build")
def _(env):
    return Expect(["index", env.catalog, "--index", env.root / "new", "--index-type", "Bogus42"],
                  message=r"Error: .*Bogus42.*", gone=[env.root / "new"])


# ------------------------------------------------------------------ damaged index folders given to readers

@case("index folder missing")
def _(env):
    return Expect(["query", env.photo, "--index", env.root / "nothing"],
                  message=r"Error: index folder .*nothing does not exist; build one with: prodsearch index CATALOG .*")


@case("folder that is not an index")
def _(env):
    (env.root / "plain").mkdir()
    return Expect(["info", "--index", env.root / "plain"],
                  message=r"Error: .*plain is not a prodsearch index \(no manifest\.json\); build one with: .*")


def damage_manifest(env, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    (env.idx / "manifest.json").write_bytes(data)


def edit_manifest(env, edit) -> None:
    manifest = json.loads((env.idx / "manifest.json").read_text())
    edit(manifest)
    (env.idx / "manifest.json").write_text(json.dumps(manifest))


@case("manifest that is not JSON")
def _(env):
    damage_manifest(env, "{truncated")
    return Expect(["query", env.photo, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*manifest\.json is damaged \(Invalid JSON: .*\); rebuild the index: prodsearch index .*")


@case("manifest that is a JSON array")
def _(env):
    damage_manifest(env, "[1, 2, 3]")
    return Expect(["info", "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*manifest\.json is damaged \(Input should be an object\); rebuild the index: .*")


@case("manifest without input size")
def _(env):
    edit_manifest(env, lambda m: m["model"]["data_config"].pop("input_size"))
    return Expect(["eval", env.catalog, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*manifest\.json is damaged \(model\.data_config\.input_size: Field required\); .*")


@case("manifest of a newer prodsearch")
def _(env):
    edit_manifest(env, lambda m: m.update(format_version=99))
    return Expect(["query", env.photo, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*idx was written by a newer prodsearch \(.*\); upgrade prodsearch")


@case("rebuild an index of a newer prodsearch")
def _(env):
    edit_manifest(env, lambda m: m.update(format_version=99))
    return Expect(["index", env.catalog, "--index", env.idx, "--silent"], unchanged=env.idx,
                  message=r"Error: .*idx was written by a newer prodsearch \(.*\); upgrade prodsearch")


@case("manifest of an older prodsearch")
def _(env):
    edit_manifest(env, lambda m: m.update(format_version=1))
    return Expect(["add", env.catalog, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*idx was written by an older prodsearch \(.*\); rebuild the index: .*")


@case("manifest with its model name edited")
def _(env):
    edit_manifest(env, lambda m: m["model"].update(name="tf_efficientnet_lite2"))
    return Expect(["query", env.photo, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: the manifest of index .*idx names model tf_efficientnet_lite2, but that model does not "
                          r"produce what the manifest records \(.*weights: index has 'imagenet:efficientnet-lite0.*', query "
                          r"would use 'imagenet:efficientnet-lite2.*'\); the manifest was edited .*")


@case("query with another model")
def _(env):
    return Expect(["query", env.photo, "--index", env.idx, "--model", "lite1"], unchanged=env.idx,
                  message=r"Error: index .*idx was built with model tf_efficientnet_lite0 but this query would use "
                          r"tf_efficientnet_lite1 \(.*\); query with --model tf_efficientnet_lite0, or rebuild .*")


@case("catalog database missing")
def _(env):
    (env.idx / "catalog.db").unlink()
    return Expect(["info", "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*idx is incomplete \(catalog\.db is missing\); rebuild the index: .*")


@case("catalog database of garbage")
def _(env):
    (env.idx / "catalog.db").write_bytes(os.urandom(8192))
    return Expect(["query", env.photo, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*catalog\.db is damaged \(file is not a database\); rebuild the index: prodsearch "
                          r"index CATALOG --index .*idx")


@case("catalog database truncated")
def _(env):
    data = (env.idx / "catalog.db").read_bytes()
    (env.idx / "catalog.db").write_bytes(data[: len(data) // 3])
    return Expect(["info", "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*catalog\.db is damaged \(database disk image is malformed\); rebuild the index: .*")


@case("catalog database of another program")
def _(env):
    (env.idx / "catalog.db").unlink()
    sqlite3.connect(env.idx / "catalog.db").execute("create table notes (text)").connection.commit()
    return Expect(["query", env.photo, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*catalog\.db is damaged \(no such table: meta\); rebuild the index: .*")


@case("vector snapshot missing")
def _(env):
    for path in env.idx.glob("vectors-*.faiss"):
        path.unlink()
    return Expect(["query", env.photo, "--index", env.idx], unchanged=env.idx,
                  message=r"Error: .*idx has no readable vector snapshot; rebuild it with: prodsearch index CATALOG .*")


@case("damaged index is rebuilt by the command its message names")
def _(env):
    (env.idx / "catalog.db").write_bytes(os.urandom(8192))
    return Expect(["index", env.catalog, "--index", env.idx, "--silent"], code=0,
                  stdout=r"Indexed 6 images of 3 SKUs into .*idx\n")


# ------------------------------------------------------------------ read-only indexes

def make_read_only(folder: Path) -> None:
    for path in folder.iterdir():
        path.chmod(0o444)
    folder.chmod(0o555)


@case("query a read-only index")
def _(env):
    make_read_only(env.idx)
    return Expect(["query", env.photo, "--index", env.idx, "--top-k", 1], code=0, as_nobody=True, embeds=True,
                  unchanged=env.idx,
                  stdout=r"1\. milk ")


@case("info on a read-only index")
def _(env):
    make_read_only(env.idx)
    return Expect(["info", "--index", env.idx], code=0, as_nobody=True, unchanged=env.idx,
                  stdout=r"catalog:    3 SKUs, 6 images\n.*\nleftovers:  none\nconsistent: yes")


@case("eval on a read-only index")
def _(env):
    make_read_only(env.idx)
    return Expect(["eval", env.catalog, "--index", env.idx, "--silent", "--json"], code=0, as_nobody=True, embeds=True,
                  unchanged=env.idx, stdout=r'"n": 6, "top1": 1\.0')


@case("add to a read-only index")
def _(env):
    make_read_only(env.idx)
    return Expect(["add", env.catalog, "--index", env.idx, "--silent"], as_nobody=True, unchanged=env.idx,
                  message=r"Error: the index .*idx is read-only \(this user cannot write the folder or its catalog\.db\); "
                          r"writing needs a writable copy: .*")


@case("remove from a read-only index")
def _(env):
    make_read_only(env.idx)
    return Expect(["remove", "--index", env.idx, "--sku", "milk"], as_nobody=True, unchanged=env.idx,
                  message=r"Error: the index .*idx is read-only .*")


@case("rebuild a read-only index")
def _(env):
    make_read_only(env.idx)
    return Expect(["index", env.catalog, "--index", env.idx, "--silent"], as_nobody=True, unchanged=env.idx,
                  message=r"Error: the index .*idx is read-only .*")


# ------------------------------------------------------------------ photos given to query

@case("query a missing photo")
def _(env):
    return Expect(["query", env.root / "nope.jpg", "--index", env.idx], unchanged=env.idx,
                  message=rf"Error: cannot answer {esc(env.root / 'nope.jpg')}: file not found")


@case("query a folder")
def _(env):
    return Expect(["query", env.catalog, "--index", env.idx], unchanged=env.idx,
                  message=rf"Error: cannot answer {esc(env.catalog)}: is a directory")


@case("query a text file")
def _(env):
    (env.root / "list.jpg").write_text("milk, bread")
    return Expect(["query", env.root / "list.jpg", "--index", env.idx], unchanged=env.idx,
                  message=r"Error: cannot answer .*list\.jpg: not an image \(unrecognised format\)")


@case("query good and missing photos together")
def _(env):
    return Expect(["query", env.photo, env.root / "nope.jpg", "--index", env.idx], unchanged=env.idx,
                  message=r"Error: 1 of 2 photos could not be answered: .*nope\.jpg: file not found",
                  stdout=rf"{esc(env.photo)}\n  1\. milk ")


@case("query a category the index lacks")
def _(env):
    return Expect(["query", env.photo, "--index", env.idx, "--category", "Dairy"], unchanged=env.idx,
                  message=r"Error: no products in category 'Dairy' in .*idx; its products have no categories")


@pytest.mark.parametrize("command", ["query", "eval"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_a_finite_number_is_refused(env, command, value):
    """It would reject everything or nothing, and ``--json`` would print ``NaN``, which is not JSON."""
    given = env.photo if command == "query" else env.catalog
    result = CliRunner().invoke(cli, [command, str(given), "--index", str(env.idx), "--threshold", value, "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr == f"Error: threshold must be a finite number, not {float(value)}; e.g. 0.5 (prodsearch " \
                            "info shows the index's calibrated rule)\n"


def test_json_output_has_no_nan_or_infinity():
    from prodsearch.cli.app import echo_json

    @click.command()
    def show():
        echo_json({"auroc": float("nan"), "rates": [float("inf"), 0.5, (float("-inf"),)], "n": 3})

    result = CliRunner().invoke(show)
    assert json.loads(result.stdout) == {"auroc": None, "rates": [None, 0.5, [None]], "n": 3}


# ------------------------------------------------------------------ malformed command lines: click's exit code 2

@case("top-k of zero")
def _(env):
    return Expect(["query", env.photo, "--index", env.idx, "--top-k", 0], code=2, unchanged=env.idx,
                  message=r"Error: Invalid value for '--top-k': 0 is not in the range x>=1\.")


@case("negative wait")
def _(env):
    return Expect(["add", env.catalog, "--index", env.idx, "--wait", -1], code=2, unchanged=env.idx,
                  message=r"Error: Invalid value for '--wait': -1\.0 is not in the range x>=0\.")


@case("unknown option")
def _(env):
    return Expect(["query", env.photo, "--index", env.idx, "--colour", "red"], code=2,
                  message=r"Error: No such option(: --colour| '--colour'\.)")  # click 8.3 / 8.4 wording


@case("remove an image id that is not a number")
def _(env):
    return Expect(["remove", "--index", env.idx, "--image", "first"], code=2, unchanged=env.idx,
                  message=r"Error: Invalid value for '--image': 'first' is not a valid integer\.")


# ------------------------------------------------------------------ writers

@case("remove an unknown SKU")
def _(env):
    return Expect(["remove", "--index", env.idx, "--sku", "milk", "--sku", "caviar"], unchanged=env.idx,
                  message=r"Error: not in the index .*idx: SKU 'caviar'; nothing was removed")


@case("remove without naming anything")
def _(env):
    return Expect(["remove", "--index", env.idx], unchanged=env.idx,
                  message=r"Error: nothing to remove: name SKUs with --sku or image ids with --image")


@case("update from a catalog of unreadable photos")
def _(env):
    for path in env.catalog.glob("*/*.jpg"):
        path.write_text("x")
    return Expect(["update", env.catalog, "--index", env.idx, "--silent"], unchanged=env.idx,
                  message=r"Error: none of the 6 image files in .*catalog could be read; e\.g\. .*: not an image "
                          r"\(unrecognised format\); nothing was changed in .*idx")


@case("update where photos became a folder, a dangling link and a link to a non-image")
def _(env):
    update_index(env.catalog, env.idx, num_workers=0)  # the index names this copy's files (it was built on the original)
    (env.catalog / "milk" / "milk_0.jpg").unlink()
    (env.catalog / "milk" / "milk_0.jpg").mkdir()
    (env.catalog / "juice" / "juice_0.jpg").unlink()
    (env.catalog / "juice" / "juice_0.jpg").symlink_to(env.root / "unmounted" / "juice_0.jpg")
    (env.catalog / "bread" / "bread_0.jpg").unlink()
    (env.catalog / "bread" / "bread_0.jpg").symlink_to("/etc/hostname")
    return Expect(["update", env.catalog, "--index", env.idx, "--silent"], code=0, unchanged=env.idx,
                  stdout=r"Nothing to update: .*idx already holds exactly the catalog's 3 images\n"
                         r"  skipped: 3\n    .*juice_0\.jpg: broken symlink \(target missing\)\n"
                         r"    .*bread_0\.jpg: not an image .*\n    .*milk_0\.jpg: not a regular file\n"
                         r"  kept: 3 images whose files cannot be read now")


@case("update that would empty most of the index")
def _(env):
    shutil.rmtree(env.catalog / "milk")
    shutil.rmtree(env.catalog / "juice")
    return Expect(["update", env.catalog, "--index", env.idx, "--silent"], unchanged=env.idx,
                  message=r"Error: this update would remove 4 of the 6 images in .*idx \(67%\); removing more than 50% of "
                          r"an index in one update needs --allow-mass-removal .*; nothing was changed")


@case("write while another process writes")
def _(env):
    lock = WriterLock(env.idx, "test").__enter__()
    return Expect(["remove", "--index", env.idx, "--sku", "milk"], unchanged=env.idx, after=lambda: lock.__exit__(None),
                  message=r"Error: .*idx is being written by another prodsearch process \(pid \d+, 'test' since .*\); "
                          r"wait for it to finish, or pass --wait SECONDS")


@case("stale staging folder of a killed build is cleaned up")
def _(env):
    stale = env.root / ".new.tmp-deadbeef"
    stale.mkdir()
    (stale / "catalog.db").write_bytes(b"half written")
    (stale / ".lock").write_text('{"pid": 1}')  # its writer died: nobody holds the lock
    return Expect(["index", env.catalog, "--index", env.root / "new", "--silent"], code=0,
                  stdout=r"Indexed 6 images", gone=[stale])


@case("stats over a dangling symlink")
def _(env):
    os.symlink("gone.jpg", env.catalog / "milk" / "dangling.jpg")
    return Expect(["stats", env.catalog, "--out", env.root / "stats"], code=0,
                  stdout=r"skipped: 1\n  .*dangling\.jpg: broken symlink \(target missing\)")


@case("stats over an unreadable photo")
def _(env):
    (env.catalog / "milk" / "milk_0.jpg").chmod(0o000)
    out = writable_out(env)
    return Expect(["stats", env.catalog, "--out", out], code=0, as_nobody=True, environ={"MPLCONFIGDIR": str(out / "mpl")},
                  stdout=r"skipped: 1\n  .*milk_0\.jpg: cannot read file: Permission denied")


# ------------------------------------------------------------------ eval's query photos and --report folder

@case("eval where no query photo can be read")
def _(env):
    for path in env.catalog.glob("*/*.jpg"):
        path.write_bytes(os.urandom(64))
    return Expect(["eval", env.catalog, "--index", env.idx, "--silent"], unchanged=env.idx,
                  message=r"Error: none of the 6 image files in .*catalog could be read; e\.g\. .*: not an image "
                          r"\(unrecognised format\)")


@case("calibrate where no photo can be read")
def _(env):
    for path in env.catalog.glob("*/*.jpg"):
        path.write_bytes(os.urandom(64))
    return Expect(["calibrate", env.catalog, "--index", env.idx, "--silent"], unchanged=env.idx,
                  message=r"Error: none of the 6 image files in .*catalog could be read; e\.g\. .*: not an image "
                          r"\(unrecognised format\)")


@case("train with learning-rate steps after the last epoch")
def _(env):
    return Expect(["train", env.catalog, "--out", env.root / "run", "--recipe", "none", "--epochs", 5,
                   "--lr-steps", "20,40"], gone=[env.root / "run"],
                  message=r"Error: --lr-steps 20,40 come at or after the last of the 5 epochs \(--epochs 5\): the "
                          r"learning rate would never decay; give steps below 5 \(e\.g\. --lr-steps 3\), or "
                          r"--lr-steps '' for a constant rate")


def someone_elses_page(env) -> Path:
    """A folder with an index.html and an img/ folder of report-like names that no report wrote."""
    folder = env.root / "site"
    (folder / "img").mkdir(parents=True)
    (folder / "index.html").write_text("<html>the shop's own page</html>")
    product_image(3).save(folder / "img" / "q-0.jpg")
    return folder


@case("eval --report into someone else's page")
def _(env):
    folder = someone_elses_page(env)
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", folder], unchanged=folder / "img",
                  message=rf"Error: {esc(folder)} is not empty and not an earlier prodsearch report \(it holds img, "
                          r"index\.html\); give a new folder for --report")


@case("eval --report into a folder of other files")
def _(env):
    folder = env.root / "notes"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "logo.png").write_bytes(b"not ours")
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", folder], unchanged=folder / "img",
                  message=r"Error: .*notes is not empty and not an earlier prodsearch report \(it holds img\); .*")


@case("eval --report on a file")
def _(env):
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", env.photo], unchanged=env.root,
                  message=rf"Error: {esc(env.photo)} exists and is not a folder; give a new folder for --report")


@case("eval --report on /dev/null")
def _(env):
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", "/dev/null"],
                  message=r"Error: /dev/null exists and is not a folder; give a new folder for --report")


@case("eval --report under /dev/null")
def _(env):
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", "/dev/null/report"],
                  message=r"Error: cannot create the report folder /dev/null/report: /dev/null is not a folder; .*")


@case("eval --report into /proc/self")
def _(env):
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", "/proc/self"],
                  message=r"Error: /proc/self is not empty and not an earlier prodsearch report \(it holds .*\); .*")


@case("eval --report under a folder nobody may write")
def _(env):
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", "/proc/self/report"],
                  message=r"Error: cannot write the report into /proc/self/report: /proc/self is not writable; give a "
                          r"folder you can write for --report")


@case("eval --report into a read-only empty folder")
def _(env):
    folder = env.root / "locked"
    folder.mkdir(mode=0o555)
    return Expect(["eval", env.catalog, "--index", env.idx, "--report", folder], as_nobody=True,
                  message=rf"Error: cannot write the report into {esc(folder)}: {esc(folder)} is not writable; .*")


# ------------------------------------------------------------------ the test (after every case is registered)

@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, env):
    expect = CASES[name](env)
    before = fingerprint(expect.unchanged) if expect.unchanged else None
    args = [str(a) for a in expect.args]
    try:
        if expect.as_nobody:
            weights = locate_weights(DEFAULT_MODEL).path if expect.embeds else None  # hashed as root
            with unprivileged():
                if weights is not None and not readable(weights):
                    pytest.skip("the installed model weights lie in a folder the unprivileged user cannot read")
                result = CliRunner().invoke(cli, args, env=expect.environ)
        else:
            result = CliRunner().invoke(cli, args, env=expect.environ)
    finally:
        if expect.after:
            expect.after()
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == expect.code, result.output
    assert "Traceback" not in result.output
    assert not [r for r in ("PosixPath(", "Listing(", "Item(", "Skipped(", "<prodsearch.") if r in result.output]
    errors = result.stderr.splitlines()
    if expect.code == 1:
        assert len(errors) == 1, result.stderr  # one line, nothing else
    assert re.fullmatch(expect.message, errors[-1] if errors else ""), errors
    if expect.stdout is not None:
        assert re.search(expect.stdout, result.stdout), result.stdout
    if expect.unchanged:
        assert fingerprint(expect.unchanged) == before
    for path in expect.gone:
        assert not path.exists()


def test_the_suite_is_large_enough():
    assert len(CASES) >= 40
