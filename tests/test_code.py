"""The code stays readable: no function of the package longer than a screen or two."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "dia"
MAX_LINES = 80  # and ruff's C901 keeps each function's cyclomatic complexity at most 20


def test_no_function_is_longer_than_80_lines():
    long = []
    for file in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{file.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert not long, long
