"""Checkpoint I/O: `load` a Hugging Face checkpoint directory or a jaxvlm directory, `save` a jaxvlm directory.

A jaxvlm directory holds `jaxvlm.json` ({"format": "jaxvlm", "version": 1, "dtype": ..., "hf_config": {...}})
and `weights/`, an orbax StandardCheckpointer checkpoint of the weights pytree. The model's static config is
re-parsed from the stored HF config, so the same checks apply to both kinds of directory. Weights are
restored against ShapeDtypeStruct targets from the family's `weight_shapes`, so nothing is guessed.

Writes go to a temporary sibling directory that is renamed into place at the end: a failed save or
conversion leaves nothing half-written at the destination.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp

from jaxvlm.config import UnsupportedConfigError
from jaxvlm.model import VLM, family_module

FORMAT = "jaxvlm"
VERSION = 1
META_FILE = "jaxvlm.json"
WEIGHTS_DIR = "weights"
DTYPES = ("float32", "bfloat16")
# Hugging Face model_type -> jaxvlm family.
MODEL_TYPES = {"llava": "llava", "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}


def parse_hf_config(hf_config: dict):
    """The static family config of a config.json dict (refuses unknown model types and attributes)."""
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedConfigError(
            f"model_type {model_type!r} is not supported (supported: {sorted(MODEL_TYPES)})"
        )
    return family_module(MODEL_TYPES[model_type]).parse_config(hf_config)


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported (have {DTYPES})")


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def is_jaxvlm_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def load_hf(path: str, dtype: str = "float32", progress: bool = True) -> tuple[VLM, dict]:
    """(VLM, hf_config dict) from a Hugging Face checkpoint directory, read tensor by tensor."""
    from converters import SafetensorsReader, convert, table_for

    _check_dtype(dtype)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"{path}: no config.json (neither a Hugging Face checkpoint nor a jaxvlm directory)")
    hf_config = _read_json(config_file)
    cfg = parse_hf_config(hf_config)
    reader = SafetensorsReader(path)
    shapes = family_module(cfg.family).weight_shapes(cfg)
    weights = convert(table_for(cfg), shapes, reader, dtype=dtype, place=jnp.asarray, progress=progress)
    reader.close()
    return VLM(weights=weights, config=cfg), hf_config


def load(path: str, dtype: str = "float32", progress: bool = False) -> VLM:
    """The model in `path` (a Hugging Face checkpoint directory or a `jaxvlm.save` directory) as a VLM."""
    path = os.path.abspath(os.fspath(path))
    _check_dtype(dtype)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path} is not a directory")
    if not is_jaxvlm_dir(path):
        return load_hf(path, dtype, progress=progress)[0]
    import orbax.checkpoint as ocp

    meta = _read_json(os.path.join(path, META_FILE))
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{path}: unsupported jaxvlm directory format {meta.get('format')!r} v{meta.get('version')}")
    hf_config = meta["hf_config"]
    cfg = parse_hf_config(hf_config)
    shapes = family_module(cfg.family).weight_shapes(cfg)
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(tuple(s), jnp.dtype(dtype)), shapes,
                          is_leaf=lambda s: isinstance(s, tuple))
    with ocp.StandardCheckpointer() as ckpt:
        weights = ckpt.restore(os.path.join(path, WEIGHTS_DIR), target)
    weights = jax.tree.map(lambda a: a.astype(dtype) if a.dtype != jnp.dtype(dtype) else a, weights)
    return VLM(weights=weights, config=cfg)


def _hf_config_of(params: VLM) -> dict:
    """The HF config dict a family config was parsed from (families keep it as JSON in `.hf_json`)."""
    text = getattr(params.config, "hf_json", "")
    if not text:
        raise ValueError("this VLM's config carries no Hugging Face config (`hf_json`); pass hf_config= to save")
    return json.loads(text)


def atomic_dir(dst: str):
    """Context manager yielding a temporary sibling of `dst` that replaces `dst` on success, vanishes on failure."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        parent = os.path.dirname(os.path.abspath(dst)) or "."
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.partial-", dir=parent)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        old = None
        if os.path.exists(dst):  # overwrite: move the old copy aside first, delete it only after the swap
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(dst)}.old-", dir=parent)
            os.rename(dst, os.path.join(old, "x"))
        os.rename(tmp, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    return ctx()


def save(params: VLM, path: str, hf_config: dict | None = None, overwrite: bool = False) -> str:
    """Write `params` as a jaxvlm directory (orbax checkpoint + config) that `load` reads back."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    hf_config = hf_config if hf_config is not None else _hf_config_of(params)
    parse_hf_config(hf_config)  # the stored config must describe a model we can rebuild
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    dtypes = {str(a.dtype) for a in jax.tree.leaves(params.weights)}
    with atomic_dir(path) as tmp:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(os.path.join(tmp, WEIGHTS_DIR), params.weights)
            ckpt.wait_until_finished()
        meta = {"format": FORMAT, "version": VERSION, "dtype": "/".join(sorted(dtypes)), "hf_config": hf_config}
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
    return path


def config_dict(params: VLM) -> dict[str, Any]:
    """The Hugging Face config dict `params` was built from (for save / export)."""
    return _hf_config_of(params)
