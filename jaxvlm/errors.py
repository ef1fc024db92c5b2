"""The error surface: what is the user's fault (a file, flag, tensor or value they gave) vs an internal bug.

`UserError` (and its subclasses across the library) carries a message that names the problem - the file and
line, the tensor, the flag or the value - and what to do about it. The command line prints it as one line
and exits 2 (`run_cli`); anything else is an internal error and keeps its traceback (exit 1).
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

USER_ERROR_EXIT = 2


class UserError(ValueError):
    """Bad input from the user: one line naming the file, line, tensor or value, and what to do."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; names the extra that provides it."""

    def __init__(self, package: str, extra: str, purpose: str):
        super().__init__(f"{purpose} needs the Python package {package!r}, which is not installed: "
                         f"pip install 'jaxvlm[{extra}]'")
        self.package, self.extra = package, extra


def require_module(module: str, extra: str, purpose: str, package: str | None = None):
    """`import module`, or raise MissingExtraError naming the extra (`jaxvlm[extra]`) that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != module.split(".")[0]:
            raise  # the module exists but one of *its* imports failed: a real bug, keep the traceback
        raise MissingExtraError(package or module, extra, purpose) from None


def one_line(message: str) -> str:
    """`message` folded onto one line (multi-line lists joined with '; ')."""
    parts = [p.strip() for p in str(message).splitlines() if p.strip()]
    return "; ".join(parts)


def run_cli(prog: str, main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None) -> int:
    """Run a command's `main(argv)`: a UserError becomes `prog: message` on stderr and exit code 2."""
    try:
        return int(main(argv) or 0)
    except UserError as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
