"""The catalog, at the bottom of the house: what a shop's photo collection is (listings of labelled
photos read from folders or CSV manifests, the one CSV writer, file types and hashes) and the
importers of public datasets' layouts. Everything else depends on it; it depends on nothing of
prodsearch but :mod:`prodsearch.errors`."""

from prodsearch.catalog.csv_writer import CatalogCsvWriter, write_catalog_csv
from prodsearch.catalog.files import IMAGE_EXTENSIONS, file_hash, file_md5
from prodsearch.catalog.listing import Item, Listing, Skipped, SkuSpellings, read_listing

__all__ = ["CatalogCsvWriter", "IMAGE_EXTENSIONS", "Item", "Listing", "Skipped", "SkuSpellings", "file_hash",
           "file_md5", "read_listing", "write_catalog_csv"]
