"""Data parallelism over the batch axis: the one place where the engine's sharding is declared.

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
2 processes on one machine). Larger models would add a "model" mesh axis and a logical-axis rule table here; the
engine code would not change.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxvlm.engine.state import TokenState

BATCH_AXIS = "data"


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named BATCH_AXIS over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (BATCH_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices)


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
    state = pad_rows(state, state.batch, mesh.size, _state_batch_axis)

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
