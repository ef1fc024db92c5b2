"""Prefill (with pruning stages) and decode: what `jaxvlm.forward` and `jaxvlm.generate` run."""

from jaxvlm.engine.forward import ForwardOutput, forward

__all__ = ["ForwardOutput", "forward"]
