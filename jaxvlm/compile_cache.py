"""A persistent compilation cache: compiled programs written to a directory and reused by later processes.

    jaxvlm.compile_cache.enable("~/.cache/jaxvlm/xla")   # or: --compile-cache DIR, or JAXVLM_COMPILE_CACHE=DIR

Every program is cached, however quick its compile (the defaults skip programs compiled in under a second and
tiny entries, which are most of an eval's stage programs). The key includes the program, its shapes, the
backend and the jax / jaxlib versions, so one directory serves several models and machines.
"""

from __future__ import annotations

import os

import jax

from jaxvlm.errors import UserError

ENV = "JAXVLM_COMPILE_CACHE"


def enable(directory: str | os.PathLike) -> str:
    """Cache compiled programs in `directory` (created if missing); returns its absolute path."""
    path = os.path.abspath(os.path.expanduser(os.fspath(directory)))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UserError(f"--compile-cache {directory}: cannot create the directory ({e.strerror})") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"--compile-cache {directory}: the directory is not writable")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def enable_from(flag: str | None) -> str | None:
    """`enable` for a command's --compile-cache value, falling back to $JAXVLM_COMPILE_CACHE; None: neither."""
    directory = flag or os.environ.get(ENV)
    return enable(directory) if directory else None
