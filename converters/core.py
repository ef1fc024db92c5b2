"""Family-independent checkpoint conversion: conversion tables are data, this module only interprets them.

Table format (each family module `converters/<family>.py` provides `table(config) -> Table`):

    Table(layouts=("hub", "save_pretrained", "memory"),   # names of the HF key layouts, in `keys` order
          rules=(Rule(...), ...),
          ignore=(r"\\.rotary_emb\\.inv_freq$", ...))      # regexes of HF keys that carry no weights

    Rule(path="text/layers/wq",                          # '/'-joined path into the jax weights pytree
         keys=("language_model.model.layers.{i}.self_attn.q_proj.weight",   # one HF key template per
               "model.language_model.layers.{i}.self_attn.q_proj.weight",   # layout (same order as
               ...),                                                        # Table.layouts)
         hf_shape=(N * H, D),                            # shape of one HF tensor (one layer)
         perm=(1, 0))                                    # axes permutation HF -> jax, then reshape

A key template containing "{i}" makes the rule *stacked*: tensor i (i = 0..L-1, L = leading axis of the
target shape) goes to slice [i] of the jax array. The transform is always "transpose by `perm` (None = keep
the axes), then reshape to the target (per-layer) shape"; HF Linear [out, in] -> [in, out] is perm (1, 0),
q_proj [N*H, D] -> (D, N, H) is perm (1, 0) + reshape, o_proj [D, N*H] -> (N, H, D) likewise. The inverse
(`export`) reshapes to the permuted `hf_shape` and applies the inverse permutation, so every table works in
both directions.

Target shapes come from the family's `weight_shapes(config)`; every leaf must be covered by exactly one rule.
Resolution picks, per rule, the first layout whose key exists in the checkpoint, so all layouts (and mixes
produced by partial re-saves) load. Before any tensor data is read, every problem is collected and raised at
once as a ConversionError naming missing, unexpected and wrongly shaped tensors.

Readers give `keys()`, `shape(key)`, `get(key) -> np.ndarray` and `where(key)` (the file a tensor is in, for
error messages): SafetensorsReader (a directory with one file or a sharded index, read tensor by tensor
through `safe_open`, BF16 tensors from their bytes, all on the host; every unreadable header, shard or index
raises a ConversionError naming the file) and DictReader (an in-memory state dict).

`convert` fills each leaf on the host and `place`s it; its `assemble` hook instead hands a leaf's per-layer
pieces (one HF tensor each, read when asked for) to the caller, which jaxvlm.io uses to write them straight
into device shards.

Non-finite weights (NaN / Inf) are refused by default, naming the tensor and its file: one
`np.isfinite(t).all()` per tensor as it is read (a trained checkpoint never has them; a corrupt or
badly-quantised one silently turns every answer into garbage). `allow_nonfinite=True` loads them anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from typing import Callable, Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

from jaxvlm.errors import UserError

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}


class ConversionError(UserError):
    """A checkpoint does not match the model its config describes, or cannot be read (names the offending
    tensors or file)."""


def read_json(path: str) -> object:
    """The parsed JSON file `path`; a ConversionError naming the file (and line) if it is unreadable or invalid."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise ConversionError(f"{path}: cannot read ({e.strerror or e})") from None


@dataclasses.dataclass(frozen=True)
class Rule:
    path: str
    keys: tuple[str, ...]
    hf_shape: tuple[int, ...]
    perm: tuple[int, ...] | None = None

    @property
    def stacked(self) -> bool:
        return "{i}" in self.keys[0]


@dataclasses.dataclass(frozen=True)
class Table:
    layouts: tuple[str, ...]
    rules: tuple[Rule, ...]
    ignore: tuple[str, ...] = ()

    def layout_index(self, layout: str) -> int:
        if layout not in self.layouts:
            raise ValueError(f"unknown key layout {layout!r}; this table has {self.layouts}")
        return self.layouts.index(layout)


