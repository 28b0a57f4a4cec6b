"""Every error the API answers is ``{"error": "..."}`` with a status that says whose fault it is;
domain errors keep prodsearch's own messages. An unexpected failure is a 500 with an id that is
also in the server log, and the next request is served as usual."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from prodsearch.errors import CatalogError, CategoryError, ProdsearchError, ReadOnlyIndexError
from prodsearch.indexer.lifecycle import NotInIndexError
from prodsearch.indexer.lock import IndexBusyError
from prodsearch.serve.photos import BadPhotoError, TooLargeError

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of gives its status.
STATUS = [(NotInIndexError, 404), (TooLargeError, 413), (BadPhotoError, 422), (CategoryError, 422),
          (CatalogError, 422), (IndexBusyError, 503), (ReadOnlyIndexError, 409), (ProdsearchError, 422)]
CLIENT_CLOSED = 499  # nginx's "client closed request": what the metrics count a request its client dropped as


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def install(app: FastAPI, index_dir: Path) -> None:
    """Answer errors as ``{"error": ...}``; messages name the index folder by its name only: where
    it lies on the server is no client's business (the CLI's messages, for the shop, say it whole)."""
    hide = sorted({str(index_dir), str(index_dir.absolute()), str(index_dir.resolve())}, key=len, reverse=True)

    def public(message: str) -> str:
        for path in hide:
            message = message.replace(path, index_dir.resolve().name)
        return message

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, public(str(exc.detail)), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(422, validation_message(exc.errors()))

    @app.exception_handler(ProdsearchError)
    async def domain(request: Request, exc: ProdsearchError) -> JSONResponse:
        status = next(code for kind, code in STATUS if isinstance(exc, kind))
        return error(status, public(str(exc)), {"Retry-After": "5"} if status == 503 else None)


def validation_message(errors: list[dict]) -> str:
    """pydantic's errors as one line: ``top_k: Input should be less than or equal to 100``."""
    parts = []
    for e in errors[:5]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path", "form"))
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "; ".join(parts) or "invalid request"


class GuardedRoute(APIRoute):
    """A route whose unexpected exceptions become a logged 500 with an id, instead of a traceback
    to the client (or a dropped connection). A client that hangs up while its request is read is
    no failure of the server: one INFO line, and :data:`CLIENT_CLOSED` for the metrics."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def guarded(request: Request):
            try:
                return await handler(request)
            except (HTTPException, RequestValidationError, ProdsearchError):
                raise
            except ClientDisconnect:
                log.info("%s %s: the client disconnected before its request was read", request.method,
                         request.url.path)
                return error(CLIENT_CLOSED, "the client disconnected before its request was read")
            except Exception:
                failure = uuid.uuid4().hex[:12]
                log.exception("request %s %s failed (error id %s)", request.method, request.url.path, failure)
                return error(500, f"internal error (id {failure}); the server log has the details")

        return guarded
