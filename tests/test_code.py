"""The code stays readable: no function of the package longer than a screen or two."""

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "dia"
MAX_LINES = 80  # and ruff's C901 keeps each function's cyclomatic complexity at most 20
MAX_MODULE_LINES = 450  # a module read in one sitting; split by job beyond it
MAX_CLI_LINES = 350  # the command line parses and prints; the work is in dia.pipeline


def test_no_function_is_longer_than_80_lines():
    long = []
    for file in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{file.relative_to(SRC)}:{node.lineno} {node.name} ({lines})")
    assert not long, long


def test_no_module_is_longer_than_450_lines_and_the_command_line_350():
    long = [
        f"{file.relative_to(SRC)} ({n})"
        for file in sorted(SRC.rglob("*.py"))
        if (n := len(file.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, long
    cli = len((SRC / "cli.py").read_text().splitlines())
    assert cli <= MAX_CLI_LINES, cli


def test_no_function_is_more_complex_than_20():
    # radon counts boolean operators and comprehensions too, which ruff's C901 does not:
    # `radon cc -n D src` prints nothing.
    from radon.complexity import cc_visit

    complex_ = [
        f"{file.relative_to(SRC)}:{block.lineno} {block.name} ({block.complexity})"
        for file in sorted(SRC.rglob("*.py"))
        for block in cc_visit(file.read_text())
        if block.complexity > 20
    ]
    assert not complex_, complex_
