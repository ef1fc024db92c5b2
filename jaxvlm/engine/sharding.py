"""Data and tensor parallelism: the one place where the engine's sharding is declared.

Every per-row computation of the engine (prefill segments, stages, decode) is row-local, so sharding the batch
axis of the token state over a 1-D mesh needs no communication; the weights are replicated.

    mesh = data_mesh()                                   # all devices of this process (or of all hosts)
    out = jaxvlm.generate(params, **inputs, mesh=mesh)   # same tokens as without a mesh

A batch whose size is not a multiple of the mesh size is padded inside the program with copies of row 0 (their
outputs are dropped). Multi-host: run the same program on every host after
`jax.distributed.initialize(coordinator_address, num_processes, process_id)`; `data_mesh()` then spans
`jax.devices()` of all hosts, every host passes the same global inputs (numpy), and `jax.jit` places each
host's rows on its local devices. On a mesh that spans several processes the outputs are replicated inside the
program (`host_readable`), so every host reads all rows with np.asarray (tested: tests/test_engine_multihost.py,
2 processes on one machine).

Tensor parallelism: `mesh = model_mesh(data, model)` is a 2-D (data, model) mesh and `shard_weights(params, mesh)`
places every weight by the logical-axis table below (each weight's einsum letters, jaxvlm/layers.py, mapped to
mesh axes: query / kv heads N, K, the MLP width F and the vocabulary V over "model"; everything else
replicated). A dimension that the model axis does not divide stays replicated: Qwen2.5-VL-7B's 28 query / 4 kv
heads at model=8 keep attention replicated while its MLP (18944) and vocabulary are split. GSPMD inserts the
collectives; the engine code is unchanged.

FSDP (`fsdp=True` in shard_weights / weight_shardings / jaxvlm.load): each weight's largest dimension that the
model axis left whole and FSDP_RULES lists (D, or F / V where not split over "model") is additionally split
over "data" where divisible: wq (L, D, N, H) becomes (None, "data", "model", None). Each device then holds
1/(data x model) of the big matrices; GSPMD gathers a layer's shards where it is used.

`jaxvlm.load(path, mesh=mesh, fsdp=...)` places every tensor straight into these shards as it is read
(jaxvlm/io.py). The vision tower runs sharded over images (`image_parallel`): under a mesh the LLaVA-family
pixel inputs' leading image (tile, video) axis is constrained to "data" before the tower and the towers'
weights to their tensor-parallel shardings (an FSDP split is gathered first; otherwise GSPMD would split the
activations' width over "data" to match it), so each device encodes its own images. Qwen's packed patches
(num_patches, C*t*p*p) have no image axis, and its windows and frames do not fall on an even split, so its
tower is left as it is: every data shard runs all patches, heads split over "model".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvlm.engine.state import TokenState

BATCH_AXIS = "data"
MODEL_AXIS = "model"

# Logical axes (einsum letters) -> mesh axis; letters not listed are replicated.
LOGICAL_RULES = {"N": MODEL_AXIS, "K": MODEL_AXIS, "F": MODEL_AXIS, "V": MODEL_AXIS}
# With FSDP, the letters that may also be split over the data axis (the largest one the model axis left whole).
FSDP_RULES = {"D": BATCH_AXIS, "F": BATCH_AXIS, "V": BATCH_AXIS}
# Inputs with a leading image (tile, video) axis that the vision tower runs over, by family (sharded over
# BATCH_AXIS under a mesh; Qwen's packed patches have no such axis).
IMAGE_AXIS_INPUTS = {"llava": ("pixel_values",), "llava_next": ("pixel_values",),
                     "video_llava": ("pixel_values", "pixel_values_videos")}
# Einsum letters of each weight by leaf name (decoder, CLIP and Qwen vision towers; C = the q/k/v triple). A leaf
# whose rank differs from its letters (e.g. the projector's 2-D fc1) is replicated.
WEIGHT_AXES = {
    "wq": "LDNH", "wk": "LDKH", "wv": "LDKH", "wo": "LNHD", "bq": "LNH", "bk": "LKH", "bv": "LKH",
    "wqkv": "LDCNH", "bqkv": "LCNH",
    "w_gate": "LDF", "w_up": "LDF", "w_down": "LFD", "b_gate": "LF", "b_up": "LF",
    "w_fc1": "LDF", "b_fc1": "LF", "w_fc2": "LFD", "fc1": "LDF", "fc1_b": "LF", "fc2": "LFD",
    "embed": "VD", "lm_head": "DV",
}


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named BATCH_AXIS over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (BATCH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


def model_mesh(data: int = 1, model: int | None = None, devices=None) -> Mesh:
    """A 2-D (BATCH_AXIS, MODEL_AXIS) mesh of data x model devices (model default: all devices / data)."""
    devices = list(jax.devices() if devices is None else devices)
    model = len(devices) // data if model is None else model
    if data * model > len(devices):
        raise ValueError(f"mesh data={data} x model={model} needs {data * model} devices, have {len(devices)}")
    return jax.make_mesh((data, model), (BATCH_AXIS, MODEL_AXIS), devices=devices[: data * model],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def weight_spec(name: str, shape: tuple, mesh: Mesh, fsdp: bool = False) -> PartitionSpec:
    """The PartitionSpec of weight `name` with `shape` under LOGICAL_RULES (replicated where not divisible);
    with `fsdp`, also the largest remaining FSDP_RULES dimension over its axis where divisible."""
    letters = WEIGHT_AXES.get(name)
    if letters is None or len(letters) != len(shape):
        return PartitionSpec()

    def fits(axis, dim, spec):
        return axis in mesh.shape and axis not in spec and dim % mesh.shape[axis] == 0

    spec = [None] * len(shape)
    for i, (letter, dim) in enumerate(zip(letters, shape)):
        axis = LOGICAL_RULES.get(letter)
        spec[i] = axis if fits(axis, dim, spec) else None
    if fsdp:
        free = [i for i, letter in enumerate(letters)
                if spec[i] is None and fits(FSDP_RULES.get(letter), shape[i], spec)]
        if free:
            i = max(free, key=lambda i: shape[i])
            spec[i] = FSDP_RULES[letters[i]]
    return PartitionSpec(*spec)


def leaf_sharding(path, shape: tuple, mesh: Mesh, fsdp: bool = False) -> NamedSharding:
    """The NamedSharding of the weight at pytree `path` (its last key names the leaf) with `shape`."""
    name = str(getattr(path[-1], "key", path[-1]))
    return NamedSharding(mesh, weight_spec(name, tuple(shape), mesh, fsdp))


def weight_shardings(params, mesh: Mesh, fsdp: bool = False):
    """NamedShardings for every weight of `params` (same pytree; arrays or ShapeDtypeStructs), by `weight_spec`."""
    return jax.tree_util.tree_map_with_path(lambda path, w: leaf_sharding(path, w.shape, mesh, fsdp), params)


def shard_weights(params, mesh: Mesh, fsdp: bool = False):
    """`params` placed on `mesh` by the logical-axis table (each device holds its shards only)."""
    return jax.device_put(params, weight_shardings(params, mesh, fsdp))


def layer_sharding(stack: NamedSharding) -> NamedSharding:
    """The sharding of one layer [i] of a stacked weight placed as `stack` (its spec without the L axis)."""
    spec = tuple(stack.spec) + (None,) * (1 - len(stack.spec))
    return NamedSharding(stack.mesh, PartitionSpec(*spec[1:]))


def shard_images(pixels: jax.Array, mesh: Mesh | None) -> jax.Array:
    """Constrain the leading image axis of `pixels` (I, ...) to BATCH_AXIS (inside jit; identity without a mesh),
    so the vision tower encodes each device's images locally. An I the data axis does not divide (an eval's last
    partial batch) is left unconstrained: GSPMD would otherwise split the program's pixel input over a sub-mesh
    (e.g. 2 of 8 devices), a sharding that no NamedSharding of `mesh` can express."""
    if mesh is None or BATCH_AXIS not in mesh.shape or pixels.shape[0] % mesh.shape[BATCH_AXIS]:
        return pixels
    spec = PartitionSpec(BATCH_AXIS, *([None] * (pixels.ndim - 1)))
    return jax.lax.with_sharding_constraint(pixels, NamedSharding(mesh, spec))


def image_parallel(params, batch: dict, mesh: Mesh):
    """(params, batch) for the family's embed under `mesh` (inside jit): the image axis of the family's pixel
    inputs (IMAGE_AXIS_INPUTS) sharded over BATCH_AXIS, and every weight outside the text decoder constrained to
    its tensor-parallel sharding (FSDP's data split gathered before the towers; a no-op without FSDP), so the
    towers run image-parallel instead of splitting their activations' width over the data axis."""
    batch = dict(batch)
    for name in IMAGE_AXIS_INPUTS.get(params.config.family, ()):
        batch[name] = shard_images(jnp.asarray(batch[name]), mesh)

    def gathered(path, w):
        return jax.lax.with_sharding_constraint(w, leaf_sharding(path, w.shape, mesh))

    towers = jax.tree_util.tree_map_with_path(gathered, {k: v for k, v in params.weights.items() if k != "text"})
    return params.replace(weights={**params.weights, **towers}), batch


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def pad_rows(tree, batch: int, multiple: int, batch_axis_of=lambda path, a: 0):
    """Pad the batch axis of every array in `tree` to a multiple of `multiple` with copies of row 0."""
    extra = (-batch) % multiple
    if not extra:
        return tree

    def pad(path, a):
        axis = batch_axis_of(path, a)
        first = jax.lax.slice_in_dim(a, 0, 1, axis=axis)
        return jnp.concatenate([a] + [first] * extra, axis=axis)

    return jax.tree_util.tree_map_with_path(pad, tree)


def _state_batch_axis(path, a) -> int:
    return 1 if path and getattr(path[-1], "name", None) == "positions" else 0


def shard_state(state: TokenState, mesh: Mesh | None) -> TokenState:
    """Pad the batch to the mesh size and constrain every field's batch axis to BATCH_AXIS."""
    if mesh is None:
        return state
    state = pad_rows(state, state.batch, mesh.shape[BATCH_AXIS], _state_batch_axis)

    def constrain(path, a):
        spec = [None] * a.ndim
        spec[_state_batch_axis(path, a)] = BATCH_AXIS
        return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, PartitionSpec(*spec)))

    return jax.tree_util.tree_map_with_path(constrain, state)


def spans_processes(mesh: Mesh | None) -> bool:
    """Whether `mesh` holds devices of more than one process (multi-host after jax.distributed.initialize)."""
    return mesh is not None and len({d.process_index for d in mesh.devices.flat}) > 1


def host_readable(tree, mesh: Mesh | None):
    """Replicate the outputs over a multi-process mesh so that every process can read every row.

    A row-sharded output of a multi-process program spans devices another process owns, and np.asarray on it
    fails; the all-gather is done here, inside the program. Identity for one process, whose sharded outputs are
    addressable as they are.
    """
    if not spans_processes(mesh):
        return tree
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, replicated(mesh)), tree)
