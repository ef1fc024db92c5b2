"""Checkpoint I/O: `load` a Hugging Face checkpoint directory or a jaxvlm directory, `save` a jaxvlm directory.

A jaxvlm directory holds `jaxvlm.json` ({"format": "jaxvlm", "version": 1, "dtype": ..., "hf_config": {...}})
and `weights/`, an orbax StandardCheckpointer checkpoint of the weights pytree, plus any tokenizer / processor
files saved with it (`save(..., files=...)`; the converter copies them from the source checkpoint). The model's
static config is re-parsed from the stored HF config, so the same checks apply to both kinds of directory.
Weights are restored against ShapeDtypeStruct targets from the family's `weight_shapes`, so nothing is guessed.
NaN / Inf weights are refused by default (naming the tensor; `allow_nonfinite=True` loads them anyway).
`dtype=None` is `default_dtype()`: bfloat16 on accelerators, float32 on CPU.

Sharded loading (`mesh=`, jaxvlm.engine.sharding): each weight goes straight into its shards (the logical-axis
table, plus FSDP with `fsdp=True`). From a HF directory a stacked leaf is allocated sharded on the devices,
then each layer's HF tensor is read, converted, placed with the layer's sharding (`device_put`: each device
gets its part only) and written into the stack in place (a jitted `.at[i].set` donating the stack): no device
holds more than its shards of a sharded weight, and the host holds one HF tensor at a time. Orbax restores
against targets carrying the shardings, so each device reads its own shards.

Writes never destroy data: a destination is refused before anything is read if it exists (unless
`overwrite`, and then only a jaxvlm directory or an empty one is replaced), and everything is written to a
work directory beside it (`.DST.partial-HOST-PID-XXXXXXXX`, normal umask permissions) that is renamed into
place at the end, so a failed save or conversion leaves nothing half-written at the destination. Work
directories of runs that died (SIGKILL, power loss: same host, process gone) are removed by the next save
into the same parent directory; those of live runs, or of other hosts, are never touched.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import shutil
import socket
import sys
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from converters.core import ConversionError, check_finite, flatten, read_json
from jaxvlm.config import UnsupportedConfigError
from jaxvlm.errors import UserError, one_line
from jaxvlm.model import VLM, family_module

FORMAT = "jaxvlm"
VERSION = 1
META_FILE = "jaxvlm.json"
WEIGHTS_DIR = "weights"
DTYPES = ("float32", "bfloat16")
# Hugging Face model_type -> jaxvlm family.
MODEL_TYPES = {"llava": "llava", "llava_next": "llava_next", "video_llava": "video_llava",
               "qwen2_vl": "qwen2_vl", "qwen2_5_vl": "qwen2_5_vl"}


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """The path given is not a checkpoint directory."""


class DestinationError(UserError, FileExistsError):
    """A save / conversion destination that would destroy data (exists, or overlaps the source)."""


def parse_hf_config(hf_config: dict):
    """The static family config of a config.json dict (refuses unknown model types and attributes)."""
    model_type = hf_config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise UnsupportedConfigError(
            f"model_type {model_type!r} is not supported (supported: {sorted(MODEL_TYPES)})"
        )
    return family_module(MODEL_TYPES[model_type]).parse_config(hf_config)


def default_dtype() -> str:
    """The dtype `load` reads weights as when none is given: "bfloat16" on accelerators, "float32" on CPU."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def _check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"dtype {dtype!r} is not supported (have {DTYPES})")


def is_jaxvlm_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def load_hf(path: str, dtype: str = "float32", progress: bool = True, allow_nonfinite: bool = False,
            desc: str | None = None, mesh=None, fsdp: bool = False) -> tuple[VLM, dict]:
    """(VLM, hf_config dict) from a Hugging Face checkpoint directory, read tensor by tensor (a progress bar
    labelled `desc`, default "loading PATH", when `progress`); placed into its shards on `mesh` if given."""
    from converters import SafetensorsReader, convert, table_for

    _check_dtype(dtype)
    config_file = os.path.join(path, "config.json")
    if not os.path.isfile(config_file):
        raise CheckpointNotFoundError(
            f"{path}: no config.json (neither a Hugging Face checkpoint nor a jaxvlm directory)")
    hf_config = read_json(config_file)
    if not isinstance(hf_config, dict):
        raise ConversionError(f"{config_file}: not a config (a JSON object expected)")
    cfg = parse_hf_config(hf_config)
    reader = SafetensorsReader(path)
    shapes = family_module(cfg.family).weight_shapes(cfg)
    try:
        weights = convert(table_for(cfg), shapes, reader, dtype=dtype, place=jnp.asarray, progress=progress,
                          allow_nonfinite=allow_nonfinite, desc=desc or f"loading {path}",
                          assemble=None if mesh is None else functools.partial(_assemble_sharded, mesh, fsdp))
    finally:
        reader.close()
    return VLM(weights=weights, config=cfg), hf_config


def load(path: str, dtype: str | None = None, progress: bool = False, allow_nonfinite: bool = False,
         mesh=None, fsdp: bool = False) -> VLM:
    """The model in `path` (a Hugging Face checkpoint directory or a `jaxvlm.save` directory) as a VLM.

    `dtype`: "float32" or "bfloat16" (None: `default_dtype()`). `progress`: a per-tensor bar ("loading PATH")
    for HF directories, a line on stderr for orbax restores. NaN / Inf weights raise a ConversionError naming
    the tensor unless `allow_nonfinite`. `mesh` (sharding.model_mesh / data_mesh): every weight is placed
    straight into its shards by the logical-axis table as it is read (`fsdp`: also over the data axis).
    """
    path = os.path.abspath(os.fspath(path))
    dtype = default_dtype() if dtype is None else dtype
    _check_dtype(dtype)
    if not os.path.isdir(path):
        raise CheckpointNotFoundError(f"{path} is not a directory")
    if not is_jaxvlm_dir(path):
        return load_hf(path, dtype, progress=progress, allow_nonfinite=allow_nonfinite, mesh=mesh, fsdp=fsdp)[0]
    meta_file = os.path.join(path, META_FILE)
    meta = read_json(meta_file)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        found = (meta.get("format"), meta.get("version")) if isinstance(meta, dict) else type(meta).__name__
        raise ConversionError(f"{meta_file}: not a jaxvlm v{VERSION} directory description (found {found})")
    if not isinstance(meta.get("hf_config"), dict):
        raise ConversionError(f"{meta_file}: no \"hf_config\" object")
    cfg = parse_hf_config(meta["hf_config"])
    if progress:
        print(f"loading {path} (orbax checkpoint)", file=sys.stderr, flush=True)
    weights = _restore(os.path.join(path, WEIGHTS_DIR), family_module(cfg.family).weight_shapes(cfg), dtype,
                       mesh, fsdp)
    if not allow_nonfinite:
        for leaf in _nonfinite_leaves(weights)[:1]:
            check_finite(leaf, np.asarray(jax.device_get(flatten(weights)[leaf])), os.path.join(path, WEIGHTS_DIR))
    return VLM(weights=weights, config=cfg)


def _nonfinite_leaves(weights: dict) -> list[str]:
    """Paths of the leaves holding a NaN / Inf: numpy on host-resident (one CPU device) arrays, which it reads
    in place; one jitted reduction on accelerators and for sharded weights (no copy of the weights to the host)."""
    flat = flatten(weights)
    if all(len(a.devices()) == 1 and next(iter(a.devices())).platform == "cpu" for a in flat.values()):
        return [p for p, a in flat.items() if not np.isfinite(np.asarray(a)).all()]
    finite = jax.device_get(_all_finite(flat))
    return [p for p, ok in finite.items() if not ok]


@jax.jit
def _all_finite(flat: dict) -> dict:
    return {p: jnp.isfinite(a).all() for p, a in flat.items()}


def _restore(weights_dir: str, shapes: dict, dtype: str, mesh=None, fsdp: bool = False) -> dict:
    """The orbax checkpoint `weights_dir` restored against `shapes` as `dtype` arrays (sharded on `mesh`)."""
    import orbax.checkpoint as ocp

    if not os.path.isdir(weights_dir):
        raise CheckpointNotFoundError(f"{weights_dir}: missing (the orbax weights of this jaxvlm directory)")

    from jaxvlm.engine import sharding

    def struct(path, s):
        placed = None if mesh is None else sharding.leaf_sharding(path, s, mesh, fsdp)
        return jax.ShapeDtypeStruct(tuple(s), jnp.dtype(dtype), sharding=placed)

    target = jax.tree_util.tree_map_with_path(struct, shapes, is_leaf=lambda s: isinstance(s, tuple))
    try:
        with ocp.StandardCheckpointer() as ckpt:
            weights = ckpt.restore(weights_dir, target)
    except Exception as e:
        # Missing / corrupt files surface as OSError, ValueError, KeyError or (from tensorstore) a bare
        # Exception; anything else is a bug and keeps its traceback.
        if type(e) is not Exception and not isinstance(e, (OSError, ValueError, KeyError)):
            raise
        detail = one_line(f"{type(e).__name__}: {e}")
        raise ConversionError(f"{weights_dir}: cannot restore the orbax checkpoint (missing or corrupt file?): "
                              f"{detail[:400]}") from None
    return jax.tree.map(lambda a: a.astype(dtype) if a.dtype != jnp.dtype(dtype) else a, weights)


def _assemble_sharded(mesh, fsdp: bool, path: str, shape: tuple, pieces) -> jax.Array:
    """One leaf built on `mesh` from its (layer, array) pieces (converters.core.convert's `assemble`): each
    piece goes to the devices as its shards only, a stacked leaf is written layer by layer in place."""
    from jaxvlm.engine import sharding

    placed = sharding.leaf_sharding(path.split("/")[-1:], shape, mesh, fsdp)
    first_layer, first = next(pieces)
    if first_layer is None:
        return jax.device_put(first, placed)
    layer = sharding.layer_sharding(placed)
    stack = _sharded_zeros(tuple(shape), first.dtype, placed)
    for i, a in ((first_layer, first), *pieces):
        stack = _set_layer(stack, jax.device_put(a, layer), np.int32(i), placed)
    return stack


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sharded_zeros(shape: tuple, dtype, placed) -> jax.Array:
    return jax.lax.with_sharding_constraint(jnp.zeros(shape, dtype), placed)


@functools.partial(jax.jit, static_argnums=3, donate_argnums=0)
def _set_layer(stack: jax.Array, layer: jax.Array, i, placed) -> jax.Array:
    """stack with [i] = layer, in place (the stack is donated; both keep their shardings)."""
    return jax.lax.with_sharding_constraint(stack.at[i].set(layer), placed)


def _hf_config_of(params: VLM) -> dict:
    """The HF config dict a family config was parsed from (families keep it as JSON in `.hf_json`)."""
    text = getattr(params.config, "hf_json", "")
    if not text:
        raise ValueError("this VLM's config carries no Hugging Face config (`hf_json`); pass hf_config= to save")
    return json.loads(text)


# ------------------------------------------------------------------------------ safe destinations


def _contains(outer: str, inner: str) -> bool:
    return os.path.commonpath([outer, inner]) == outer


def prepare_destination(dst: str, overwrite: bool = False, src: str | None = None,
                        hint: str = "pass overwrite=True to replace it") -> str:
    """The resolved `dst` once dead runs' leftovers beside it are cleaned up (`remove_leftovers`), or a
    DestinationError before anything is read or written: `dst` is `src`, inside it or contains it (by
    resolved path), or exists (without `overwrite`; with it, only a jaxvlm directory or an empty directory
    may be replaced). `hint` says how to allow replacing it."""
    real, parent = os.path.realpath(os.fspath(dst)), os.path.dirname(os.path.abspath(dst))
    if os.path.isdir(parent):
        remove_leftovers(parent)
    if src is not None:
        real_src = os.path.realpath(os.fspath(src))
        same = real == real_src or (os.path.exists(dst) and os.path.exists(src) and os.path.samefile(dst, src))
        if same or _contains(real_src, real) or _contains(real, real_src):
            where = "is" if same else "is inside" if _contains(real_src, real) else "contains"
            raise DestinationError(f"destination {dst} {where} the source {src}; refusing to write there "
                                   "(it would destroy the source): choose a separate directory")
    if os.path.lexists(real):
        if not overwrite:
            raise DestinationError(f"{dst} exists; {hint}")
        if not (os.path.isdir(real) and (is_jaxvlm_dir(real) or not os.listdir(real))):
            raise DestinationError(f"{dst} exists and is not a jaxvlm directory; refusing to replace it "
                                   "(remove it yourself or choose another destination)")
    return real


WORK_DIR = re.compile(r"^\.(?P<base>.+)\.(?P<kind>partial|old)-(?P<host>[\w.]+)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _host() -> str:
    return re.sub(r"[^\w.]", "_", socket.gethostname()) or "localhost"


def work_dir(dst: str, kind: str, pid: int | None = None) -> str:
    """A fresh name `.BASE.KIND-HOST-PID-XXXXXXXX` beside `dst`, saying which process (default: this one) owns
    it; `kind` is "partial" (being written) or "old" (a replaced destination, deleted after the swap)."""
    parent, base = os.path.split(dst)
    pid = os.getpid() if pid is None else pid
    return os.path.join(parent, f".{base}.{kind}-{_host()}-{pid}-{secrets.token_hex(4)}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(parent: str) -> list[str]:
    """Clean up after dead saves in `parent`; returns the names acted on.

    A work directory is a dead run's when its host is this host and its process no longer exists (a live
    run's, or another host's, is never touched). A dead run's `.partial-` directory is removed; its `.old-`
    directory (a destination moved aside for replacement) is put back if the run died before the new copy
    took its place, and removed otherwise.
    """
    host, done = _host(), []
    for name in sorted(os.listdir(parent)):
        m = WORK_DIR.match(name)
        if not m or m["host"] != host or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        work, dst = os.path.join(parent, name), os.path.join(parent, m["base"])
        try:
            if m["kind"] == "old" and not os.path.lexists(dst):
                os.rename(work, dst)
            else:
                _remove(work)
        except OSError:  # another process cleaned it up first, or it is not ours to remove: leave it
            continue
        done.append(name)
    return done


@contextlib.contextmanager
def atomic_dir(dst: str, overwrite: bool = False):
    """Yield a new work directory beside `dst` that replaces `dst` on success and vanishes on failure.

    `dst` is replaced only if `overwrite` (checked again at the swap); the old copy is moved aside first and
    deleted only after the new one is in place. The work directory gets the umask's permissions.
    """
    dst = os.path.abspath(dst)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = work_dir(dst, "partial")
    os.mkdir(tmp)  # mode 0o777 & ~umask, like any directory the user creates
    try:
        yield tmp
        old = _swap(tmp, dst, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        with contextlib.suppress(OSError):
            _remove(old)


def _remove(path: str) -> None:
    """Delete a directory tree, or just the link / file (a replaced destination may be a symlink)."""
    if os.path.islink(path) or not os.path.isdir(path):
        os.unlink(path)
    else:
        shutil.rmtree(path)


def _swap(tmp: str, dst: str, overwrite: bool) -> str | None:
    """Rename `tmp` to `dst`, moving an existing `dst` aside first; returns where the old copy went."""
    old = None
    if os.path.lexists(dst):
        if not overwrite:
            raise DestinationError(f"{dst} appeared while it was being written; not replacing it")
        old = work_dir(dst, "old")
        os.rename(dst, old)
    try:
        os.rename(tmp, dst)
    except BaseException:
        if old is not None:
            os.rename(old, dst)
        raise
    return old


def _copy_into(directory: str, files: Iterable[str]) -> None:
    """Copy each file (or directory) into `directory` under its own name; new files get umask permissions."""
    for f in files:
        target = os.path.join(directory, os.path.basename(os.path.normpath(f)))
        if os.path.isdir(f):
            shutil.copytree(f, target, copy_function=shutil.copyfile)
        else:
            shutil.copyfile(f, target)


def save(params: VLM, path: str, hf_config: dict | None = None, overwrite: bool = False,
         files: Iterable[str] = ()) -> str:
    """Write `params` as a jaxvlm directory (orbax checkpoint + config + copies of `files`, e.g. the tokenizer
    and processor files) that `load` reads back."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    hf_config = hf_config if hf_config is not None else _hf_config_of(params)
    parse_hf_config(hf_config)  # the stored config must describe a model we can rebuild
    prepare_destination(path, overwrite)
    dtypes = {str(a.dtype) for a in jax.tree.leaves(params.weights)}
    with atomic_dir(path, overwrite) as tmp:
        with ocp.StandardCheckpointer() as ckpt:
            ckpt.save(os.path.join(tmp, WEIGHTS_DIR), params.weights)
            ckpt.wait_until_finished()
        _copy_into(tmp, files)
        meta = {"format": FORMAT, "version": VERSION, "dtype": "/".join(sorted(dtypes)), "hf_config": hf_config}
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=1)
    return path


def config_dict(params: VLM) -> dict[str, Any]:
    """The Hugging Face config dict `params` was built from (for save / export)."""
    return _hf_config_of(params)
