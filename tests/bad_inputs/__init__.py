"""The bad-input catalogue: every bad (and ok) input we have tried against the CLI and the API, as data.

Each area module (`convert`, `inputs`, `cli`, ...) holds `CASES`, a list of `Case`; `tests/test_bad_inputs.py`
runs them all. A case records what the user did, what happened before the fix, and what happens now; its
`run(tmp_path)` does the thing and asserts the "after". The catalogue only grows: a fixed defect keeps its
case.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
from pathlib import Path
from typing import Callable

import pytest

AREAS = ("convert", "inputs", "cli", "eval")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str                           # short unique id (the pytest id)
    input: str                          # what the user did
    before: str                         # what happened before (for the closing-note table)
    after: str                          # what happens now (what `run` asserts)
    run: Callable[[Path], None]         # does it in a fresh tmp dir and asserts `after`
    ok: bool = False                    # a good input that must keep working


def all_cases() -> list[Case]:
    import importlib

    cases = []
    for area in AREAS:
        try:
            module = importlib.import_module(f"bad_inputs.{area}")
        except ModuleNotFoundError as e:
            if e.name != f"bad_inputs.{area}":
                raise
            continue
        cases.extend(module.CASES)
    return cases


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`jaxvlm ARGV` in-process: (exit code, stdout, stderr)."""
    from jaxvlm import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return int(code), out.getvalue(), err.getvalue()


def expect_cli_error(argv: list[str], pattern: str) -> str:
    """Assert `jaxvlm ARGV` exits 2 with one stderr line matching `pattern` and no traceback; returns it."""
    code, _, err = run_cli(argv)
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", "  "))]
    assert code == 2, f"exit {code}, stderr:\n{err}"
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


def expect_user_error(fn: Callable[[], object], pattern: str) -> None:
    """Assert `fn()` raises a jaxvlm UserError whose message matches `pattern`."""
    from jaxvlm.errors import UserError

    with pytest.raises(UserError, match=pattern):
        fn()
