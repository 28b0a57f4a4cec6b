"""prodsearch: visual product search. Index catalog photos, answer "which SKU is this photo?"."""

__version__ = "0.1.0"
