"""A stand-in tracking upstream for the lab edges: it answers every request with what reached it.

The edge's traffic contract sends each click either to HTTPS or, as plain HTTP, to the tracking upstream;
this server stands in for the provider's click tracker so tests can see that a link reached it, for which
host and path, over which scheme (``X-Forwarded-Proto``). Python 3 standard library only, so it runs on
a bare test host::

    python3 echo_upstream.py [--listen 127.0.0.1] [--port 8080]

Every answer is ``200``, ``application/json``: ``{"upstream": "linkcert-echo", "method", "host", "path",
"forwarded_proto", "forwarded_for"}``.
"""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARK = "linkcert-echo"


class Echo(BaseHTTPRequestHandler):
    server_version = "linkcert-echo"

    def _answer(self) -> None:
        body = json.dumps({"upstream": MARK, "method": self.command, "host": self.headers.get("Host"), "path": self.path,
                           "forwarded_proto": self.headers.get("X-Forwarded-Proto"),
                           "forwarded_for": self.headers.get("X-Forwarded-For")}, sort_keys=True).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = _answer  # noqa: N815 (http.server's naming)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        return


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    ThreadingHTTPServer((args.listen, args.port), Echo).serve_forever()


if __name__ == "__main__":
    main()
