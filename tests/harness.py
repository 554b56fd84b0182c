"""The one way the tests and `bench/` run the project's servers as processes of their own.

- `clean_env`: this process's environment without any `APIKEY_*` setting, plus the settings given, so a server
  sees only what its starter sets (a developer's own `APIKEY_API_KEY` never leaks into a test or a figure);
- `private_data_home`: a bench's servers keep their data in a temporary folder, never the user's;
- `free_port`: a loopback port nobody listens on right now;
- `ServerProcess`: one server with its output in a log file, readiness (a path answering with a status, before a
  deadline; failing with the log's tail if the process exits first), and a stop by signal with a kill fallback;
- `Processes`: every server a test or bench starts (the sandbox, hosted servers, replicas, nginx in front of
  them, anything else), all stopped at the end; on an error their logs' tails are shown, since that is usually
  where the cause is (`start_replica` and `start_nginx` serve where no container is at hand);
- `postgres_schema`: a fresh schema on a PostgreSQL server, as the ledger of one set of replicas;
- `Percentiles`: p50/p90/p99 of latency samples.

The bench scripts run as `python bench/x.py`: they put the repository root on `sys.path` and import this module,
which therefore needs nothing from pytest or the rest of `tests/`.
"""

from __future__ import annotations

import atexit
import inspect
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import anyio
import httpx2

ROOT = Path(__file__).resolve().parents[1]
APIKEY_MCP = (sys.executable, "-m", "apikey_mcp")
TAIL_CHARS = 3000


class ProcessError(RuntimeError):
    """A server process exited, or did not get ready in time: the message ends with its log's tail."""


