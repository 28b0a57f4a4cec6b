"""Both catalog formats, and clear refusals of everything else."""

import codecs
import os
from pathlib import Path

import pytest

from prodsearch.errors import CatalogError
from prodsearch.indexer.ingest import Duplicate, file_info, scan
from prodsearch.catalog.csv_writer import write_catalog_csv
from prodsearch.catalog.listing import Skipped, SkuSpellings, read_listing

from conftest import product_image, unprivileged, write_csv, write_folder_catalog


def test_folder_catalog(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk", "juice"], per_sku=2)
    (root / "juice" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("beside the SKU folders: ignored")
    (root / "milk" / ".DS_Store").write_bytes(b"\0")
    listing = read_listing(root)
    assert listing.kind == "folder"
    assert listing.skus == ["juice", "milk"]
    assert len(listing.items) == 4
    assert all(it.path.is_absolute() and it.path.is_file() for it in listing.items)
    assert [(s.path.endswith("notes.txt"), s.reason) for s in listing.skipped] == [(True, "unsupported file type .txt")]


def test_image_outside_sku_folder_is_skipped(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk"])
    product_image(1).save(root / "loose.jpg")
    listing = read_listing(root)
    assert len(listing.items) == 1
    assert listing.skipped[0].reason.startswith("not inside a SKU folder")


def test_csv_catalog_relative_paths_and_metadata(tmp_path):
    (tmp_path / "imgs").mkdir()
    product_image(1).save(tmp_path / "imgs" / "a.jpg")
    product_image(2).save(tmp_path / "imgs" / "b.png")
    csv_path = write_csv(tmp_path / "catalog.csv", [
        {"image": "imgs/a.jpg", "sku": "A1", "name": "Milk 3%", "category": "Dairy/Milk"},
        {"image": "imgs/b.png", "sku": "B2", "name": "", "category": ""},
        {"image": "imgs/missing.jpg", "sku": "C3", "name": "", "category": ""},
        {"image": "", "sku": "D4", "name": "", "category": ""},
    ])
    listing = read_listing(csv_path)
    assert listing.kind == "csv"
    assert [(it.path.name, it.sku, it.name, it.category) for it in listing.items] == [
        ("a.jpg", "A1", "Milk 3%", "Dairy/Milk"), ("b.png", "B2", None, None)]
    assert [s.reason for s in listing.skipped] == ["file not found", "row without image or sku"]


def test_csv_minimal_header(tmp_path):
    product_image(1).save(tmp_path / "a.jpg")
    (tmp_path / "c.csv").write_text("image,sku\na.jpg,X\n")
    assert read_listing(tmp_path / "c.csv").items[0].sku == "X"


def test_missing_path(tmp_path):
    with pytest.raises(CatalogError, match=r"nowhere does not exist; expected a folder with one sub-folder per SKU"):
        read_listing(tmp_path / "nowhere")


def test_csv_with_wrong_header(tmp_path):
    (tmp_path / "c.csv").write_text("file,label\na.jpg,X\n")
    with pytest.raises(CatalogError, match="has header file,label; expected"):
        read_listing(tmp_path / "c.csv")


def test_other_file_types_are_refused(tmp_path):
    (tmp_path / "catalog.json").write_text("{}")
    with pytest.raises(CatalogError, match="is neither a folder nor a .csv file"):
        read_listing(tmp_path / "catalog.json")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="^no images found in .*empty; expected"):
        read_listing(tmp_path / "empty")


def test_folder_without_images(tmp_path):
    (tmp_path / "cat" / "milk").mkdir(parents=True)
    (tmp_path / "cat" / "milk" / "a.txt").write_text("x")
    with pytest.raises(CatalogError, match=r"no images found in .*\(1 files skipped, e.g. .*a.txt: unsupported file type .txt\)"):
        read_listing(tmp_path / "cat")


# -- symlinks and odd paths ----------------------------------------------------------------------


def reasons(listing, root=None):
    """{path (relative to root if given): reason} of a listing's skipped files."""
    return {(os.path.relpath(s.path, root) if root else s.path): s.reason for s in listing.skipped}


def test_symlink_loops_and_dangling_symlinks_in_a_folder_are_skipped(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk"])
    os.symlink("b.jpg", root / "milk" / "a.jpg")
    os.symlink("a.jpg", root / "milk" / "b.jpg")
    os.symlink("gone.jpg", root / "milk" / "dangling.jpg")
    listing = read_listing(root)
    assert [it.path.name for it in listing.items] == ["milk_0.jpg"]
    assert reasons(listing, root) == {"milk/a.jpg": "symlink loop", "milk/b.jpg": "symlink loop",
                                      "milk/dangling.jpg": "broken symlink (target missing)"}


def test_symlink_loops_dangling_symlinks_and_impossible_paths_in_a_csv_are_skipped(tmp_path):
    product_image(1).save(tmp_path / "ok.jpg")
    os.symlink("b.jpg", tmp_path / "a.jpg")
    os.symlink("a.jpg", tmp_path / "b.jpg")
    os.symlink("gone.jpg", tmp_path / "dangling.jpg")
    (tmp_path / "folder.jpg").mkdir()
    long_name = "x" * 300 + ".jpg"
    csv_path = write_csv(tmp_path / "c.csv", [{"image": name, "sku": "S"} for name in
                                              ("ok.jpg", "a.jpg", "dangling.jpg", "folder.jpg", long_name)])
    listing = read_listing(csv_path)
    assert [it.path.name for it in listing.items] == ["ok.jpg"]
    assert reasons(listing, tmp_path) == {"a.jpg": "symlink loop", "dangling.jpg": "broken symlink (target missing)",
                                          "folder.jpg": "not a regular file",
                                          long_name: "cannot read path: File name too long"}


def test_symlinked_sku_folders_are_followed_unless_they_loop(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk"])
    write_folder_catalog(tmp_path / "elsewhere", ["juice"])
    write_folder_catalog(root / ".shelf", ["tea"])  # hidden: not a SKU itself, but a link may point into it
    os.symlink(root / ".shelf" / "tea", root / "tea")
    os.symlink(tmp_path / "elsewhere" / "juice", root / "juice")
    os.symlink(root, root / "itself")
    os.symlink(tmp_path, root / "above")
    os.symlink(tmp_path / "gone", root / "dangling")
    listing = read_listing(root)
    assert [(it.sku, it.origin) for it in listing.items] == [("juice", str(root / "juice" / "juice_0.jpg")),
                                                             ("milk", str(root / "milk" / "milk_0.jpg")),
                                                             ("tea", str(root / "tea" / "tea_0.jpg"))]
    assert listing.items[2].path == root.resolve() / "tea" / "tea_0.jpg"  # named as listed, not as resolved
    loop = "which contains this folder (a loop; not followed)"
    assert reasons(listing, root) == {"above": f"symlinked folder to {tmp_path.resolve()}, {loop}",
                                      "itself": f"symlinked folder to {root.resolve()}, {loop}",
                                      "dangling": "broken symlink (target missing)"}


def test_folders_inside_a_sku_folder(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk", "tea"])
    (root / "milk" / "side").mkdir()
    product_image(3).save(root / "milk" / "side" / "left.jpg")
    (root / "milk" / ".thumbs").mkdir()
    product_image(4).save(root / "milk" / ".thumbs" / "small.jpg")
    os.symlink(root / "tea", root / "milk" / "teas")
    os.symlink(root / "milk", root / "milk" / "side" / "loop")
    listing = read_listing(root)
    assert [(it.sku, os.path.relpath(it.origin, root)) for it in listing.items] == [
        ("milk", "milk/milk_0.jpg"), ("milk", "milk/side/left.jpg"), ("milk", "milk/teas/tea_0.jpg"),
        ("tea", "tea/tea_0.jpg")]
    assert reasons(listing, root) == {
        "milk/side/loop": f"symlinked folder to {(root / 'milk').resolve()}, which contains this folder (a loop; not "
                          "followed)"}


def test_a_loop_through_two_linked_folders_is_not_followed(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk"])
    write_folder_catalog(tmp_path / "a", ["x"])
    (tmp_path / "b").mkdir()
    os.symlink(tmp_path / "b", tmp_path / "a" / "x" / "to-b")
    os.symlink(tmp_path / "a" / "x", tmp_path / "b" / "to-a")
    os.symlink(tmp_path / "a" / "x", root / "milk" / "more")
    listing = read_listing(root)
    assert [os.path.relpath(it.origin, root) for it in listing.items] == ["milk/milk_0.jpg", "milk/more/x_0.jpg"]
    assert list(reasons(listing, root)) == ["milk/more/to-b/to-a"]


def test_symlinked_files_anywhere_are_followed(tmp_path):
    """A folder of links (a split cut without copying) lists the links, named as the catalog names them."""
    root = write_folder_catalog(tmp_path / "cat", ["milk", "tea"])
    product_image(9).save(tmp_path / "elsewhere.jpg")
    os.symlink(root / "tea" / "tea_0.jpg", root / "milk" / "tea.jpg")
    os.symlink(tmp_path / "elsewhere.jpg", root / "milk" / "elsewhere.jpg")
    listing = read_listing(root)
    assert [(it.sku, it.path.name, it.origin) for it in listing.items] == [
        ("milk", "elsewhere.jpg", str(root / "milk" / "elsewhere.jpg")),
        ("milk", "milk_0.jpg", str(root / "milk" / "milk_0.jpg")),
        ("milk", "tea.jpg", str(root / "milk" / "tea.jpg")),
        ("tea", "tea_0.jpg", str(root / "tea" / "tea_0.jpg"))]
    assert not listing.skipped


def test_a_split_made_of_symlinks_lists_like_the_photos(tmp_path):
    photos = write_folder_catalog(tmp_path / "photos", ["milk", "tea"], per_sku=3)
    for sku in ("milk", "tea"):
        (tmp_path / "val" / sku).mkdir(parents=True)
        for f in sorted((photos / sku).iterdir())[:2]:
            os.symlink(os.path.relpath(f, tmp_path / "val" / sku), tmp_path / "val" / sku / f.name)
    listing = read_listing(tmp_path / "val")
    assert [(it.sku, it.path.name) for it in listing.items] == [
        ("milk", "milk_0.jpg"), ("milk", "milk_1.jpg"), ("tea", "tea_0.jpg"), ("tea", "tea_1.jpg")]
    assert all(it.path.parent.parent == (tmp_path / "val").resolve() for it in listing.items)
    assert not listing.skipped


def test_csv_paths_may_leave_the_csv_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    product_image(1).save(tmp_path / "photos" / "a.jpg")
    (tmp_path / "sets").mkdir()
    csv_path = write_csv(tmp_path / "sets" / "val.csv", [{"image": "../photos/a.jpg", "sku": "A"},
                                                          {"image": "../photos/gone.jpg", "sku": "B"}])
    listing = read_listing(csv_path)
    assert [it.path for it in listing.items] == [tmp_path.resolve() / "photos" / "a.jpg"]
    assert [(s.path, s.reason) for s in listing.skipped] == [(str(tmp_path.resolve() / "photos" / "gone.jpg"),
                                                              "file not found")]


def test_a_csv_written_into_a_symlinked_folder_finds_its_photos(tmp_path, monkeypatch):
    """The writer's relative paths are the reader's: between real folders, whatever links lie between."""
    (tmp_path / "data" / "deep" / "gs").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    os.symlink(tmp_path / "data" / "deep" / "gs", tmp_path / "work" / "gs")
    (tmp_path / "shared").mkdir()
    product_image(1).save(tmp_path / "shared" / "a.jpg")
    monkeypatch.chdir(tmp_path / "work")
    write_catalog_csv("gs/catalog.csv", [{"image": "../shared/a.jpg", "sku": "A"}])
    listing = read_listing("gs/catalog.csv")
    assert [it.path for it in listing.items] == [tmp_path.resolve() / "shared" / "a.jpg"] and not listing.skipped


def can_list(folder: Path) -> bool:
    try:
        os.listdir(folder)
        return True
    except PermissionError:
        return False


def test_unreadable_folders_are_listed_as_skipped(public_tmp):
    root = write_folder_catalog(public_tmp / "cat", ["locked", "milk"])
    (root / "milk" / "side").mkdir()
    product_image(3).save(root / "milk" / "side" / "left.jpg")
    (root / "locked").chmod(0o000)
    (root / "milk" / "side").chmod(0o000)
    with unprivileged():
        if can_list(root / "locked"):
            pytest.skip("file permissions do not apply here")
        listing = read_listing(root)
    assert [os.path.relpath(it.origin, root) for it in listing.items] == ["milk/milk_0.jpg"]
    assert reasons(listing, root) == {"locked": "cannot read folder: Permission denied",
                                      "milk/side": "cannot read folder: Permission denied"}


def test_unreadable_catalog_folder(public_tmp):
    root = write_folder_catalog(public_tmp / "cat", ["milk"])
    root.chmod(0o000)
    with unprivileged():
        if can_list(root):
            pytest.skip("file permissions do not apply here")
        with pytest.raises(CatalogError, match=r"^cannot read .*cat: Permission denied; check that it exists"):
            read_listing(root)


def test_folder_output_is_sorted(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["b", "a", "a-b"], per_sku=2)
    (root / "a" / "z").mkdir()
    product_image(5).save(root / "a" / "z" / "0.jpg")
    (root / "a" / "notes.txt").write_text("x")
    product_image(6).save(root / "loose.jpg")
    listing = read_listing(root)
    assert [os.path.relpath(it.origin, root) for it in listing.items] == [
        "a/a_0.jpg", "a/a_1.jpg", "a/z/0.jpg", "a-b/a-b_0.jpg", "a-b/a-b_1.jpg", "b/b_0.jpg", "b/b_1.jpg"]
    assert [os.path.relpath(s.path, root) for s in listing.skipped] == ["a/notes.txt", "loose.jpg"]


# -- CSV encodings and structure -----------------------------------------------------------------


def csv_catalog(tmp_path, text: str, encoding: str = "utf-8") -> Path:
    for seed, name in enumerate(("a.jpg", "b.jpg", "é.jpg")):
        product_image(seed).save(tmp_path / name)
    path = tmp_path / "catalog.csv"
    path.write_bytes(text.encode(encoding))
    return path


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be"])
def test_csv_encodings_accepted(tmp_path, encoding):
    text = "image,sku,name\r\na.jpg,A,Mjölk\r\né.jpg,É,Crème brûlée\r\n"
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE}.get(encoding, b"")
    path = csv_catalog(tmp_path, text, encoding)
    path.write_bytes(bom + path.read_bytes())
    listing = read_listing(path)
    assert [(it.path.name, it.sku, it.name) for it in listing.items] == [("a.jpg", "A", "Mjölk"),
                                                                         ("é.jpg", "É", "Crème brûlée")]


def test_csv_in_another_encoding_is_refused_with_the_line(tmp_path):
    path = csv_catalog(tmp_path, "image,sku,name\na.jpg,A,x\nb.jpg,B,Café\n", "latin-1")
    with pytest.raises(CatalogError) as exc:
        read_listing(path)
    assert str(exc.value) == f"{path} is not UTF-8 text: line 3 has byte 0xe9; save it as UTF-8 (or UTF-16 with BOM)"


def test_csv_decoding_error_far_into_the_file_names_its_line(tmp_path):
    rows = "".join(f"a.jpg,A{i},x\r\n" for i in range(5000))  # well past the text reader's read-ahead
    path = csv_catalog(tmp_path, "image,sku,name\r\n" + rows + "b.jpg,B,\xe9\r\n", "latin-1")
    with pytest.raises(CatalogError, match=r"is not UTF-8 text: line 5002 has byte 0xe9;"):
        read_listing(path)


def test_broken_utf16_is_refused_with_the_line(tmp_path):
    path = csv_catalog(tmp_path, "image,sku\na.jpg,A\n", "utf-16")
    path.write_bytes(path.read_bytes() + b"x")  # half a character at the end
    with pytest.raises(CatalogError, match=r"^.*catalog.csv is not valid UTF-16 text: line 3: truncated data; save it"):
        read_listing(path)


def test_csv_with_a_nul_byte_is_refused_with_the_line(tmp_path):
    path = csv_catalog(tmp_path, "image,sku\na.jpg,A\nb.jpg,B\nb.jpg,\0C\n")
    with pytest.raises(CatalogError, match=r"catalog.csv line 4 contains a NUL byte; save it as a plain CSV text file"):
        read_listing(path)


def test_utf16_csv_without_bom_is_refused(tmp_path):
    path = csv_catalog(tmp_path, "image,sku\na.jpg,A\n", "utf-16-le")
    with pytest.raises(CatalogError, match=r"catalog.csv line 1 contains a NUL byte"):
        read_listing(path)


def test_csv_field_over_the_limit_is_refused_with_the_line(tmp_path):
    path = csv_catalog(tmp_path, 'image,sku,name\na.jpg,A,x\nb.jpg,B,"' + "y" * 200_000 + '\n')
    with pytest.raises(CatalogError) as exc:
        read_listing(path)
    assert str(exc.value) == (f"{path} line 3 cannot be read as CSV: field larger than field limit (131072); "
                              "check that line for an unclosed quote or an overlong field")


def test_csv_line_numbers_count_blank_lines_and_quoted_line_breaks(tmp_path):
    path = csv_catalog(tmp_path, 'image,sku,name\n\na.jpg,A,"two\nlines"\n\n,B,\nmissing.jpg,C,\nb.jpg,B,\nb.jpg,B,\n')
    listing = read_listing(path)
    assert [(s.path, s.reason) for s in listing.skipped] == [
        (f"{path}:6", "row without image or sku"), (str(tmp_path.resolve() / "missing.jpg"), "file not found")]
    assert [it.origin for it in listing.items] == [f"{path}:3", f"{path}:8", f"{path}:9"]
    assert listing.items[0].name == "two\nlines"


def test_csv_header_shown_on_one_line(tmp_path):
    path = csv_catalog(tmp_path, '"file\nname",label\na.jpg,A\n')
    with pytest.raises(CatalogError, match=r"has header file\\nname,label; expected") as exc:
        read_listing(path)
    assert "\n" not in str(exc.value)


# -- SKU case ------------------------------------------------------------------------------------


def test_sku_spellings():
    spellings = SkuSpellings(["Milk"])
    assert spellings.problem("Milk") is None
    assert spellings.problem("milk") == "SKU 'milk' differs from 'Milk' only in case; use one spelling"
    assert spellings.problem("Tea") is None and spellings.problem("TEA") is not None
    assert spellings.problem("Straße") is None and spellings.clash("STRASSE") == "Straße"


def test_csv_skus_differing_only_in_case(tmp_path):
    path = csv_catalog(tmp_path, "image,sku\nmissing.jpg,milk\na.jpg,Milk\nb.jpg,milk\nb.jpg,MILK\na.jpg,Milk\n")
    listing = read_listing(path)
    assert [(it.sku, it.origin) for it in listing.items] == [("Milk", f"{path}:3"), ("Milk", f"{path}:6")]
    assert [(s.path, s.reason) for s in listing.skipped][1:] == [
        (f"{path}:4", "SKU 'milk' differs from 'Milk' only in case; use one spelling"),
        (f"{path}:5", "SKU 'MILK' differs from 'Milk' only in case; use one spelling")]


def test_folder_skus_differing_only_in_case(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["Milk", "milk"])
    listing = read_listing(root)
    assert listing.skus == ["Milk"]
    assert reasons(listing, root) == {
        "milk/milk_0.jpg": "SKU folder 'milk' differs from 'Milk' only in case; merge or rename one of them"}


# -- where items came from -----------------------------------------------------------------------


def test_duplicates_are_reported_where_they_were_found(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk"])
    os.symlink("milk_0.jpg", root / "milk" / "milk_1.jpg")
    scanned = scan(read_listing(root))
    milk = root / "milk"
    assert scanned.duplicates == [Duplicate(str(milk / "milk_1.jpg"), str(milk / "milk_0.jpg"), "milk")]

    path = csv_catalog(tmp_path, "image,sku\na.jpg,A\nb.jpg,A\n./a.jpg,A\n")
    scanned = scan(read_listing(path))
    assert scanned.duplicates == [Duplicate(f"{path}:4", f"{path}:2", "A")]


def test_file_vanished_after_listing_is_skipped(tmp_path):
    root = write_folder_catalog(tmp_path / "cat", ["milk", "tea"])
    listing = read_listing(root)
    (root / "tea" / "tea_0.jpg").unlink()
    assert file_info(listing.items[1]) == Skipped(str(root.resolve() / "tea" / "tea_0.jpg"),
                                                   "cannot read file: No such file or directory")
    scanned = scan(listing)
    assert len(scanned.files) == 1 and scanned.skipped == [file_info(listing.items[1])]
