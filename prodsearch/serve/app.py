"""The HTTP API (FastAPI) and the web pages over a :class:`~prodsearch.serve.service.SearchService`.

Handlers only translate: HTTP in, a service call, typed JSON out. Searches and writes run on the
thread pool (they block on the model and SQLite), never on the event loop.
"""

from __future__ import annotations

import hmac
import math
import time
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Optional

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from prodsearch import __version__
from prodsearch.indexer.rejection import chosen
from prodsearch.indexer.results import Match
from prodsearch.serve import http_errors
from prodsearch.serve.middleware import LimitBody, RecordMetrics
from prodsearch.serve.photos import MAX_PHOTOS, from_base64
from prodsearch.serve.schemas import (SQLITE_INT_MAX, CategoriesOut, ErrorOut, IndexOut, MatchOut, ProductOut,
                                      ProductsOut, SearchJSON, SearchOut, SearchParams, StatusOut, WriteOut)
from prodsearch.serve.service import SearchService, category_tree

STATIC = resources.files("prodsearch.serve") / "static"
ERRORS = {code: {"model": ErrorOut} for code in (401, 403, 404, 409, 413, 422, 500, 503)}
SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                  "maxItems": MAX_PHOTOS, "description": "1 to 8 photos of one product"},
        "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
        "category": {"type": "string"}}}},
    "application/json": {"schema": SearchJSON.model_json_schema()}}}}
IMMUTABLE = "public, max-age=31536000, immutable"  # an image id's content never changes
ImageId = Annotated[int, Path(ge=0, le=SQLITE_INT_MAX)]


def image_url(image_id: int) -> str:
    return f"/v1/images/{image_id}"