def clean_env(settings: Mapping[str, str] | None = None, /, **more: str) -> dict[str, str]:
    """This process's environment without `APIKEY_*`, plus `settings` and `more` (names as given)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("APIKEY_")}
    return env | dict(settings or {}) | more


def private_data_home() -> Path:
    """Point this process's `XDG_DATA_HOME`, and so every server's started with `clean_env`, at a fresh temporary
    folder removed at exit: a bench never writes into the user's real ledger (the test session has its own)."""
    folder = Path(tempfile.mkdtemp(prefix="apikey-bench-data-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["XDG_DATA_HOME"] = str(folder)
    return folder


def free_port() -> int:
    """A loopback port nobody uses right now (the server binds it a moment later), chosen below the kernel's
    ephemeral range: a port from that range may meanwhile be given to any socket bound to port 0 (an in-process
    server) or to any outgoing connection, and then the server that was to have it fails with EADDRINUSE."""
    low = _ephemeral_low()
    if low <= 11_000:  # no room below the range: any port the kernel gives
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randrange(10_000, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port between 10000 and {low}")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out by itself (Linux: ip_local_port_range; elsewhere IANA's 49152)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, seconds: float = 20, every: float = 0.005
) -> None:
    """The one way to wait for a state that another thread or process brings about (a sandbox counter, a server
    that is starting): re-check it every `every` seconds, and fail at the deadline (TimeoutError), which only a
    broken run reaches."""
    with anyio.fail_after(seconds):
        while True:
            met = condition()
            if await met if inspect.isawaitable(met) else met:
                return
            await anyio.sleep(every)


class ServerProcess:
    """A server started at once in a process of its own, stdout and stderr appended to `log`."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        *,
        port: int,
        log: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        """`env` None: `clean_env()`, never the caller's `APIKEY_*` settings."""
        self.name, self.port, self.log = name, port, log
        self.url = f"http://127.0.0.1:{port}"
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(clean_env() if env is None else env),
                cwd=cwd,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = TAIL_CHARS) -> str:
        try:
            return self.log.read_bytes()[-chars:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def _failure(self, what: str) -> ProcessError:
        return ProcessError(f"{self.name} ({self.url}) {what}; its log ends:\n{self.tail()}")

    async def wait_ready(
        self, path: str = "/healthz", status: int | None = 200, seconds: float = 60.0
    ) -> ServerProcess:
        """Until `path` answers with `status` (any answer, if None): a server listens only some time after its
        process starts. Fails at once if the process exits, and at the deadline."""
        async with httpx2.AsyncClient(timeout=2.0) as http:

            async def answered() -> bool:
                if not self.running:
                    raise self._failure(f"exited with code {self.process.returncode} before it was ready")
                try:
                    response = await http.get(f"{self.url}{path}")
                except httpx2.TransportError:
                    return False
                return status is None or response.status_code == status

            try:
                await wait_until(answered, seconds=seconds, every=0.05)
            except TimeoutError:
                raise self._failure(f"did not answer {path} with {status or 'anything'} within {seconds:g} s") from None
        return self

    def ready(self, path: str = "/healthz", status: int | None = 200, seconds: float = 60.0) -> ServerProcess:
        """`wait_ready`, blocking (for fixtures and scripts; from async code too, which it blocks meanwhile):
        run on an event loop of its own, in a thread of its own."""
        with ThreadPoolExecutor(1) as thread:
            return thread.submit(anyio.run, partial(self.wait_ready, path, status, seconds)).result()

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
        """Send `sig` (if still running), wait up to `grace` seconds, then kill; the exit code."""
        return stop(self.process, sig, grace)


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
    """Send `sig` to a process (if still running), wait up to `grace` seconds, then kill it; its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


def sandbox_command(
    port: int,
    keys: Sequence[str],
    *,
    credits: int | None = None,
    task_seconds: float | None = None,
    webhook_secret: str | None = None,
    hold: bool = False,
) -> list[str]:
    """`apikey-mcp sandbox` on `port` with a wallet per key."""
    command = [*APIKEY_MCP, "sandbox", "--port", str(port), *(arg for key in keys for arg in ("--key", key))]
    command += ["--credits", str(credits)] if credits is not None else []
    command += ["--task-seconds", str(task_seconds)] if task_seconds is not None else []
    command += ["--webhook-secret", webhook_secret] if webhook_secret is not None else []
    return command + (["--hold"] if hold else [])


def hosted_command(port: int, *args: str, transport: str = "streamable-http") -> list[str]:
    """`apikey-mcp --transport T --port P` and `args`: the hosted server (a replica on a PostgreSQL ledger)."""
    return [*APIKEY_MCP, "--transport", transport, "--port", str(port), *args]


def start_replica(settings: Mapping[str, str], folder: Path, *args: str, port: int | None = None) -> ServerProcess:
    """One replica of the hosted server (`settings` name the shared PostgreSQL ledger), run in `folder` with its
    log there as `replica-<port>.log`; `port`: the one a replica that was stopped had (a restart)."""
    port = port or free_port()
    command = hosted_command(port, *args)
    return ServerProcess(
        "replica", command, port=port, log=folder / f"replica-{port}.log", env=clean_env(settings), cwd=folder
    )


def nginx_config(port: int, upstreams: Sequence[int]) -> str:
    """The shipped deploy/nginx.conf with this run's ports in place of 8000 and 8001-8003."""
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    servers = re.findall(r"^\s*server 127\.0\.0\.1:800[1-9][^\n]*\n", text, flags=re.M)
    if len(servers) != 3:
        raise ValueError("deploy/nginx.conf must list three example upstream servers")
    text = text.replace(servers[0], "".join(servers[0].replace(":8001", f":{p}") for p in upstreams))
    for line in servers[1:]:
        text = text.replace(line, "")
    return text.replace("listen 127.0.0.1:8000;", f"listen 127.0.0.1:{port};")


def start_nginx(nginx: str, prefix: Path, port: int, upstreams: Sequence[int]) -> ServerProcess:
    """nginx in the foreground with `nginx_config` in `prefix` (its own folder), balancing over `upstreams`;
    stop it with SIGQUIT (a graceful stop)."""
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(nginx_config(port, upstreams))
    command = [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"]
    return ServerProcess("nginx", command, port=port, log=prefix / "output.log")


@contextmanager
def postgres_schema(base: str, prefix: str = "t") -> Iterator[str]:
    """A database URL (on the server at `base`) whose tables live in a fresh schema, dropped afterwards: the
    ledger of a set of replicas, or of one test."""
    import psycopg

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{base}{'&' if '?' in base else '?'}options={quote(f'-c search_path={schema}')}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


class Processes:
    """Every server started through it, stopped (the last first) when the block ends or at `close`.

    Logs go to `log_dir`, or a temporary folder removed at the end.
    """

    def __init__(self, log_dir: Path | None = None) -> None:
        self._own_dir = log_dir is None
        self.log_dir = Path(tempfile.mkdtemp(prefix="apikey-processes-")) if log_dir is None else log_dir
        self.running: list[ServerProcess] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        *,
        port: int,
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> ServerProcess:
        """Any server (`command` listens on `port`); the log is `log_dir/<name>-<port>.log` unless given."""
        log = log or self.log_dir / f"{re.sub(r'[^A-Za-z0-9.]+', '-', name).strip('-')}-{port}.log"
        server = ServerProcess(name, command, port=port, log=log, env=env, cwd=cwd)
        self.running.append(server)
        return server

    def sandbox(
        self,
        keys: Sequence[str],
        *,
        name: str = "sandbox",
        port: int | None = None,
        log: Path | None = None,
        credits: int | None = None,
        task_seconds: float | None = None,
        webhook_secret: str | None = None,
        hold: bool = False,
    ) -> ServerProcess:
        """`apikey-mcp sandbox` with a wallet per key, and no APIKEY_* setting in its environment."""
        port = port or free_port()
        command = sandbox_command(
            port, keys, credits=credits, task_seconds=task_seconds, webhook_secret=webhook_secret, hold=hold
        )
        return self.start(name, command, port=port, log=log)

    def hosted(
        self,
        settings: Mapping[str, str],
        *args: str,
        name: str = "apikey-mcp",
        port: int | None = None,
        transport: str = "streamable-http",
        source: Path | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> ServerProcess:
        """The hosted server with `settings` (APIKEY_* variables) and only them; `source`: run that copy of the
        package (a baseline's `src`) instead of the installed one."""
        port = port or free_port()
        env = clean_env(settings) | ({"PYTHONPATH": str(source)} if source is not None else {})
        command = hosted_command(port, *args, transport=transport)
        return self.start(name, command, port=port, env=env, log=log, cwd=cwd)

    def replica(self, settings: Mapping[str, str], *args: str, port: int | None = None) -> ServerProcess:
        """`start_replica` in `log_dir`, stopped with the rest."""
        server = start_replica(settings, self.log_dir, *args, port=port)
        self.running.append(server)
        return server

    def nginx(self, nginx: str, upstreams: Sequence[ServerProcess], port: int | None = None) -> ServerProcess:
        """`start_nginx` in `log_dir/nginx`, stopped with the rest (by `stop(server, signal.SIGQUIT)` before,
        for a graceful stop)."""
        server = start_nginx(nginx, self.log_dir / "nginx", port or free_port(), [u.port for u in upstreams])
        self.running.append(server)
        return server

    def stop(self, server: ServerProcess, sig: int = signal.SIGTERM, grace: float = 15.0) -> int:
        if server in self.running:
            self.running.remove(server)
        return server.stop(sig, grace)

    def show_tails(self) -> None:
        for server in self.running:
            print(f"--- {server.name} output (tail) ---\n{server.tail()}\n---", file=sys.stderr)

    def close(self, sig: int = signal.SIGTERM) -> None:
        """Stop every server still running, the last started first (SIGKILL: no graceful shutdown to wait for)."""
        try:
            for server in reversed(self.running[:]):
                self.stop(server, sig)
        finally:
            if self._own_dir:
                shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if error is not None and not isinstance(error, KeyboardInterrupt):
            self.show_tails()
        self.close()


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, samples_ms: Sequence[float]) -> Percentiles:
        """Inclusive quantiles: with a few hundred samples p99 stays inside the observed range."""
        cuts = statistics.quantiles(samples_ms, n=100, method="inclusive")
        return cls(p50=statistics.median(samples_ms), p90=cuts[89], p99=cuts[98])
