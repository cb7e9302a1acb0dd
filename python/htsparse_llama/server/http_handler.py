"""The HTTP side of `serve`: routes, the API key, the body limit, JSON
responses and server-sent events, on the standard library's
ThreadingHTTPServer (no web framework to install).

    GET  /health                 {"status": "ok"}              (no key needed)
    GET  /v1/models              the one model
    GET  /v1/models/{id}
    POST /v1/chat/completions    JSON, or SSE with "stream": true

The /v1 prefix may be left out. Every error is an OpenAI-style JSON body
{"error": {"message", "type", "param", "code"}} with a 4xx/5xx status, and a
connection whose body was not read is closed after the answer so that the
next request on it is not read from the middle of the old body.
"""

from __future__ import annotations

import hmac
import json
import socket
import sys
import threading
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Optional, Sequence, Set, Tuple
from urllib.parse import unquote, urlsplit

from .engine import Engine, Generation, describe_error
from .request import parse_chat_request
from .types import ApiError

# An oversized body up to this many times the limit is read and dropped, so that
# the client (which is still sending) reads the 413 instead of a reset connection.
DRAIN_FACTOR = 4
_BLOCK = 1 << 20


class Server(ThreadingHTTPServer):
    """A thread per connection. The threads are daemons, but stopping does
    not leave them to interpreter shutdown: app.serve stops the engine (the
    running answer ends between tokens), ends the open connections
    (close_connections) and waits for them (wait_connections)."""

    daemon_threads = True

    def __init__(
        self, address: Tuple[str, int], engine: Engine, api_key: Optional[str] = None, log_requests: bool = True
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.engine, self.api_key, self.log_requests = engine, api_key, log_requests
        self._open: Set[socket.socket] = set()  # connections being served
        self._open_changed = threading.Condition()
        super().__init__(address, Handler)

    def process_request(self, request, client_address) -> None:
        with self._open_changed:  # before its thread starts, so that close_connections sees it
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._open_changed:
                self._open.discard(request)
                self._open_changed.notify_all()

    def close_connections(self) -> None:
        """Ends the reading side of every open connection: an idle keep-alive
        connection (its thread waiting for the next request) closes at once;
        one being answered still gets the end of its answer, then closes."""
        with self._open_changed:
            connections = list(self._open)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RD)
            except OSError:  # already closed by its client
                pass

    def wait_connections(self, timeout: float) -> bool:
        """Waits until every connection is closed; False if some are still open after `timeout` s."""
        with self._open_changed:
            return self._open_changed.wait_for(lambda: not self._open, timeout)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for JSON; SSE answers close the connection when done
    server_version = "htsparse-llama"
    sys_version = ""
    timeout = 300  # seconds a connection may sit idle (or stall while sending its body)
    server: Server

    # -- dispatch ----------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._handle()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    def _handle(self) -> None:
        self._body_read = self.headers.get("Content-Length") in (None, "0") and not self.headers.get(
            "Transfer-Encoding"
        )
        self._streaming = False
        try:
            self._route(urlsplit(self.path).path)
        except ApiError as exc:
            self._error(exc)
        except (BrokenPipeError, ConnectionResetError):  # the client went away
            self.close_connection = True
        except Exception as exc:  # a bug or a runtime failure: a 500, and the server keeps serving
            traceback.print_exc(file=sys.stderr)
            self._error(describe_error(exc))

    def _route(self, path: str) -> None:
        path = path.rstrip("/") or "/"
        if path.startswith("/v1/") or path == "/v1":
            path = path[3:] or "/"
        engine = self.server.engine
        if path == "/health":
            self._allow("GET")
            return self._json(200, {"status": "ok"})
        if path == "/models":
            self._authorize()
            self._allow("GET")
            return self._json(200, {"object": "list", "data": [engine.model_card()]})
        if path.startswith("/models/"):
            self._authorize()
            self._allow("GET")
            name = unquote(path[len("/models/") :])
            if name != engine.model_id:
                raise ApiError(
                    404,
                    f"The model {json.dumps(name)} does not exist; this server runs {engine.model_id!r}",
                    code="model_not_found",
                )
            return self._json(200, engine.model_card())
        if path == "/chat/completions":
            self._authorize()
            self._allow("POST")
            return self._chat(engine)
        raise ApiError(
            404,
            f"no such route: {self.command} {self.path[:200]}; this server serves POST "
            f"/v1/chat/completions, GET /v1/models and GET /health",
            code="not_found",
        )

    def _allow(self, method: str) -> None:
        if self.command != method:
            raise ApiError(405, f"{self.command} is not allowed here; use {method}", code="method_not_allowed")

    def _authorize(self) -> None:
        key = self.server.api_key
        if not key:
            return
        given = self.headers.get("Authorization", "")
        token = given[7:].strip() if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(
                401, "Incorrect or missing API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key"
            )

    # -- chat --------------------------------------------------------------------------------
    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "identity").lower() != "identity":
            raise ApiError(
                411, "send the body with a Content-Length header (chunked bodies are not taken)", code="length_required"
            )
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "a Content-Length header is required", code="length_required")
        try:
            n = int(length)
            if n < 0:
                raise ValueError
        except ValueError:
            raise ApiError(400, f"bad Content-Length {length[:40]!r}", code="invalid_request") from None
        if n > limit:
            if n <= limit * DRAIN_FACTOR:
                self._drain(n)
            raise ApiError(
                413,
                f"the request body is {n / 2**20:.1f} MiB; this server takes at most "
                f"{limit / 2**20:.1f} MiB (--max-body-mb)",
                code="request_too_large",
            )
        body = self.rfile.read(n)
        if len(body) < n:
            raise ApiError(400, "the request body ended before its Content-Length", code="invalid_request")
        self._body_read = True
        return body

    def _drain(self, n: int) -> None:
        while n > 0:
            got = self.rfile.read(min(n, _BLOCK))
            if not got:
                return
            n -= len(got)
        self._body_read = True

    def _chat(self, engine: Engine) -> None:
        body = self._read_body(engine.limits.max_body_bytes)
        req = parse_chat_request(body, engine.limits, [engine.model_id])
        try:
            with engine.run(req) as gen:
                if req.stream:
                    self._stream(gen)
                else:
                    self._json(200, gen.response())
                if self.server.log_requests:
                    self.log_message("%s: %s", gen.id, gen.session.stats().line())
        finally:
            req.close()

    def _stream(self, gen: Generation) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Accel-Buffering", "no")  # proxies: pass events on at once
        self.send_header("Connection", "close")  # the stream ends when the connection does
        self.end_headers()
        self.close_connection = True
        self._streaming = True
        for chunk in gen.chunks():
            self._event(chunk)
        self.wfile.write(b"data: [DONE]\n\n")

    def _event(self, obj: Dict[str, Any]) -> None:
        self.wfile.write(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
        self.wfile.flush()

    # -- responses ---------------------------------------------------------------------------
    def _json(
        self, status: int, obj: Dict[str, Any], close: bool = False, headers: Sequence[Tuple[str, str]] = ()
    ) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if close or not getattr(self, "_body_read", True):  # an unread body would be read as the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, exc: ApiError) -> None:
        if self._streaming:  # headers are gone: the error is the stream's last event
            try:
                self._event(exc.body())
            except OSError:
                pass
            return
        headers = []
        if exc.status == 401:
            headers.append(("WWW-Authenticate", "Bearer"))
        if exc.status == 503:
            headers.append(("Retry-After", "1"))
        try:
            self._json(exc.status, exc.body(), close=not self._body_read, headers=headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code: int, message: Optional[str] = None, explain: Optional[str] = None) -> None:
        """http.server's own errors (a malformed request line, an unknown
        method) in the same JSON shape as ours."""
        self.log_error("code %d, message %s", code, message)
        short = self.responses.get(code, ("error",))[0]
        self._json(code, ApiError(code, message or short, code="invalid_request").body(), close=True)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if self.server.log_requests:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")
