"""Running the sandbox: in a background thread (tests, `apikey-mcp --sandbox`) or in the foreground (CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

import uvicorn
from starlette.types import ASGIApp

from .app import Sandbox


def _bind(host: str, port: int) -> socket.socket:
    """Bound and listening at once (connections wait in the backlog until uvicorn serves): a port that is only
    bound, with SO_REUSEADDR, is not yet ours; another socket may bind it too, and whichever listens first
    keeps it, the other failing with EADDRINUSE."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    return sock


def _url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}"


class PromptServer(uvicorn.Server):
    """uvicorn's server, stopped from another thread at once: `stop_soon()` wakes the main loop, which otherwise
    looks at `should_exit` only every 0.1 s (a test suite stopping hundreds of servers waits that long each)."""

    _loop: asyncio.AbstractEventLoop | None = None
    _wake: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            try:
                await asyncio.wait_for(self._wake.wait(), 0.1)
            except TimeoutError:
                pass

    def stop_soon(self) -> None:
        """Ask the server to exit, from any thread; it begins its graceful shutdown at once."""
        self.should_exit = True
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop closed meanwhile: it has stopped anyway
                pass


class BackgroundServer:
    """An ASGI app served by uvicorn on a loopback port (0: any free one) in a thread of its own."""

    def __init__(
        self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        self._socket = sock or _bind(host, port)
        self.url = _url_of(self._socket)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self._server = PromptServer(config)
        self._thread = threading.Thread(target=self._run, name=f"uvicorn {self.url}", daemon=True)
        self._startup_error: BaseException | None = None

    @classmethod
    def for_url(cls, make_app: Callable[[str], ASGIApp], host: str = "127.0.0.1") -> Self:
        """Serve an app that needs to know its own URL (e.g. to give it as a callback address)."""
        sock = _bind(host, 0)
        try:
            return cls(make_app(_url_of(sock)), sock=sock)
        except BaseException:  # an app that cannot be made (a ConfigError) leaves no open socket behind
            sock.close()
            raise

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._socket]))
        except BaseException as exc:  # uvicorn ends a failed startup with SystemExit(3)
            if self._server.started:
                raise  # a failure once serving is the test's to see, as a thread exception
            self._startup_error = exc  # start() raises it, in the test that started the server

    def start(self, seconds: float = 60.0) -> Self:
        """Serve, and return once the app has started. A server that fails or does not start within `seconds`
        (a deadline only a broken run reaches) is stopped and its socket closed before the error is raised, so
        nothing of it is left to fail in a later phase or test."""
        self._thread.start()
        deadline = time.monotonic() + seconds
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                alive = self._thread.is_alive()
                with contextlib.suppress(RuntimeError):  # one that does not stop either: the start is the error
                    self.stop()
                what = f"did not start within {seconds:g} s" if alive else "stopped while starting"
                raise RuntimeError(f"the server at {self.url} {what}") from self._startup_error
            time.sleep(0.005)
        return self

    def stop(self, seconds: float = 10.0) -> None:
        """Stop at once (open connections are let finish for up to `seconds`, then cut) and close the socket."""
        self._server.stop_soon()
        self._thread.join(timeout=seconds)
        if self._thread.is_alive():
            self._server.force_exit = True  # stop waiting for connections and tasks
            self._server.stop_soon()
            self._thread.join(timeout=seconds)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"the server at {self.url} did not stop within {2 * seconds:g} s")

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


class SandboxServer(BackgroundServer):
    """The sandbox gateway on a real loopback port: `with SandboxServer(Sandbox(["sk-test"])) as s: s.url`."""

    def __init__(self, sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(sandbox.app, host, port)
        self.sandbox = sandbox
