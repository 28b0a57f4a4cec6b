"""Catalog database, vector index and the index folder that joins them."""

from prodsearch.indexer.build import BuildReport, build_index
from prodsearch.indexer.info import IndexInfo, index_info
from prodsearch.indexer.lifecycle import ChangeReport, add_to_index, remove_from_index, update_index
from prodsearch.indexer.product_index import Match, ProductIndex, QueryResult, open_index
from prodsearch.catalog.listing import Item, Listing, read_listing

__all__ = ["BuildReport", "ChangeReport", "IndexInfo", "Item", "Listing", "Match", "ProductIndex", "QueryResult",
           "add_to_index", "build_index", "index_info", "open_index", "read_listing", "remove_from_index",
           "update_index"]