# ------------------------------------------------------------------------------------- pytree paths


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{'a': {'b': x}} -> {'a/b': x} (dict nodes only; leaves are anything else)."""
    out = {}
    for k, v in tree.items():
        p = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, p + "/"))
        else:
            out[p] = v
    return out


def unflatten(flat: Mapping[str, object]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return out


# ------------------------------------------------------------------------------------------ readers


class DictReader:
    """An in-memory state dict (numpy arrays or torch tensors) as a reader."""

    source = "state dict"

    def __init__(self, state: Mapping[str, object]):
        self._state = state

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def where(self, key: str) -> str:
        return self.source

    def get(self, key: str) -> np.ndarray:
        t = self._state[key]
        if hasattr(t, "detach"):  # torch tensor; numpy has no bfloat16, so go through float32
            t = t.detach().cpu()
            if str(t.dtype) == "torch.bfloat16":
                return t.float().numpy().astype(ml_dtypes.bfloat16)
            return t.numpy()
        return np.asarray(t)


class SafetensorsReader:
    """A Hugging Face checkpoint directory: `model.safetensors`, a sharded `*.safetensors.index.json`, or a
    set of `*.safetensors` files. Tensors are read one at a time (`safe_open`, memory-mapped)."""

    def __init__(self, directory: str):
        self.directory = self.source = directory
        files = self._files()
        self._key_file: dict[str, str] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._dtypes: dict[str, str] = {}
        for fname in files:
            with self._reading(fname, "header"):
                with safe_open(os.path.join(directory, fname), "np") as f:
                    for k in f.keys():
                        sl = f.get_slice(k)
                        self._key_file[k] = fname
                        self._shapes[k] = tuple(sl.get_shape())
                        self._dtypes[k] = sl.get_dtype()
        self._handles: dict[tuple[str, str], object] = {}
        self._headers: dict[str, tuple[int, dict]] = {}  # file -> (data section start, header), for BF16 reads

    def _files(self) -> list[str]:
        """The safetensors files: those an index names (all must exist), else every *.safetensors file."""
        directory = self.directory
        index = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors.index.json"))
        if not index:
            files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
            if not files:
                raise ConversionError(f"{directory}: no *.safetensors files (and no index) found")
            return files
        index_file = os.path.join(directory, index[0])
        weight_map = read_json(index_file)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ConversionError(f"{index_file}: not a safetensors index (no \"weight_map\" of tensor -> file)")
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(directory, f))]
        if missing:
            raise ConversionError(f"{index_file}: shard file(s) {missing} named by the index do not exist")
        return files

    @contextlib.contextmanager
    def _reading(self, fname: str, what: str):
        """Re-raise a failed read of `fname` as a ConversionError naming the file."""
        try:
            yield
        except OSError as e:
            raise ConversionError(f"{os.path.join(self.directory, fname)}: cannot read the {what} "
                                  f"({e.strerror or e})") from None
        except SafetensorError as e:
            raise ConversionError(f"{os.path.join(self.directory, fname)}: invalid safetensors {what} "
                                  f"(truncated or corrupt file?): {e}") from None

    def keys(self) -> list[str]:
        return list(self._key_file)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def _handle(self, fname: str, framework: str):
        if (fname, framework) not in self._handles:
            self._handles[(fname, framework)] = safe_open(os.path.join(self.directory, fname), framework)
        return self._handles[(fname, framework)]

    def where(self, key: str) -> str:
        return os.path.join(self.directory, self._key_file[key])

    def get(self, key: str) -> np.ndarray:
        fname = self._key_file[key]
        with self._reading(fname, f"data of tensor {key}"):
            if self._dtypes[key] == "BF16":  # safetensors' numpy reader has no bfloat16: read the bytes as it
                return self._read_bf16(fname, key)
            return self._handle(fname, "np").get_tensor(key)

    def _read_bf16(self, fname: str, key: str) -> np.ndarray:
        """A BF16 tensor read on the host as ml_dtypes.bfloat16 (the file's little-endian bytes at the offsets
        its header gives; no device is involved, unlike safetensors' JAX reader)."""
        with open(os.path.join(self.directory, fname), "rb") as f:
            if fname not in self._headers:
                header_len = int.from_bytes(f.read(8), "little")
                self._headers[fname] = (8 + header_len, json.loads(f.read(header_len)))
            base, header = self._headers[fname]
            start, end = header[key]["data_offsets"]
            f.seek(base + start)
            data = f.read(end - start)
        if len(data) != end - start:
            raise OSError(f"truncated file: tensor {key} needs bytes {start}..{end} of its data section")
        return np.frombuffer(data, dtype=ml_dtypes.bfloat16).reshape(self._shapes[key])

    def close(self) -> None:
        self._handles.clear()
        self._headers.clear()


# ------------------------------------------------------------------------------------------- convert


@dataclasses.dataclass(frozen=True)
class Plan:
    """Which HF key feeds each layer of each rule; built from key names and shapes only."""

    sources: dict  # rule.path -> list of HF keys (one per layer, or one)
    rules: dict  # rule.path -> Rule
    shapes: dict  # rule.path -> target shape (full, stacked)


def plan(table: Table, shapes: Mapping, reader) -> Plan:
    """Match the table against a checkpoint's keys and shapes; raise ConversionError listing every problem."""
    targets = {p: tuple(s) for p, s in flatten(shapes).items()}
    available = set(reader.keys())
    rules = {r.path: r for r in table.rules}
    uncovered = sorted(set(targets) - set(rules))
    if uncovered:
        raise ConversionError(f"conversion table has no rule for weight(s) {uncovered} (a bug in the table)")
    missing, wrong_shape, sources = [], [], {}
    for path, target in targets.items():
        rule = rules[path]
        n = target[0] if rule.stacked else 1
        per_layer = target[1:] if rule.stacked else target
        if int(np.prod(rule.hf_shape)) != int(np.prod(per_layer)):
            raise ConversionError(f"rule {path}: hf_shape {rule.hf_shape} cannot become {per_layer} (table bug)")
        # The layout with the most of this rule's tensors present (the first on ties): a tensor missing from
        # one layer is reported once, as missing, and its other layers are not "unexpected".
        candidates = [[template.format(i=i) for i in range(n)] for template in rule.keys]
        chosen = max(candidates, key=lambda names: sum(k in available for k in names))
        if not any(k in available for k in chosen):
            missing.append(chosen[0] + (f" (and layers 1..{n - 1})" if n > 1 else ""))
            continue
        missing.extend(k for k in chosen if k not in available)
        wrong_shape.extend(
            f"{k}: {reader.shape(k)} (expected {rule.hf_shape})"
            for k in chosen if k in available and tuple(reader.shape(k)) != tuple(rule.hf_shape)
        )
        sources[path] = chosen
    used = {k for ks in sources.values() for k in ks}
    ignore = [re.compile(p) for p in table.ignore]
    unexpected = sorted(k for k in available - used if not any(p.search(k) for p in ignore))
    problems = []
    if missing:
        problems.append(f"missing tensor(s): {missing}")
    if unexpected:
        problems.append(f"unexpected tensor(s) (not used by this config): {unexpected}")
    if wrong_shape:
        problems.append(f"wrongly shaped tensor(s): {wrong_shape}")
    if problems:
        raise ConversionError(f"{reader.source}: checkpoint does not match its config: " + "; ".join(problems))
    return Plan(sources=sources, rules={p: rules[p] for p in targets}, shapes=targets)


def to_jax(rule: Rule, hf: np.ndarray, per_layer: tuple[int, ...]) -> np.ndarray:
    a = hf if rule.perm is None else np.transpose(hf, rule.perm)
    return a.reshape(per_layer)


def to_hf(rule: Rule, x: np.ndarray) -> np.ndarray:
    permuted = rule.hf_shape if rule.perm is None else tuple(rule.hf_shape[p] for p in rule.perm)
    a = np.asarray(x).reshape(permuted)
    return a if rule.perm is None else np.transpose(a, np.argsort(rule.perm))


def check_finite(key: str, a: np.ndarray, where: str) -> None:
    """Raise ConversionError if the floating-point tensor `a` holds a NaN or an Inf (counts them)."""
    if a.dtype.kind in "biu" or np.isfinite(a).all():
        return
    nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    raise ConversionError(f"tensor {key} in {where} has {nan} NaN and {inf} Inf value(s) of {a.size}; refusing "
                          "to load a corrupt checkpoint (allow_nonfinite=True / --allow-nonfinite loads it anyway)")


def iter_convert(table: Table, shapes: Mapping, reader, dtype: str = "float32", allow_nonfinite: bool = False,
                 on_read: Callable[[str], None] = lambda key: None) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (path, array) per weight leaf, each filled tensor by tensor into a preallocated buffer.

    Only one leaf is held at a time, so a caller that moves each leaf away (device_put, write) never holds
    a second full copy of the model in host memory. Every problem `plan` finds is raised here, before the
    first tensor is read; each tensor is checked for NaN / Inf as it is read unless `allow_nonfinite`, and
    `on_read(key)` is called after each.
    """
    np_dtype, p = _np_dtype(dtype), plan(table, shapes, reader)
    for path, pieces in _leaves(p, reader, np_dtype, allow_nonfinite, on_read):
        yield path, fill(p.shapes[path], np_dtype, pieces)


def _np_dtype(dtype: str) -> np.dtype:
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported (have {sorted(DTYPES)})")
    return DTYPES[dtype]


def _leaves(p: Plan, reader, np_dtype, allow_nonfinite: bool, on_read) -> Iterator[tuple[str, Iterator]]:
    """(path, pieces) per weight leaf in plan order; `pieces` yields (layer, array) per HF tensor as it is read:
    `layer` the index into a stacked leaf's L axis (None for an unstacked leaf), `array` that tensor in the jax
    layout (the leaf's per-layer shape) as `np_dtype`. Each piece is read only when the caller asks for it, so
    the host holds one HF tensor at a time; the NaN / Inf check runs per tensor."""
    def read(key: str) -> np.ndarray:
        a = reader.get(key)
        if not allow_nonfinite:
            check_finite(key, a, reader.where(key))
        on_read(key)
        return a

    def pieces(rule: Rule, keys: list, target: tuple):
        per_layer = target[1:] if rule.stacked else target
        for i, k in enumerate(keys):
            yield (i if rule.stacked else None), to_jax(rule, read(k), per_layer).astype(np_dtype)

    for path, target in p.shapes.items():
        yield path, pieces(p.rules[path], p.sources[path], target)


def fill(shape: tuple, np_dtype, pieces: Iterable) -> np.ndarray:
    """A host leaf of `shape` assembled from its (layer, array) pieces (`_leaves`)."""
    buf = np.empty(shape, dtype=np_dtype)
    for i, a in pieces:
        buf[... if i is None else i] = a
    return buf


def convert(table: Table, shapes: Mapping, reader, dtype: str = "float32",
            place: Callable[[np.ndarray], object] = lambda a: a, progress: bool = False,
            allow_nonfinite: bool = False, desc: str = "converting",
            assemble: Callable[[str, tuple, Iterator], object] | None = None) -> dict:
    """The nested weights dict; `place` maps each finished numpy leaf (e.g. to a jax.Array). `progress`
    shows a bar labelled `desc` on stderr, one step per HF tensor read, once the checkpoint matched.

    `assemble(path, shape, pieces)`, if given, builds each leaf itself from its (layer, array) pieces, read one
    HF tensor at a time (`_leaves`; e.g. straight into device shards, jaxvlm.io) instead of `fill` + `place`.
    """
    from tqdm import tqdm

    np_dtype, p = _np_dtype(dtype), plan(table, shapes, reader)
    if assemble is None:
        assemble = lambda path, shape, pieces: place(fill(shape, np_dtype, pieces))  # noqa: E731
    with tqdm(total=sum(map(len, p.sources.values())), desc=desc, unit="tensor", disable=not progress) as bar:
        leaves = _leaves(p, reader, np_dtype, allow_nonfinite, on_read=lambda key: bar.update())
        return unflatten({path: assemble(path, p.shapes[path], pieces) for path, pieces in leaves})


def export(table: Table, weights: Mapping, layout: str) -> Iterable[tuple[str, np.ndarray]]:
    """The inverse: (HF key, HF-layout array) pairs in `layout` for a weights pytree."""
    col = table.layout_index(layout)
    flat = flatten(weights)
    for rule in table.rules:
        if rule.path not in flat:
            continue
        x = np.asarray(flat[rule.path])
        template = rule.keys[col]
        if rule.stacked:
            for i in range(x.shape[0]):
                yield template.format(i=i), to_hf(rule, x[i])
        else:
            yield template, to_hf(rule, x)
