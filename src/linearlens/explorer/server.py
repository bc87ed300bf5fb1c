"""The explorer's web server: the standard library's ``ThreadingHTTPServer`` over :func:`.api.handle`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from .api import MAX_UPLOAD, handle
from .session import Explorer

__all__ = ["make_server", "start_background"]


def make_server(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """A server for ``explorer`` bound to ``host:port`` (port 0: a free port; see ``server.server_port``)."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "linearlens-explorer"

        def _answer(self, method: str, body: bytes = b"") -> None:
            url = urlsplit(self.path)
            response = handle(explorer, method, url.path, url.query, body)
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(response.body)

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self._answer("GET")

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD:
                self.send_error(413, "upload too large")
                return
            self._answer("POST", self.rfile.read(length))

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep the console quiet
            pass

    return ThreadingHTTPServer((host, port), Handler)


def start_background(explorer: Explorer, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """Start a server in a daemon thread (tests, notebooks); stop it with ``server.shutdown()``."""
    server = make_server(explorer, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
