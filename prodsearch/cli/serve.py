"""``serve``: the HTTP API and the web page over an index."""

from __future__ import annotations

import os
from pathlib import Path

import click

from prodsearch.cli.app import cli, index_option, query_model_option, runtime_options
from prodsearch.errors import ProdsearchError

TOKEN_ENV = "PRODSEARCH_TOKEN"


@cli.command()
@index_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves other machines (put TLS in front).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="TCP port to listen on (0: any free port).")
@click.option("--token-file", type=click.Path(dir_okay=False, exists=True),
              help=f"File holding the bearer token that writes need (or set {TOKEN_ENV}); without one, "
                   "writes are refused.")
@click.option("--max-upload-mb", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
              help="Largest photo accepted; bigger ones get 413.")
@click.option("--batching/--no-batching", default=None,
              help="Embed the photos of concurrent requests together (micro-batching) [default: on a GPU; "
                   "on the CPU one step per request is faster].")
@click.option("--max-batch", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="With --batching: photos per model step.")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0, max=100), default=2.0, show_default=True,
              help="With --batching: how long a step waits for photos of requests still decoding.")
@click.option("--model-threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime threads per model step [default: 1 without batching, all cores with it].")
@click.option("--search-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="FAISS threads (one query at a time gains nothing from more).")
@click.option("--refresh-seconds", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="How often to look for changes made by other processes (CLI add/update/remove).")
@query_model_option
@runtime_options
def serve(index_dir, host, port, token_file, max_upload_mb, batching, max_batch, batch_wait_ms, model_threads,
          search_threads, refresh_seconds, model, runtime, device, precision):
    """Serve an index over HTTP: a JSON API (/v1, OpenAPI at /docs) and a web page at /.

    Loads and warms the model once, picks up changes other processes make to the index without a
    restart, and stops gracefully on SIGTERM or Ctrl-C.

    \b
    Example:
        prodsearch serve --index shop/idx --port 8000
        curl -F image=@photo.jpg http://127.0.0.1:8000/v1/search
    """
    from prodsearch.serve.server import bind, open_service, serve as run
    from prodsearch.serve.service import ServeSettings

    settings = ServeSettings(
        Path(index_dir), token=read_token(token_file), max_upload_mb=max_upload_mb, batching=batching,
        max_batch=max_batch, batch_wait_ms=batch_wait_ms, model_threads=model_threads, refresh_seconds=refresh_seconds,
        search_threads=search_threads, decode_threads=min(4, os.cpu_count() or 1), model=model, runtime=runtime,
        device=device, precision=precision)
    with bind(host, port) as sock:  # a port in use fails here, before the model loads
        service = open_service(settings)
        port = sock.getsockname()[1]  # --port 0: the one the system chose
        address = f"[{host}]" if ":" in host else host
        click.echo(f"Serving {index_dir} on http://{address}:{port} (API docs: /docs; writes "
                   f"{'need the token' if settings.token else 'disabled: no token'})", err=True)
        run(service, sock)


def read_token(token_file: str | None) -> str | None:
    """The writers' token: the file's first line, else ``$PRODSEARCH_TOKEN``; None when neither is set.
    Refused at start unless it is at least 16 characters of printable ASCII without spaces: what a
    bearer token in an HTTP header can carry (any other would start a server that refuses every write)."""
    if token_file:
        how = f"write one there, e.g. {NEW_TOKEN} > {token_file}"
        try:
            text = Path(token_file).read_bytes().decode("utf-8-sig")
        except OSError as exc:
            raise ProdsearchError(f"cannot read the token file {token_file}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ProdsearchError(f"{token_file} is not UTF-8 text (byte {exc.start + 1} is not); {how}") from None
        lines = text.strip().splitlines()
        return _checked(lines[0].strip() if lines else "", token_file, how)
    token = os.environ.get(TOKEN_ENV, "").strip()
    return _checked(token, TOKEN_ENV, f"set it to one, e.g. export {TOKEN_ENV}=$({NEW_TOKEN})") if token else None


NEW_TOKEN = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _checked(token: str, source: str, how: str) -> str:
    if len(token) < 16:
        raise ProdsearchError(f"{source} holds no token of at least 16 characters; {how}")
    bad = next((i for i, c in enumerate(token, 1) if not "!" <= c <= "~"), None)
    if bad is not None:
        raise ProdsearchError(f"the token in {source} has a character an HTTP header cannot carry (character "
                              f"{bad}: a space, or not printable ASCII); {how}")
    return token
