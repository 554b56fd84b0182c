"""A preview of an image result, read through `resources/read` as a `data:` URI: the path that needs no
declared origin, for hosts that ignore an app's CSP domains. Video and audio play from their link (the app's
declared origins); media bytes never go into a tool result.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from .bound_service import current_service
from .gateway import GatewayError
from .gateway.models import TaskStatus
from .resource_errors import resource_errors

PREVIEW_URI = "apikey://tasks/{task_id}/outputs/{n}/preview"
MAX_PREVIEW_BYTES = 512 * 1024  # an image over this is not inlined: the app shows its link instead
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


def image_type(data: bytes) -> str | None:
    """The image type the bytes themselves say (never the declared one: a data: URI must not lie)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _SIGNATURES.items() if data.startswith(magic)), None)


def register_previews(server: MCPServer) -> None:
    @server.resource(PREVIEW_URI, name="output-preview", title="Result preview", mime_type="text/uri-list")
    @resource_errors("read task '{task_id}'", missing="No task '{task_id}' for this key.")
    async def preview(task_id: str, n: str) -> str:
        """An image result of a task as a data: URI (at most 512 KiB), for the media app. Only the principal
        that created the task can read it."""
        svc = current_service()
        if not n.isdigit():
            raise ResourceNotFoundError(f"Output '{n[:20]}' is not a number: outputs count from 0.")
        result = await svc.poll(task_id, 0)
        index = int(n)
        if result.status != TaskStatus.SUCCEEDED or index >= len(result.outputs):
            raise ResourceNotFoundError(f"Task '{task_id}' has no output {index} ({result.status}).")
        output = result.outputs[index]
        if not (output.mime_type or "image/").startswith("image/"):
            raise ResourceError("Only images have a preview; video and audio play from their link.")
        with tempfile.TemporaryDirectory(prefix="apikey-preview-") as folder:
            dest = Path(folder) / "preview"
            try:  # the download's failure has its own advice: the link still works
                await svc.client.download(output.url, dest, max_bytes=MAX_PREVIEW_BYTES)
            except GatewayError as exc:
                raise ResourceError(f"No preview of output {index}: {exc}. Open its link instead.") from None
            data = dest.read_bytes()
        mime = image_type(data)
        if mime is None:
            raise ResourceError(f"Output {index} is not an image this preview can show; open its link.")
        return f"data:{mime};base64,{base64.b64encode(data).decode()}"


__all__ = ["MAX_PREVIEW_BYTES", "PREVIEW_URI", "image_type", "register_previews"]
