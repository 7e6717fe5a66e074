"""The Raft core stays sans-I/O: no module under embedkv/raft may import I/O or clocks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import embedkv.raft

FORBIDDEN = {"socket", "ssl", "select", "threading", "asyncio", "time", "random", "os", "lmdb"}
RAFT_DIR = Path(embedkv.raft.__file__).parent
MODULES = sorted(RAFT_DIR.glob("*.py"))


def _imported_roots(tree: ast.AST) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "__import__"
        ):
            roots.add("__import__")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
        ):
            roots.add("importlib.import_module")
    return roots


def test_every_raft_module_is_checked() -> None:
    """§2 / thesis §10.1: the replicated state machine is deterministic; see all modules."""
    names = {p.name for p in MODULES}
    assert {"core.py", "log.py", "progress.py", "read_only.py", "types.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=[p.name for p in MODULES])
def test_raft_module_imports_no_io(path: Path) -> None:
    """Thesis §10.1 (a library separated from I/O): time comes from tick(), randomness from
    the injected Rng, I/O from the runtime; nothing here may reach sockets, threads, clocks,
    random, the OS or LMDB."""
    roots = _imported_roots(ast.parse(path.read_text(), filename=str(path)))
    assert not roots & FORBIDDEN, f"{path.name} imports {sorted(roots & FORBIDDEN)}"
    assert "__import__" not in roots and "importlib.import_module" not in roots


def test_the_checker_catches_a_forbidden_import() -> None:
    """Thesis §10.1: the check itself must be able to fail."""
    tree = ast.parse("import os.path\nfrom time import monotonic\nfrom . import log\n")
    assert _imported_roots(tree) == {"os", "time"}
