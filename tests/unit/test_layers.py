"""The architecture, checked: imports point ``ledger_cli → api → reactors → projections → ledger`` only, the
HTTP surface starts no processes and parses no command lines, benchmarks import no tests, and
SQL is run from below the HTTP routes and the command line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What each top-level package may import from this project.
ALLOWED = {
    "ledger": {"ledger"},
    "projections": {"ledger", "projections"},
    "reactors": {"ledger", "projections", "reactors"},
    "api": {"ledger", "projections", "reactors", "api"},
    "ledger_cli": {"ledger", "projections", "reactors", "api", "ledger_cli"},
    "bench": {"ledger", "projections", "reactors", "api", "ledger_cli", "bench"},
}
PROJECT = {"ledger", "projections", "reactors", "api", "ledger_cli", "bench", "tests"}
NOT_IN_API = {"subprocess", "argparse", "click", "typer", "multiprocessing", "ledger_cli"}
# Running SQL means calling one of these on a connection or pool.
SQL_CALLS = {"execute", "executemany", "fetch", "fetchrow", "fetchval", "copy_records_to_table"}


def _modules(package: str) -> Iterator[Path]:
    yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_point_down_the_layers(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules(package)
        for line, name in _imports(path)
        if name.split(".")[0] in PROJECT and name.split(".")[0] not in ALLOWED[package]
    ]
    assert not wrong, "\n".join(wrong)


def test_the_http_surface_starts_no_processes_and_parses_no_command_lines() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in _modules("api")
        for line, name in _imports(path)
        if name.split(".")[0] in NOT_IN_API
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", ["api", "ledger_cli"])
def test_no_sql_runs_from_the_routes_or_the_command_line(package: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{node.lineno} calls .{node.func.attr}()"
        for path in _modules(package)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in SQL_CALLS
    ]
    assert not wrong, "\n".join(wrong)


def test_sql_is_only_in_sql_files() -> None:
    """No SQL statement in a Python string of the service (the loader reads ``.sql`` files)."""
    keywords = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE ", "DROP ", "ALTER ", "LOCK TABLE", "SET ")
    wrong = []
    for package in ("ledger", "projections", "api", "ledger_cli"):
        for path in _modules(package):
            tree = ast.parse(path.read_text(), str(path))
            docstrings = {
                id(n.body[0].value)
                for n in ast.walk(tree)
                if isinstance(n, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and n.body
                and isinstance(n.body[0], ast.Expr)
                and isinstance(n.body[0].value, ast.Constant)
            }
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and id(node) not in docstrings
                    and node.value.lstrip().upper().startswith(keywords)
                    and not node.value.replace(" ", "").isupper()  # a statement, not a keyword looked for
                ):
                    wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not wrong, "\n".join(wrong)
