"""The command line's `--mesh data=D,model=M` (jaxvlm generate and jaxvlm eval): parsed, and turned into a mesh
over this process's devices (jaxvlm.engine.sharding's data_mesh / model_mesh)."""

from __future__ import annotations

from jaxvlm.errors import UserError


def parse_mesh_spec(value: str | None) -> tuple[int | None, int]:
    """`data=D[,model=M]` -> (D or None, M): D devices on the data axis, M on the model axis (default 1)."""
    if value is None:
        return None, 1
    axes = dict(item.strip().partition("=")[::2] for item in value.split(","))
    if not axes or not set(axes) <= {"data", "model"} or not all(v.isdigit() and int(v) >= 1 for v in axes.values()):
        raise UserError(f"--mesh {value!r}: expected data=D[,model=M] (data parallelism over D devices of each "
                        "process, tensor parallelism over M)")
    return (int(axes["data"]) if "data" in axes else None), int(axes.get("model", 1))


def local_mesh(data: int | None, model: int = 1):
    """(mesh or None, data-axis size): a (data x model) mesh over this process's first devices (data default:
    all devices / model); a 1-D data mesh when model == 1, None for one device."""
    import jax

    from jaxvlm.engine.sharding import data_mesh, model_mesh

    devices = jax.local_devices()
    spec = f"model={model}" if data is None else f"data={data},model={model}"
    data = len(devices) // model if data is None else data
    if data < 1 or model < 1 or data * model > len(devices):
        raise UserError(f"--mesh {spec}: this process has {len(devices)} device(s)")
    if data * model == 1:
        return None, 1
    return (data_mesh(devices[:data]) if model == 1 else model_mesh(data, model, devices)), data
