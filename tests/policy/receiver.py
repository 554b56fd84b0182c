"""A real HTTP receiver for alert webhooks, on a loopback port in a thread: it records what it was sent."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apikey_mcp.alerts import SIGNATURE_HEADER, verify_signature

SECRET = "alert-secret-7f3a9c1e5b2d"


@dataclass
class Receiver:
    url: str
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    failures: int = 0  # answer the first N posts with 503 (the sender must retry)
    gate: threading.Event = field(default_factory=threading.Event)  # posts wait here until it is set
    arrived: int = 0  # posts received, answered or not

    def alerts(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.posts]

    def all_signed(self, secret: str = SECRET) -> bool:
        return all(
            verify_signature(secret, headers.get(SIGNATURE_HEADER.lower(), ""), body) for headers, body in self.posts
        )


@contextmanager
def receiving(failures: int = 0, *, held: bool = False) -> Iterator[Receiver]:
    """A receiver on a loopback port; `held`: each post waits, unanswered, until `gate` is set."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            with lock:
                receiver.arrived += 1
            receiver.gate.wait(timeout=30)
            with lock:
                refuse = receiver.failures > 0
                if refuse:
                    receiver.failures -= 1
                else:
                    receiver.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(503 if refuse else 204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(f"http://127.0.0.1:{server.server_address[1]}/alerts", failures=failures)
    if not held:
        receiver.gate.set()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
