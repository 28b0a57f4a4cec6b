"""Running the app: one process, one model, uvicorn. SIGTERM and Ctrl-C stop it gracefully:
uvicorn stops accepting connections, lets the requests in flight finish (up to
``GRACEFUL_SECONDS``), then the app closes the service and the command exits 0: it stopped as asked."""

from __future__ import annotations

import logging
import signal

from prodsearch.serve.service import SearchService, ServeSettings

log = logging.getLogger(__name__)

GRACEFUL_SECONDS = 30


def open_service(settings: ServeSettings) -> SearchService:
    """Open the index and warm the model before the server binds: a bad index or model fails here,
    as one error, rather than as a server that answers 500."""
    service = SearchService(settings)
    try:
        service.start()
    except BaseException:
        service.close()
        raise
    return service


def serve(service: SearchService, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    from prodsearch.serve.app import create_app

    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, workers=1,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False)
    # uvicorn raises the signal that stopped it again once it has shut down, for the handlers that were
    # there before; these make that a normal end instead of death by SIGTERM or a KeyboardInterrupt.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(sig, frame) -> None:
    log.info("stopped by signal %d", sig)
