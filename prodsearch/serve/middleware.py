"""ASGI middleware (plain ASGI, not BaseHTTPMiddleware: it adds no task per request): request
metrics by route, and a limit on request bodies before anything reads them."""

from __future__ import annotations

import json
import time

from starlette.exceptions import HTTPException

from prodsearch.serve.metrics import Metrics


class BodyTooLarge(HTTPException):
    """Raised by ``receive`` mid-stream; an HTTPException, so the app answers it like any other 413."""

    def __init__(self, limit: int):
        super().__init__(413, f"the request is over {limit / 2**20:.0f} MB; send at most 8 photos of at most "
                              "the server's --max-upload-mb each")


class LimitBody:
    """Answer 413 to a request whose body is over ``limit`` bytes: said by Content-Length, or
    counted as it streams in."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge(self.limit)
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send) -> None:
        body = json.dumps({"error": BodyTooLarge(self.limit).detail}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class RecordMetrics:
    """Requests by route template (``/v1/products/{sku}``, never the SKU), method and status, and
    their latency."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def watched(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
