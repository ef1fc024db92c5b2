"""Host-side checks of model inputs, run by the families' `prepare` before anything is compiled or run.

Each is one cheap numpy pass over an input array (min/max, isfinite) and raises `UserError` naming the tensor,
the first offending index and its value; nothing is computed on the device. Without them an out-of-vocabulary
id or a NaN pixel runs to the end and returns an empty (all-pad) answer with exit code 0.
"""

from __future__ import annotations

import numpy as np

from jaxvlm.errors import UserError


def _index(flat: int, shape) -> str:
    return ", ".join(str(int(i)) for i in np.unravel_index(flat, shape))


def int_array(name: str, value, ndim: int | None = None) -> np.ndarray:
    """`value` as an integer numpy array (refuses floats / bools, which would be truncated silently)."""
    a = np.asarray(value)
    if not (np.issubdtype(a.dtype, np.integer) and a.dtype != bool):
        raise UserError(f"{name} must hold integers; got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        want = "(batch, tokens)" if ndim == 2 else f"{ndim}-D"
        raise UserError(f"{name} must be {want}; got shape {a.shape}")
    return a


def check_token_ids(ids: np.ndarray, vocab_size: int, name: str = "input_ids") -> None:
    """Every id in [0, vocab_size) (padding positions too: the embedding lookup reads them)."""
    if ids.size == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < vocab_size:
        return
    flat = int(np.argmax((ids < 0) | (ids >= vocab_size)))
    value = int(ids.reshape(-1)[flat])
    raise UserError(f"{name}[{_index(flat, ids.shape)}] = {value} is outside the vocabulary (size {vocab_size}); "
                    "was the prompt tokenized with this model's tokenizer?")


def token_inputs(input_ids, attention_mask, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (B, T) int32, mask (B, T) bool) checked: integer ids inside the vocabulary, a mask of the same
    shape (all ones when None)."""
    ids = int_array("input_ids", input_ids, ndim=2)
    check_token_ids(ids, vocab_size)
    ids = ids.astype(np.int32)
    mask = np.ones(ids.shape, bool) if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask.shape != ids.shape:
        raise UserError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    return ids, mask


def check_finite(values: np.ndarray, name: str) -> None:
    """No NaN / inf (pixel values, patches)."""
    finite = np.isfinite(values)
    if finite.all():
        return
    flat = int(np.argmin(finite.reshape(-1)))
    raise UserError(f"{name}[{_index(flat, values.shape)}] = {values.reshape(-1)[flat]}: pixel values must be "
                    f"finite ({int(finite.size - finite.sum())} of {finite.size} are not)")