def create_app(service: SearchService) -> FastAPI:
    """The app over a service that is open and warm (:meth:`SearchService.start`); the app closes
    it when it shuts down."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await run_in_threadpool(service.close)

    app = FastAPI(title="prodsearch", version=__version__, lifespan=lifespan, responses=ERRORS,
                  description="Visual product search: which SKU is this photo?")
    app.router.route_class = http_errors.GuardedRoute
    http_errors.install(app, service.index_dir)
    settings = service.settings
    app.add_middleware(LimitBody, limit=math.ceil(settings.max_upload_bytes * MAX_PHOTOS * 4 / 3) + 2**20)
    app.add_middleware(RecordMetrics, metrics=service.metrics)
    bearer = HTTPBearer(auto_error=False, description="Writes need the server's token")

    def writer(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if not settings.token:
            raise HTTPException(403, "writes are disabled on this server: start it with --token-file FILE (or "
                                     "PRODSEARCH_TOKEN set) and send the token as 'Authorization: Bearer TOKEN'")
        if credentials is None:
            raise HTTPException(401, "this write needs 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(credentials.credentials.encode(), settings.token.encode()):
            raise HTTPException(403, "wrong token")

    # ------------------------------------------------------------------ search

    @app.post("/v1/search", response_model=SearchOut, openapi_extra=SEARCH_BODY, tags=["search"])
    async def search(request: Request) -> SearchOut:
        """Which SKU is this? 1 to 8 photos of one product (several are fused), as multipart `image`
        files or JSON `images_base64`; `top_k` and `category` as form fields, JSON keys or query
        parameters."""
        start = time.perf_counter()
        photos, params = await _search_request(request, settings.max_upload_bytes)
        searched = await run_in_threadpool(service.search, photos, params.top_k, params.category,
                                           chosen(params.threshold, params.reject))
        timings = {**searched.timings_ms, "total": 1000 * (time.perf_counter() - start)}
        service.metrics.observe_stages(timings)
        answer = searched.answer
        return SearchOut(matches=[_match(m) for m in answer.matches], match=answer.match.sku if answer.match else None,
                         decision=answer.decision.to_dict() if answer.decision else None,
                         generation=answer.generation, photos=len(photos), timings_ms=timings)

    # ------------------------------------------------------------------ catalog

    @app.get("/v1/products", response_model=ProductsOut, tags=["catalog"])
    def products(limit: Annotated[int, Query(ge=1, le=500)] = 24,
                 offset: Annotated[int, Query(ge=0, le=SQLITE_INT_MAX)] = 0,
                 category: Optional[str] = None, q: Annotated[Optional[str], Query(max_length=200)] = None) -> dict:
        """Products by SKU, a page at a time; `category` a subtree, `q` a substring of SKU or name."""
        page = service.products(limit=limit, offset=offset, category=category, text=q)
        page["products"] = [{**p, "image_url": image_url(p["image_id"])} for p in page["products"]]
        return page

    @app.get("/v1/products/{sku:path}", response_model=ProductOut, tags=["catalog"])
    def product(sku: str) -> dict:
        """One product with its photos."""
        found = service.product(sku)
        found["images"] = [{**i, "image_url": image_url(i["image_id"])} for i in found["images"]]
        return found

    @app.get("/v1/categories", response_model=CategoriesOut, tags=["catalog"])
    def categories() -> dict:
        """The category tree, with the products in each subtree."""
        tree, uncategorised = category_tree(service.category_counts())
        return {"categories": tree, "uncategorised": uncategorised}

    @app.get("/v1/images/{image_id}", tags=["catalog"], response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}, "description": "The photo"}, 304: {"description": "Not modified"}})
    def image(request: Request, image_id: ImageId,
              size: Annotated[Optional[int], Query(ge=16, le=4096, description="Longest side of a thumbnail")] = None):
        """A catalog photo, or a cached thumbnail of it (`size` is rounded up to a few steps)."""
        photo = service.photo(image_id, size)
        headers = {"ETag": f'"{photo.etag}"', "Cache-Control": IMMUTABLE}
        if request.headers.get("if-none-match") == headers["ETag"]:
            return Response(status_code=304, headers=headers)
        return Response(photo.data, media_type=photo.media_type, headers=headers)

    # ------------------------------------------------------------------ writes

    @app.post("/v1/products/{sku:path}/images", response_model=WriteOut, dependencies=[Depends(writer)],
              tags=["writes"])
    async def add_images(request: Request, sku: Annotated[str, Path(min_length=1, max_length=200)]) -> WriteOut:
        """Add photos (multipart `image`, 1 to 8) to a product; a new product takes the optional form
        fields `name` and `category`. Photos are stored in the index folder, named by their MD5."""
        form = await _form(request)
        photos = await _read_files(form.getlist("image"))
        name, category = (_text(form.get(k)) for k in ("name", "category"))
        written = await run_in_threadpool(service.add_photos, _checked_sku(sku), photos, name, category)
        return WriteOut(**vars(written))

    @app.delete("/v1/products/{sku:path}", response_model=WriteOut, dependencies=[Depends(writer)], tags=["writes"])
    def delete_product(sku: str) -> WriteOut:
        """Remove a product and all its photos."""
        return WriteOut(**vars(service.delete_product(sku)))

    @app.delete("/v1/images/{image_id}", response_model=WriteOut, dependencies=[Depends(writer)], tags=["writes"])
    def delete_image(image_id: ImageId) -> WriteOut:
        """Remove one photo (its product goes too if it was the last)."""
        return WriteOut(**vars(service.delete_image(image_id)))

    # ------------------------------------------------------------------ operations

    @app.get("/v1/index", response_model=IndexOut, tags=["operations"])
    def index_summary() -> dict:
        """What the server serves: counts, model, runtime, index type, generation."""
        return service.summary()

    @app.get("/healthz", response_model=StatusOut, tags=["operations"])
    def healthz() -> dict:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=StatusOut, tags=["operations"])
    def readyz() -> dict:
        """The index is open and the model warm."""
        if not service.ready:
            raise HTTPException(503, "not ready: the model is loading or the server is shutting down")
        return {"status": "ready"}

    @app.get("/metrics", response_class=Response, tags=["operations"])
    def metrics() -> Response:
        """Prometheus metrics."""
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    # ------------------------------------------------------------------ pages

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def search_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/catalog", response_class=HTMLResponse, include_in_schema=False)
    def catalog_page() -> HTMLResponse:
        return HTMLResponse((STATIC / "catalog.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    return app


def _match(m: Match) -> MatchOut:
    return MatchOut(sku=m.sku, score=m.score, name=m.name, category=m.category, image_id=m.image_id,
                    image_url=image_url(m.image_id))


async def _search_request(request: Request, limit: int) -> tuple[list[bytes], SearchParams]:
    """The photos and parameters of a search, multipart or JSON."""
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            try:
                body = SearchJSON.model_validate_json(await request.body())
            except ValidationError as exc:
                raise HTTPException(422, http_errors.validation_message(exc.errors())) from None
            return from_base64(body.images_base64, limit), body
        if not content_type.startswith("multipart/form-data"):
            raise HTTPException(422, "send the photos as multipart/form-data (field 'image') or as JSON "
                                     "{\"images_base64\": [...]}")
        form = await _form(request)
        photos = await _read_files(form.getlist("image"))
        fields = {k: _text(form.get(k)) or request.query_params.get(k) for k in SearchParams.model_fields}
        return photos, SearchParams.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise HTTPException(422, http_errors.validation_message(exc.errors())) from None


async def _form(request: Request):
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(422, "send the photos as multipart/form-data, in the field 'image'")
    try:
        return await request.form(max_files=MAX_PHOTOS * 8, max_fields=32)
    except HTTPException as exc:  # Starlette's 400 for a malformed or oversized form
        if exc.status_code == 413:
            raise
        raise HTTPException(422, f"the form cannot be read: {exc.detail}") from None


async def _read_files(files: list) -> list[bytes]:
    files = [f for f in files if isinstance(f, UploadFile)]
    if not files:
        raise HTTPException(422, "no photo: send 1 to 8 files in the field 'image'")
    if len(files) > MAX_PHOTOS:
        raise HTTPException(422, f"{len(files)} photos: send at most {MAX_PHOTOS} photos of one product")
    return [await f.read() for f in files]  # sizes are checked with the decoding, for every caller


def _text(value) -> str | None:
    if value is None or isinstance(value, UploadFile):
        return None
    return value.strip() or None


def _checked_sku(sku: str) -> str:
    if sku != sku.strip() or not sku.isprintable():
        raise HTTPException(422, "a SKU cannot start or end with spaces or hold control characters")
    return sku
