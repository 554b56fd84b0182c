"""The architecture ARCHITECTURE.md describes, kept true: every module named there, small rooms, public seams only,
and four roots for every error we raise."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "apikey_mcp"
MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 80
ERROR_ROOTS = {"AgentError", "ConfigError", "GatewayError", "LedgerError"}


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / module).read_text(), module)


def test_architecture_md_names_every_module_once_and_no_module_that_is_gone() -> None:
    named = [module for _, modules in _sections() for module in modules]
    assert sorted(set(MODULES) - set(named)) == [], "modules the code map does not name"
    assert sorted(set(named) - set(MODULES)) == [], "the code map names modules that do not exist"
    assert len(named) == len(set(named)), "a module in two places of the code map"


@pytest.mark.parametrize("module", MODULES)
def test_a_module_is_one_room_with_a_docstring_that_says_what_it_is_for(module: str) -> None:
    lines = (PACKAGE / module).read_text().count("\n")
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines"
    if not module.endswith("__main__.py"):
        assert ast.get_docstring(_tree(module)), f"{module} has no docstring"


def test_no_function_is_longer_than_a_screen() -> None:
    long = [
        f"{module}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module in MODULES
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and (node.end_lineno or node.lineno) - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_no_module_imports_another_modules_private_names() -> None:
    reach_ins = [
        f"{module}: from {node.module or '.'} import {alias.name}"
        for module in MODULES
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]
    assert reach_ins == []


def test_every_error_we_define_outside_the_sandbox_descends_from_one_of_four_roots() -> None:
    bases: dict[str, list[str]] = {}
    for module in MODULES:
        for node in ast.walk(_tree(module)):
            if isinstance(node, ast.ClassDef) and not module.startswith("sandbox/"):
                bases[node.name] = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]

    def is_error(name: str) -> bool:
        return name.endswith(("Error", "Exception")) or any(is_error(b) for b in bases.get(name, []))

    def root(name: str) -> str:
        ours = [b for b in bases.get(name, []) if b in bases and is_error(b)]
        return root(ours[0]) if ours else name

    errors = [name for name in bases if is_error(name) or any(is_error(b) for b in bases[name])]
    assert {root(name) for name in errors} == ERROR_ROOTS


# Third-party privates with no public way to the same thing; each says why. Our own objects offer public seams.
FOREIGN_PRIVATES = {
    "hosted/limits.py: self._manager._server_instances": "the SDK's session manager has no public view of its sessions",
    "hosted/updates.py: ctx.session._connection": "ServerSession has no public accessor for its connection",
    "hosted/updates.py: server._lowlevel_server": "no public hook binds a spec method (resources/subscribe)",
    "stdio.py: os._exit": "public despite its name: the blocked read of stdin would keep the process alive",
}


def test_no_module_reaches_into_another_objects_private_attributes() -> None:
    reach_ins = [
        f"{module}: {ast.unparse(node)}"
        for module in MODULES
        for node in ast.walk(_tree(module))
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and ast.unparse(node.value) not in ("self", "cls")
        and f"{module}: {ast.unparse(node)}" not in FOREIGN_PRIVATES
    ]
    assert reach_ins == []


def _sections() -> list[tuple[str, list[str]]]:
    """The code map's sections, bottom layer first, each with the modules it names."""
    code_map = (ROOT / "ARCHITECTURE.md").read_text().split("## Code map", 1)[1].split("\n## ", 1)[0]
    return [
        (title.split(":")[0].strip(), re.findall(r"^- `([\w/]+\.py)`", body, re.M))
        for title, body in (part.split("\n", 1) for part in code_map.split("\n### ")[1:])
    ]


def _imports(module: str) -> set[str]:
    """Our modules that `module` imports when it runs (not only for type checking), and `mcp` if it uses the SDK."""
    tree, package = _tree(module), module.split("/")[:-1]
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found |= {"mcp" for name in names if name.split(".")[0] == "mcp"}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1]
            parts = [*base, *(node.module or "").split(".")] if node.module else base
            for candidate in [parts] if node.module else [[*parts, a.name] for a in node.names]:
                path = "/".join(p for p in candidate if p)
                found |= {m for m in (f"{path}.py", f"{path}/__init__.py".lstrip("/")) if m in MODULES}
    return found


def test_imports_point_down_the_layers_architecture_md_names() -> None:
    sections = _sections()
    layer_of = {module: i for i, (_, modules) in enumerate(sections) for module in modules}
    names = [title for title, _ in sections]
    mcp_from, sandbox = names.index("MCP"), names.index("Beside")
    upward = []
    for module, layer in layer_of.items():
        for imported in _imports(module):
            if imported == "mcp":
                if layer < mcp_from or layer == sandbox:
                    upward.append(f"{module} ({names[layer]}) imports the MCP SDK")
                continue
            other = layer_of[imported]
            if layer == sandbox:
                allowed = other in (sandbox, 0)
            elif other == sandbox:
                allowed = names[layer] == "Entry points"
            else:
                allowed = other <= layer or (names[layer] == "Gateway" and imported == "metrics.py")
            if not allowed:
                upward.append(f"{module} ({names[layer]}) imports {imported} ({names[other]})")
    assert upward == []
