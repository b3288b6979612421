"""The package's layout: imports run one way, every package says what it owns, no module
grows past a reader's page count."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "lln_jax"
COMMANDS = {"main", "plan", "prepare", "report", "sweep"}
# What each room may import besides itself (the README's package map).
ALLOWED = {
    "run": set(),
    "data": {"run"},
    "models": set(),
    "schemes": set(),
    "evaluation": {"run"},
    "config": {"data", "models", "schemes", "training"},  # the checks, against registries
    "training": {"config", "data", "evaluation", "models", "run", "schemes"},
}
MAX_LINES = 300


def _modules():
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _room(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def _imported_rooms(path: pathlib.Path) -> set[str]:
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            if parts[0] == "lln_jax":
                rooms |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            rooms |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lln_jax.")}
    return rooms


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_go_one_way(path):
    room = _room(path)
    imported = _imported_rooms(path) - {room}
    assert not imported & COMMANDS, f"{path.name} imports a command: {imported & COMMANDS}"
    if room in ALLOWED:
        assert imported <= ALLOWED[room], f"{room}/ may not import {imported - ALLOWED[room]}"


def test_every_package_says_what_it_owns():
    for init in PACKAGE.rglob("__init__.py"):
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert rooms == set(ALLOWED)


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, long


def test_top_level_modules_are_the_commands_and_the_package():
    top = {p.stem for p in PACKAGE.glob("*.py")}
    assert top == COMMANDS | {"__init__"}
