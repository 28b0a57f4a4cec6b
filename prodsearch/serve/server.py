"""Running the app: one process, one model, uvicorn. SIGTERM and Ctrl-C stop it gracefully:
uvicorn stops accepting connections, lets the requests in flight finish (up to
``GRACEFUL_SECONDS``), then the app closes the service and the command exits 0: it stopped as asked."""

from __future__ import annotations

import errno
import logging
import signal
import socket

from prodsearch.errors import ProdsearchError
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


def bind(host: str, port: int) -> socket.socket:
    """The server's socket, bound (as uvicorn binds it) but not yet listening: a port in use or an
    address this machine lacks is one error before the model loads, and no client connects to a
    server that is not ready (asyncio listens when uvicorn starts serving)."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise ProdsearchError(f"cannot listen on {host}: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ProdsearchError(f"port {port} is in use on {host} (another server?); stop it or choose "
                                  "another --port (0: any free port)") from None
        if exc.errno == errno.EACCES:
            raise ProdsearchError(f"this user may not listen on port {port}; choose --port 1024 or above") from None
        reason = exc.strerror or str(exc)  # socket.gaierror: a host name that does not resolve
        raise ProdsearchError(f"cannot listen on {host} port {port}: {reason}; give an address of this machine as "
                              "--host (127.0.0.1, 0.0.0.0)") from None
    sock.set_inheritable(True)
    return sock


def serve(service: SearchService, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on ``sock`` (from :func:`bind`) until SIGTERM or Ctrl-C."""
    import uvicorn

    from prodsearch.serve.app import create_app

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(create_app(service), host=host, port=port, log_level=log_level, workers=1,
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, server_header=False)
    # uvicorn raises the signal that stopped it again once it has shut down, for the handlers that were
    # there before; these make that a normal end instead of death by SIGTERM or a KeyboardInterrupt.
    previous = {sig: signal.signal(sig, _stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(sig, frame) -> None:
    log.info("stopped by signal %d", sig)
