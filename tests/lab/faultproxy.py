"""An HTTPS proxy in front of the lab's Pebble that misbehaves on request, for the fault suite.

The ACME client is pointed at the proxy's directory. The proxy forwards every request to Pebble with
the client's Host header, so Pebble writes the proxy's address into every URL it hands out (directory,
orders, nonces, Location) and checks the JWS ``url`` against it: the whole conversation goes through
the proxy without rewriting anything.

A fault is a rule: which requests (a regular expression on the path, optionally the method), how many
times (``times``; None is every time), and what to answer instead:

- ``status``: an HTTP status with an RFC 7807 problem document of ``problem`` type and a ``Retry-After``;
- ``drop``: close the connection without an answer (the CA "unreachable" mid-conversation).

Every request is logged as (method, path, status answered, injected or not).
"""

from __future__ import annotations

import http.client
import http.server
import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "te", "trailer"}


@dataclass
class Fault:
    path: str  # a regular expression searched in the request path, e.g. "/order-plz" (Pebble's newOrder)
    status: int = 503
    problem: str = "serverInternal"
    retry_after: Optional[str] = None
    times: Optional[int] = None
    method: Optional[str] = None
    drop: bool = False
    detail: Optional[str] = None  # the problem document's detail (default: says the proxy injected it)
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method and self.method != method:
            return False
        return re.search(self.path, path) is not None


@dataclass
class FaultProxy:
    upstream: Tuple[str, int]
    certfile: str
    keyfile: str
    cafile: str
    addr: str = "127.0.0.1"
    faults: List[Fault] = field(default_factory=list)
    log: List[Tuple[str, str, int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self.port = 0

    # ----------------------------------------------------------- control

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                proxy.handle(self)

            do_GET = do_POST = do_HEAD = _handle

        server = http.server.ThreadingHTTPServer((self.addr, 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certfile, self.keyfile)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, name="faultproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def directory(self) -> str:
        return "https://%s:%d/dir" % (self.addr, self.port)

    def set(self, *faults: Fault) -> None:
        with self._lock:
            self.faults = list(faults)
            self.log.clear()

    def clear(self) -> None:
        self.set()

    def injected(self) -> List[Tuple[str, str, int, bool]]:
        with self._lock:
            return [entry for entry in self.log if entry[3]]

    def forwarded(self) -> List[Tuple[str, str, int, bool]]:
        with self._lock:
            return [entry for entry in self.log if not entry[3]]

    # ----------------------------------------------------------- serving

    def _fault_for(self, method: str, path: str) -> Optional[Fault]:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.hits += 1
                    return fault
        return None

    def handle(self, request: http.server.BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else b""
        fault = self._fault_for(request.command, request.path)
        if fault is not None and fault.drop:
            with self._lock:
                self.log.append((request.command, request.path, 0, True))
            request.close_connection = True
            try:
                request.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if fault is not None:
            problem = json.dumps({"type": "urn:ietf:params:acme:error:" + fault.problem,
                                  "detail": fault.detail or "injected by the fault proxy (%d)" % fault.status,
                                  "status": fault.status}).encode()
            headers = [("Content-Type", "application/problem+json")]
            if fault.retry_after is not None:
                headers.append(("Retry-After", fault.retry_after))
            self._answer(request, fault.status, headers, problem, injected=True)
            return
        status, headers, answer = self._forward(request, body)
        self._answer(request, status, headers, answer, injected=False)

    def _forward(self, request: http.server.BaseHTTPRequestHandler, body: bytes) -> Tuple[int, List[Tuple[str, str]], bytes]:
        context = ssl.create_default_context(cafile=self.cafile)
        conn = http.client.HTTPSConnection(self.upstream[0], self.upstream[1], context=context, timeout=60)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
            conn.request(request.command, request.path, body=body or None, headers=headers)
            response = conn.getresponse()
            data = response.read()
            return response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP], data
        finally:
            conn.close()

    def _answer(self, request: http.server.BaseHTTPRequestHandler, status: int, headers: List[Tuple[str, str]], body: bytes,
                injected: bool) -> None:
        with self._lock:
            self.log.append((request.command, request.path, status, injected))
        request.send_response(status)
        for key, value in headers:
            request.send_header(key, value)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        if request.command != "HEAD":
            request.wfile.write(body)
