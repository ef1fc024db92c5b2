"""jaxvlm: LLaVA-1.5 and Qwen2/2.5-VL in JAX with jit-compiled, attention-debiased visual-token pruning."""

from __future__ import annotations

import importlib

# Public name -> module that defines it. Imported lazily so `import jaxvlm` stays cheap.
_EXPORTS = {
    "VLM": "jaxvlm.model",
    "Embedded": "jaxvlm.model",
    "load": "jaxvlm.io",
    "save": "jaxvlm.io",
    "forward": "jaxvlm.engine",
    "generate": "jaxvlm.engine",
    "Processor": "jaxvlm.processor",
}
_SUBMODULES = ("prune", "debias")


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"jaxvlm.{name}")
    raise AttributeError(f"module 'jaxvlm' has no attribute {name!r}")


__all__ = [*_EXPORTS, *_SUBMODULES]
