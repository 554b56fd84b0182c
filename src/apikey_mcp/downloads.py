"""Saving a finished task's results to the output directory: streamed, size-capped, with safe file names."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import anyio

from .gateway import GatewayClient
from .gateway.models import TaskOutput

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_KNOWN = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "video/mp4": ".mp4",
          "audio/wav": ".wav", "audio/mpeg": ".mp3"}  # fmt: skip


def file_name(task_id: str, index: int, output: TaskOutput) -> str:
    """`<task id>-<n><ext>`: only letters, digits, '-' and '_' from the id, so no path can be smuggled in."""
    stem = _UNSAFE.sub("_", task_id).strip("_")[:80] or "task"
    suffix = _KNOWN.get(output.mime_type or "") or mimetypes.guess_extension(output.mime_type or "") or ""
    if not suffix:
        url_suffix = PurePosixPath(urlsplit(output.url or "").path).suffix
        suffix = url_suffix if re.fullmatch(r"\.[A-Za-z0-9]{1,5}", url_suffix) else ".bin"
    return f"{stem}-{index}{suffix}"


async def save_outputs(
    client: GatewayClient, task_id: str, outputs: list[TaskOutput], directory: Path, *, max_bytes: int
) -> list[Path]:
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    paths = []
    for index, output in enumerate(o for o in outputs if o.url):
        dest = directory / file_name(task_id, index, output)
        await client.download(output.url or "", dest, max_bytes=max_bytes)
        paths.append(dest)
    return paths
