"""Saving a finished task's results to the output directory, in the background, bounded in size and time.

A save starts the first time a poll sees the task succeeded and runs on its own, so no result host (a slow
one, one that drips a byte at a time) can hold a `poll_task` call past its `wait_seconds`: the poll waits for
the save only until its own deadline, then reports how far it got. Each task's files together may not pass
`max_task_bytes` (each one `max_file_bytes`), and the whole save must end within `deadline` seconds. Every
link and redirect hop passes `guard` (no private targets) and the directory stays within `quota`
(download_guards.py).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import mimetypes
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import anyio

from .download_guards import DiskQuota, TargetGuard
from .gateway import GatewayClient, GatewayError
from .gateway.models import TaskOutput

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_KNOWN = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
}
Spawn = Callable[..., Any]  # start_soon of the task group the saves run in


def file_name(task_id: str, index: int, output: TaskOutput) -> str:
    """`<task id>-<digest>-<n><ext>`: only letters, digits, '-' and '_' from the id, so no path can be smuggled
    in; the digest of the whole id keeps two ids that differ only in what was cut or replaced apart."""
    stem = _UNSAFE.sub("_", task_id).strip("_")[:80] or "task"
    digest = hashlib.sha256(task_id.encode()).hexdigest()[:10]
    suffix = _KNOWN.get(output.mime_type or "") or mimetypes.guess_extension(output.mime_type or "") or ""
    if not suffix:
        url_suffix = PurePosixPath(urlsplit(output.url or "").path).suffix
        suffix = url_suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,5}", url_suffix) else ".bin"
    return f"{stem}-{digest}-{index}{suffix}"


def _shown(url: str | None) -> str:
    """A link as the agent may see it in an error: at most 200 characters."""
    text = url or "(no link)"
    return text if len(text) <= 200 else text[:197] + "..."


@dataclass
class Save:
    """One task's save: the path of each output once written, how many bytes so far, and what went wrong."""

    paths: list[str | None]
    written: int = 0
    errors: list[str] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)

    def summary(self) -> str | None:
        """What the agent should know: None once every file is saved."""
        saved = sum(p is not None for p in self.paths)
        if not self.done.is_set():
            return (
                f"Saving to the output directory is under way ({saved} of {len(self.paths)} files, "
                f"{self.written} bytes so far); poll again for the local paths. The links work now."
            )
        if not self.errors:
            return None
        return (
            f"Saved {saved} of {len(self.paths)} files to the output directory; the rest failed "
            f"({'; '.join(self.errors)}). The links above still work."
        )


class Downloads:
    def __init__(
        self,
        client: GatewayClient,
        directory: Path,
        *,
        max_file_bytes: int,
        max_task_bytes: int,
        deadline: float,
        guard: TargetGuard | None = None,
        quota: DiskQuota | None = None,
    ) -> None:
        self.client, self.guard, self.quota = client, guard, quota
        self.directory = directory
        self.max_file_bytes = max_file_bytes
        self.max_task_bytes = max_task_bytes
        self.deadline = deadline
        self._saves: dict[str, Save] = {}

    def get(self, task_id: str) -> Save | None:
        return self._saves.get(task_id)

    def start(self, task_id: str, outputs: list[TaskOutput], spawn: Spawn) -> Save:
        """The task's save, started in `spawn`'s group the first time it is asked for."""
        save = self._saves.get(task_id)
        if save is None:
            links = [o for o in outputs if o.url]
            save = self._saves[task_id] = Save(paths=[None] * len(links))
            spawn(self._run, task_id, links, save, name=f"save {task_id}")
        return save

    def forget(self, task_id: str) -> None:
        """The task left memory: so does what its save knew (its files stay on disk)."""
        self._saves.pop(task_id, None)

    def _wrote(self, save: Save, written: list[int], size: int) -> None:
        save.written += size
        written[0] += size
        if self.quota is not None:
            self.quota.add(size)  # past the quota: raises, and the download stops

    async def _run(self, task_id: str, outputs: list[TaskOutput], save: Save) -> None:
        try:
            with anyio.fail_after(self.deadline):
                try:
                    await anyio.Path(self.directory).mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    save.errors.append(f"cannot create the output directory: {exc.strerror or exc}")
                    return
                for index, output in enumerate(outputs):
                    left = self.max_task_bytes - save.written
                    if left <= 0:
                        save.errors.append(f"file {index}: over the {self.max_task_bytes}-byte cap for one task")
                        continue
                    if (quota := self.quota) is not None and await quota.left() <= 0:
                        save.errors.append(f"file {index}: the output directory is at its {quota.limit}-byte quota")
                        continue
                    dest = self.directory / file_name(task_id, index, output)
                    written = [0]
                    try:
                        await self.client.download(
                            output.url or "",
                            dest,
                            max_bytes=min(self.max_file_bytes, left),
                            progress=functools.partial(self._wrote, save, written),
                            allow=self.guard,
                        )
                    except (GatewayError, OSError) as exc:
                        if self.quota is not None:
                            self.quota.give_back(written[0])  # its partial file is gone
                        save.errors.append(f"file {index} ({_shown(output.url)}): {exc}")
                        continue
                    except Exception as exc:  # a link no client can follow (httpx2.InvalidURL): this file's failure
                        save.errors.append(
                            f"file {index} ({_shown(output.url)}): not a usable link ({type(exc).__name__}: {exc})"
                        )
                        continue
                    save.paths[index] = str(dest)
        except TimeoutError:
            save.errors.append(f"the save did not finish within {self.deadline:g} s")
        finally:
            if save.errors:
                log.warning("could not save every result of %s: %s", task_id, "; ".join(save.errors))
            save.done.set()
