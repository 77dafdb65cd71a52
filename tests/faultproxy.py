"""An HTTP proxy that injects S3 faults (503 SlowDown, dropped connections) on a schedule.

Run it in its own process (`FaultProxy.spawn`) when delta-rs talks through it: delta-rs calls can
hold the GIL while they wait for the network, so a proxy thread in the same process would stall.
`GET /__faultproxy_stats` returns the counts of injected faults as JSON; `GET /__faultproxy_outage/on`
starts an outage (every request answered 503 ServiceUnavailable) and `.../off` ends it.
"""

from __future__ import annotations

import http.client
import itertools
import json
import subprocess
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unable to handle request.</Message></Error>"
)
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class FaultProxy:
    """Forwards to `upstream`; request n gets a 503 when n % slow_every == 1 and a dropped
    connection when n % drop_every == 2 (0 disables either)."""

    def __init__(self, upstream: str, slow_every: int = 4, drop_every: int = 9) -> None:
        self.upstream = urlparse(upstream)
        self.slow_every, self.drop_every = slow_every, drop_every
        self.counter = itertools.count(1)
        self.injected = {"slow_down": 0, "dropped": 0, "forwarded": 0, "outage": 0}
        self.enabled = True
        self.outage = False
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _stats(self) -> None:
                with proxy.lock:
                    data = json.dumps(proxy.injected).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _error(self, body: bytes) -> None:
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                if self.path == "/__faultproxy_stats":
                    return self._stats()
                if self.path.startswith("/__faultproxy_outage/"):
                    proxy.outage = self.path.endswith("/on")
                    return self._stats()
                if proxy.outage:
                    with proxy.lock:
                        proxy.injected["outage"] += 1
                    return self._error(UNAVAILABLE)
                n = next(proxy.counter)
                if proxy.enabled and proxy.drop_every and n % proxy.drop_every == 2:
                    with proxy.lock:
                        proxy.injected["dropped"] += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if proxy.enabled and proxy.slow_every and n % proxy.slow_every == 1:
                    with proxy.lock:
                        proxy.injected["slow_down"] += 1
                    return self._error(SLOW_DOWN)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                # a HEAD response carries the object's length, not the (empty) body's
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                with proxy.lock:
                    proxy.injected["forwarded"] += 1

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class SpawnedFaultProxy:
    """A FaultProxy in a child process (see the module docstring)."""

    def __init__(self, upstream: str, slow_every: int = 4, drop_every: int = 9) -> None:
        self.args = [sys.executable, __file__, upstream, str(slow_every), str(drop_every)]
        self.proc: subprocess.Popen | None = None
        self.endpoint = ""

    def __enter__(self) -> SpawnedFaultProxy:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, text=True)
        self.endpoint = self.proc.stdout.readline().strip()
        return self

    @property
    def injected(self) -> dict[str, int]:
        with urllib.request.urlopen(self.endpoint + "/__faultproxy_stats", timeout=10) as r:
            return json.loads(r.read())

    def set_outage(self, on: bool) -> None:
        """Every request answered 503 from now on (an S3 outage), or forwarded again."""
        url = f"{self.endpoint}/__faultproxy_outage/{'on' if on else 'off'}"
        with urllib.request.urlopen(url, timeout=10):
            pass

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(timeout=10)


if __name__ == "__main__":
    proxy = FaultProxy(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(proxy.endpoint, flush=True)
    proxy.server.serve_forever()
