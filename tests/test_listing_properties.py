"""Whatever a CSV manifest holds, reading it gives a listing or a CatalogError, never a crash."""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prodsearch.errors import CatalogError
from prodsearch.catalog.listing import Listing, read_listing

from conftest import product_image

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Paths meant to reach every corner of a row's checks: real files, missing ones, links that loop or
# dangle, folders, NUL bytes, names too long for the file system, climbing out with "..", unicode.
PATHS = ["a.jpg", "./a.jpg", "sub/../a.jpg", "../a.jpg", "missing.jpg", "loop.jpg", "dangling.jpg", "sub",
         "sub/", "", " ", "..", "/", "/etc/passwd", "a.jpg\0x", "\0", "x" * 300 + ".jpg", "/".join(["d" * 200] * 30),
         "é/ö.jpg", "日本.jpg", 'quo"te.jpg', "a,b.jpg", "line\nbreak.jpg", "\ud800.jpg", "~/a.jpg", "a.jpg/x.jpg"]


@pytest.fixture(scope="module")
def folder():
    """Files for the manifests to point at (``@given`` cannot take a per-test tmp_path)."""
    path = Path(tempfile.mkdtemp())
    product_image(1).save(path / "a.jpg")
    (path / "sub").mkdir()
    (path / "loop.jpg").symlink_to("loop2.jpg")
    (path / "loop2.jpg").symlink_to("loop.jpg")
    (path / "dangling.jpg").symlink_to("gone.jpg")
    yield path
    shutil.rmtree(path)


def read_or_refuse(path: Path) -> None:
    try:
        assert isinstance(read_listing(path), Listing)
    except CatalogError as exc:
        assert "\n" not in str(exc), "an error message must be one line"


@SETTINGS
@given(data=st.binary(max_size=2000))
def test_arbitrary_bytes(folder, data):
    path = folder / "bytes.csv"
    path.write_bytes(data)
    read_or_refuse(path)


@SETTINGS
@given(data=st.binary(max_size=500), prefix=st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff",
                                                             b"image,sku\n", b"\xff\xfei\x00m\x00"]))
def test_arbitrary_bytes_after_a_bom_or_header(folder, data, prefix):
    path = folder / "bom.csv"
    path.write_bytes(prefix + data)
    read_or_refuse(path)


sku = st.one_of(st.sampled_from(["Milk", "milk", "MILK", "A", "", " "]), st.text(max_size=10))
cell = st.one_of(st.sampled_from(PATHS), st.text(max_size=30), sku)
row = st.one_of(st.lists(cell, max_size=6), st.tuples(st.sampled_from(PATHS), sku).map(list))


@SETTINGS
@given(rows=st.lists(row, max_size=12), blank=st.lists(st.booleans(), max_size=12),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16"]),
       newline=st.sampled_from(["\n", "\r\n", "\r"]), quote_all=st.booleans())
def test_rows_under_a_valid_header(folder, rows, blank, encoding, newline, quote_all):
    lines = ["image,sku,name,category"]
    for i, cells in enumerate(rows):
        if i < len(blank) and blank[i]:
            lines.append("")
        quoted = ['"' + c.replace('"', '""') + '"' if quote_all or any(ch in c for ch in ',"\r\n') else c
                  for c in cells]
        lines.append(",".join(quoted))
    path = folder / "rows.csv"
    path.write_bytes(newline.join(lines).encode(encoding, errors="surrogatepass"))
    read_or_refuse(path)


@SETTINGS
@given(text=st.text(max_size=600))
def test_arbitrary_text_under_a_valid_header(folder, text):
    path = folder / "text.csv"
    path.write_bytes(("image,sku,name,category\n" + text).encode("utf-8", errors="surrogatepass"))
    read_or_refuse(path)
