"""MCP Apps (`io.modelcontextprotocol/ui`): the media viewer and the budget gauge a host renders beside a result.

The HTML is built from `apps/` (esbuild, one self-contained file each) into `ui/` and shipped as package data.
The SDK's `Apps.tool` registers a function as a new tool; ours are built already (strict arguments, lean
schemas: see strict.py), so `ToolApps.bind` stamps the same `_meta.ui` on those instead of registering them
twice. Each app's CSP is declared once, at start: the gateway's origin (the sandbox's when it runs) and the
configured media origins, so result links load in the host's iframe.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files

from mcp.server.apps import Apps, ResourceCsp
from mcp.server.extension import ToolBinding
from mcp.server.mcpserver.tools import Tool

from .config import Settings, origin

MEDIA_APP = "ui://apikey/media.html"
BUDGET_APP = "ui://apikey/budget.html"
BINDINGS = {
    "generate_image": MEDIA_APP,
    "generate_video": MEDIA_APP,
    "generate_music": MEDIA_APP,
    "poll_task": MEDIA_APP,
    "budget_status": BUDGET_APP,
}


class ToolApps(Apps):
    """`Apps` whose bound tools are the server's own `Tool` objects rather than functions to register."""

    def __init__(self) -> None:
        super().__init__()
        self._bound: list[tuple[Tool, str]] = []

    def bind(self, tool: Tool, resource_uri: str) -> None:
        """Name the app in the tool's `_meta.ui.resourceUri` (the visibility stays the default: model and app)."""
        if not resource_uri.startswith("ui://"):
            raise ValueError(f"MCP Apps URIs must use the ui:// scheme, got {resource_uri!r}")
        tool.meta = {**(tool.meta or {}), "ui": {"resourceUri": resource_uri}}
        self._bound.append((tool, resource_uri))

    def tools(self) -> Sequence[ToolBinding]:
        """None to register; a bound tool whose app is missing fails here, when the server is built."""
        registered = {binding.resource.uri for binding in self.resources()}
        for tool, uri in self._bound:
            if uri not in registered:
                raise ValueError(f"tool {tool.name!r} binds {uri!r}, which is not registered")
        return super().tools()


@cache
def app_html(name: str) -> str:
    """The built app (`ui/<name>.html`, package data)."""
    return files(__package__).joinpath("ui", f"{name}.html").read_text(encoding="utf-8")


def media_domains(settings: Settings) -> list[str]:
    """Where result files load from: the gateway's origin first, then `--media-origin`, without repeats (a
    base URL that is no http(s) URL fails where the gateway is called, with its own error, not here)."""
    try:
        gateway = [origin(settings.base_url)]
    except ValueError:
        gateway = []
    return list(dict.fromkeys([*gateway, *settings.media_origins]))


def build_apps(settings: Settings, tools: Sequence[Tool]) -> ToolApps:
    """The apps, their CSP, and the tools bound to them."""
    apps = ToolApps()
    apps.add_html_resource(
        MEDIA_APP,
        app_html("media"),
        name="media-app",
        title="Media result",
        description="Shows an image, video or music task as it runs and its outputs, cost and budget after.",
        csp=ResourceCsp(resource_domains=media_domains(settings)),
        prefers_border=True,
    )
    apps.add_html_resource(
        BUDGET_APP,
        app_html("budget"),
        name="budget-app",
        title="Session budget",
        description="A gauge of the credits spent, reserved and remaining, and the open tasks.",
        csp=ResourceCsp(),
        prefers_border=True,
    )
    for tool in tools:
        if tool.name in BINDINGS:
            apps.bind(tool, BINDINGS[tool.name])
    return apps


__all__ = ["BUDGET_APP", "MEDIA_APP", "ToolApps", "build_apps", "media_domains"]
