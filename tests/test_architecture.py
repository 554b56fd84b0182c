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


def test_architecture_md_names_every_module_and_no_module_that_is_gone() -> None:
    named = set(re.findall(r"`([\w/]+\.py)`", (ROOT / "ARCHITECTURE.md").read_text()))
    assert sorted(set(MODULES) - named) == [], "modules ARCHITECTURE.md does not name"
    assert sorted(named - set(MODULES)) == [], "ARCHITECTURE.md names modules that do not exist"


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
FOREIGN_PRIVATES: dict[str, str] = {}


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
