"""``prodsearch serve``: the HTTP API and web pages. :class:`SearchService` does the work,
:func:`create_app` (FastAPI) speaks HTTP, :func:`serve` runs it under uvicorn. Imported only by
the ``serve`` command, so the rest of the CLI starts without FastAPI."""

from prodsearch.serve.service import SearchService, ServeSettings

__all__ = ["SearchService", "ServeSettings"]
