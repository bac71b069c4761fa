"""The HTTP server in front of the REST API (http_server.cc): paths outside /v1/ get an empty 404."""

from __future__ import annotations

import logging
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.tfserving_emulator.rest.api import V1_RE, RestApi

log = logging.getLogger("tfserving_emulator")


class HttpServer(ThreadingHTTPServer):
    request_queue_size = 512  # the listen backlog (the default 5 drops a gateway's bursts of connections)
    daemon_threads = True


class HttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tfserving-emulator"
    api: RestApi

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        path = urllib.parse.urlsplit(self.path).path
        if not V1_RE.fullmatch(path):
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        status, output = self.api.process(self.command, path, body)
        payload = output.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle
