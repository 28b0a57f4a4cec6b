"""The API's typed requests and answers: FastAPI checks them and writes the OpenAPI document from them."""

from __future__ import annotations

from typing import Annotated, Optional

from pydantic import BaseModel, Field

from prodsearch.serve.photos import MAX_PHOTOS

TopK = Annotated[int, Field(ge=1, le=100, description="How many SKUs to rank")]
# SQLite's integers are 64-bit: a larger id or offset would overflow in the query, so it is a 422 here.
SQLITE_INT_MAX = 2**63 - 1


class SearchParams(BaseModel):
    top_k: TopK = 5
    category: Optional[str] = Field(None, description="Only products in this category subtree (`Fruit`, `Fruit/Apple`)")
    threshold: Optional[float] = Field(None, description="Reject below this value of the index's \"not in catalog\" "
                                                         "rule instead of the calibrated threshold")
    reject: bool = Field(True, description="false: always name the nearest SKU (ignore the rule)")


class SearchJSON(SearchParams):
    images_base64: list[str] = Field(min_length=1, max_length=MAX_PHOTOS,
                                     description="1 to 8 photos of one product, base64 (data URLs too)")


class MatchOut(BaseModel):
    sku: str
    score: float = Field(description="Cosine similarity of the SKU's closest catalog photo")
    name: str
    category: Optional[str]
    image_id: int
    image_url: str


class Timings(BaseModel):
    decode: float
    embed: float = Field(description="Including the wait for the embedding worker")
    search: float
    total: float


class DecisionOut(BaseModel):
    accepted: bool
    rule: str = Field(description="score, margin or ratio (README: \"Not in our catalog\")")
    value: float = Field(description="The rule's value for this answer; accepted when >= threshold")
    threshold: float


class SearchOut(BaseModel):
    matches: list[MatchOut]
    match: Optional[str] = Field(description="The accepted SKU, or null: not one the catalog holds")
    decision: Optional[DecisionOut] = Field(description="How the \"not in catalog\" rule decided; null when the "
                                                        "index has no rule (or reject=false)")
    generation: int = Field(description="The catalog generation that answered")
    photos: int
    timings_ms: Timings


class ProductSummary(BaseModel):
    sku: str
    name: str
    category: Optional[str]
    images: int
    image_id: int = Field(description="Its first photo")
    image_url: str


class ProductsOut(BaseModel):
    total: int
    limit: int
    offset: int
    generation: int
    products: list[ProductSummary]


class ImageOut(BaseModel):
    image_id: int
    image_url: str
    width: int
    height: int


class ProductOut(BaseModel):
    sku: str
    name: str
    category: Optional[str]
    images: list[ImageOut]


class CategoryOut(BaseModel):
    name: str
    path: str
    products: int = Field(description="Products in the whole subtree")
    children: list["CategoryOut"]


class CategoriesOut(BaseModel):
    categories: list[CategoryOut]
    uncategorised: int


class IndexOut(BaseModel):
    products: int
    images: int
    generation: int = Field(description="The newest generation of the index folder")
    serving_generation: int = Field(description="The generation searches answer from (catches up within a second)")
    model: str
    runtime: str
    precision: str
    device: str
    index_type: str
    dim: int
    views: int = Field(1, description="Views each photo, catalog and query, is embedded as (prodsearch index --views)")


class WriteOut(BaseModel):
    generation: int = Field(description="The generation answers come from after this write")
    added: list[int] = Field(default_factory=list, description="Image ids of the photos added")
    unchanged: int = Field(0, description="Photos the product already had")
    removed: list[int] = Field(default_factory=list, description="Image ids removed")
    removed_skus: list[str] = Field(default_factory=list, description="Products left without photos, removed")
    skipped: list[str] = Field(default_factory=list)


class ErrorOut(BaseModel):
    error: str


class StatusOut(BaseModel):
    status: str
