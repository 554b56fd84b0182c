"""Where result downloads may go, and how much the output directory may hold.

- `TargetGuard`: a result link (and every redirect hop) must name a public address. Loopback, private,
  link-local, shared, reserved and multicast targets are refused unless the operator allows them
  (`--allow-private-downloads`), so a gateway answer cannot make the server fetch from its own network (a
  cloud's metadata service at 169.254.169.254, an admin port on localhost). Links on the gateway's own
  origin are always allowed: the sandbox serves its results there, on loopback. The host is resolved and
  every address it has is checked; a name that changes its answer between this check and the connection
  (DNS rebinding) is not caught here: run the server where such names cannot reach anything of value, or
  keep the allowance off and put an egress proxy in front.
- `DiskQuota`: the files in the output directory together stay under `max_output_dir_bytes`; a save that
  would pass it stops at the quota, with the reason in the task's result. One quota per directory in the
  process, whichever principal's save writes there; the directory is measured once, then counted as files are
  written, and measured again when it looks full (an operator may have deleted files).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import anyio

from .gateway import GatewayError

_DEFAULT_PORTS = {"http": 80, "https": 443}


class TargetRefusedError(GatewayError):
    """A result link to where the server must not fetch from (or past the output directory's quota)."""


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


class TargetGuard:
    def __init__(self, gateway_url: str, *, allow_private: bool = False) -> None:
        self.gateway = _origin(gateway_url)
        self.allow_private = allow_private

    async def __call__(self, url: str) -> None:
        """Return if `url` may be fetched; else raise TargetRefusedError saying why."""
        scheme, host, port = _origin(url)
        if scheme not in _DEFAULT_PORTS or not host:
            raise TargetRefusedError(f"not an http(s) link: {url[:100]}")
        if (scheme, host, port) == self.gateway or self.allow_private:
            return
        try:
            found = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:
            raise TargetRefusedError(f"the result host {host} cannot be resolved ({exc})") from None
        for *_, address in found:
            ip = ipaddress.ip_address(str(address[0]).split("%")[0])
            if not ip.is_global or ip.is_multicast:
                raise TargetRefusedError(
                    f"refused to fetch from {host} ({ip}): a loopback, private or link-local address. The operator "
                    "allows such result hosts with --allow-private-downloads (APIKEY_ALLOW_PRIVATE_DOWNLOADS=true)"
                )


def _size_of(directory: Path) -> int:
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except FileNotFoundError:
        return 0
    return total


class DiskQuota:
    _shared: ClassVar[dict[tuple[Path, int], DiskQuota]] = {}  # one per directory and limit: bounded by config

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory, self.limit = directory, limit
        self.used: int | None = None

    @classmethod
    def of(cls, directory: Path, limit: int) -> DiskQuota:
        """The process's quota for `directory`, shared by every principal's downloads there."""
        key = (directory.resolve(), limit)
        return cls._shared.setdefault(key, cls(directory, limit))

    async def left(self) -> int:
        """Bytes the directory may still take (measured again when it looks full)."""
        if self.used is None or self.used >= self.limit:
            self.used = await anyio.to_thread.run_sync(_size_of, self.directory)
        return max(self.limit - self.used, 0)

    def add(self, size: int) -> None:
        """Count `size` more bytes written; past the quota, the download writing them stops."""
        self.used = (self.used or 0) + size
        if self.used > self.limit:
            raise TargetRefusedError(f"the output directory reached its {self.limit}-byte quota")

    def give_back(self, size: int) -> None:
        """A download that failed removed its partial file."""
        self.used = max((self.used or 0) - size, 0)
