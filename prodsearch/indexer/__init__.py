"""Catalog database, vector index and the index folder that joins them."""

from prodsearch.indexer.build import BuildReport, build_index
from prodsearch.indexer.product_index import Match, ProductIndex, QueryResult, open_index
from prodsearch.indexer.sources import Item, Listing, read_listing

__all__ = ["BuildReport", "Item", "Listing", "Match", "ProductIndex", "QueryResult", "build_index", "open_index", "read_listing"]
