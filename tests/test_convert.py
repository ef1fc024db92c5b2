"""Checkpoint conversion of LLaVA: every HF key layout (single file and sharded), float32 / bfloat16, orbax
round trip, `python -m converters`, clear errors that leave nothing half-written, progress, copied processor
files and the safe-destination rules (the user-facing cases are in tests/bad_inputs/convert.py)."""

from __future__ import annotations

import copy
import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.numpy import save_file

import jaxvlm
from converters import ConversionError, export, table_for
from converters.__main__ import main as convert_main
from converters.core import flatten
from jaxvlm import io
from jaxvlm.models import llava
from jaxvlm.config import UnsupportedConfigError
from llava_reference import hf_config_dict, to_jax, torch_model

LAYOUTS = ("hub", "save_pretrained", "memory", "memory_hubvision")


def leaves_equal(a, b, atol=0.0):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb):
        assert x.shape == y.shape and x.dtype == y.dtype, p
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=atol, rtol=0,
                                   err_msg=str(p))


def write_checkpoint(path, tensors: dict, config: dict, shards: int = 1) -> str:
    """A HF-style directory: config.json + one safetensors file or `shards` files with an index."""
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    if shards == 1:
        save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
        return str(path)
    keys, weight_map = sorted(tensors), {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[s::shards]}
        save_file(part, os.path.join(path, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return str(path)


def read_all(path) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, f)))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(torch model, its weights converted in memory, config dict, save_pretrained directory)."""
    config = hf_config_dict(gqa=True, text_layers=2, vision_layers=2)
    model = torch_model(config)
    path = tmp_path_factory.mktemp("hf") / "save_pretrained"
    model.save_pretrained(path)
    return model, to_jax(model, config), config, str(path)


def test_save_pretrained_layout_loads(reference):
    model, params, config, path = reference
    loaded = io.load(path)
    assert loaded.config == params.config
    leaves_equal(loaded.weights, params.weights)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shards", [1, 3])
def test_every_layout_round_trips(reference, tmp_path, layout, shards):
    """jax -> HF (layout) -> jax is the identity, single file or sharded with an index."""
    _, params, config, _ = reference
    tensors = dict(export(table_for(params.config), params.weights, layout))
    path = write_checkpoint(tmp_path / layout, tensors, config, shards=shards)
    leaves_equal(io.load(path).weights, params.weights)


def test_export_reproduces_save_pretrained_files(reference):
    """HF -> jax -> HF (save_pretrained layout) gives back exactly the files transformers wrote."""
    _, _, _, path = reference
    original = read_all(path)
    exported = dict(export(table_for(io.load(path).config), io.load(path).weights, "save_pretrained"))
    assert sorted(exported) == sorted(original)
    for k, v in original.items():
        np.testing.assert_array_equal(exported[k], v, err_msg=k)


def test_hub_key_names(reference):
    """The Hub layout is what llava-hf/llava-1.5-7b-hf serves (spot-check the three prefixes)."""
    _, params, _, _ = reference
    keys = {k for k, _ in export(table_for(params.config), params.weights, "hub")}
    for k in ("language_model.model.layers.1.self_attn.q_proj.weight", "language_model.lm_head.weight",
              "vision_tower.vision_model.encoder.layers.0.self_attn.out_proj.bias",
              "vision_tower.vision_model.embeddings.patch_embedding.weight", "multi_modal_projector.linear_2.bias",
              "vision_tower.vision_model.pre_layrnorm.weight"):
        assert k in keys, k


def test_bfloat16_checkpoint_and_dtype(reference, tmp_path):
    model, params, config, _ = reference
    path = tmp_path / "bf16"
    copy.deepcopy(model).to(torch.bfloat16).save_pretrained(path)  # the shared fixture model stays float32
    loaded16 = io.load(str(path), dtype="bfloat16")
    assert {str(a.dtype) for a in jax.tree.leaves(loaded16.weights)} == {"bfloat16"}
    expect16 = jax.tree.map(lambda a: a.astype("bfloat16"), params.weights)
    leaves_equal(loaded16.weights, expect16)  # bf16 -> bf16 is exact
    loaded32 = io.load(str(path), dtype="float32")
    assert {str(a.dtype) for a in jax.tree.leaves(loaded32.weights)} == {"float32"}
    leaves_equal(loaded32.weights, jax.tree.map(lambda a: a.astype("float32"), expect16))
    with pytest.raises(ValueError, match="float16"):
        io.load(str(path), dtype="float16")


def test_tied_embeddings_with_and_without_head(tmp_path):
    config = hf_config_dict(gqa=True, text_layers=1, vision_layers=1, feature_layer=-1, tie=True)
    params = to_jax(torch_model(config), config)
    tensors = dict(export(table_for(params.config), params.weights, "hub"))
    assert "language_model.lm_head.weight" not in tensors
    leaves_equal(io.load(write_checkpoint(tmp_path / "a", tensors, config)).weights, params.weights)
    tensors["language_model.lm_head.weight"] = tensors["language_model.model.embed_tokens.weight"]
    leaves_equal(io.load(write_checkpoint(tmp_path / "b", tensors, config)).weights, params.weights)


def _hub_tensors(params):
    return dict(export(table_for(params.config), params.weights, "hub"))


def test_missing_unexpected_and_misshaped_tensors_are_named(reference, tmp_path):
    _, params, config, _ = reference
    t = _hub_tensors(params)
    del t["vision_tower.vision_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(ConversionError, match=r"missing tensor\(s\).*encoder\.layers\.1\.mlp\.fc2\.bias"):
        io.load(write_checkpoint(tmp_path / "missing", t, config))
    t = _hub_tensors(params)
    t["language_model.model.layers.0.self_attn.q_proj.lora_A"] = np.zeros((2, 2), np.float32)
    with pytest.raises(ConversionError, match=r"unexpected tensor\(s\).*q_proj\.lora_A"):
        io.load(write_checkpoint(tmp_path / "unexpected", t, config))
    t = _hub_tensors(params)
    t["multi_modal_projector.linear_1.weight"] = np.zeros((64, 33), np.float32)
    with pytest.raises(ConversionError, match=r"linear_1\.weight: \(64, 33\) \(expected \(64, 32\)\)"):
        io.load(write_checkpoint(tmp_path / "shape", t, config))


def test_unknown_config_attribute_in_checkpoint(reference, tmp_path):
    _, params, config, _ = reference
    bad = dict(config, vision_feature_pooling="max")
    with pytest.raises(UnsupportedConfigError, match="vision_feature_pooling"):
        io.load(write_checkpoint(tmp_path / "cfg", _hub_tensors(params), bad))


def test_failed_conversion_leaves_nothing(reference, tmp_path, monkeypatch):
    _, params, config, _ = reference
    t = _hub_tensors(params)
    del t["language_model.model.norm.weight"]
    src = write_checkpoint(tmp_path / "src", t, config, shards=2)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="language_model.model.norm.weight"):
        convert_main([src, str(out), "--quiet"])
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["src"]
    # A failure after orbax has written the weights (here: writing the metadata) also leaves nothing.
    good = write_checkpoint(tmp_path / "good", _hub_tensors(params), config)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(io.json, "dump", boom)
    with pytest.raises(OSError, match="disk full"):
        convert_main([good, str(out), "--quiet"])
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["good", "src"]


def test_convert_cli_and_orbax_round_trip(reference, tmp_path):
    _, params, _, path = reference
    dst = tmp_path / "jaxvlm"
    assert convert_main([path, str(dst), "--quiet"]) == 0
    loaded = io.load(str(dst))
    assert loaded.config == params.config
    leaves_equal(loaded.weights, params.weights)
    with pytest.raises(FileExistsError):
        convert_main([path, str(dst), "--quiet"])
    assert convert_main([path, str(dst), "--quiet", "--force", "--dtype", "bfloat16"]) == 0
    with open(dst / io.META_FILE) as f:
        assert json.load(f)["dtype"] == "bfloat16"  # stored as bfloat16 (half the bytes)
    as16 = io.load(str(dst), dtype="bfloat16")
    assert {str(a.dtype) for a in jax.tree.leaves(as16.weights)} == {"bfloat16"}
    leaves_equal(io.load(str(dst), dtype="float32").weights,
                 jax.tree.map(lambda a: a.astype("bfloat16").astype("float32"), params.weights))
    # save(load(x)) round trip through orbax
    again = tmp_path / "again"
    io.save(loaded, str(again))
    leaves_equal(io.load(str(again)).weights, params.weights)


def test_jaxvlm_cli_dispatches_convert(reference, tmp_path):
    from jaxvlm.cli import main as cli_main

    _, params, _, path = reference
    assert cli_main(["convert", path, str(tmp_path / "x"), "--quiet"]) == 0
    leaves_equal(io.load(str(tmp_path / "x")).weights, params.weights)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_transformers_reads_every_exported_layout(reference, tmp_path, layout):
    """transformers' own loader accepts each layout we write (no missing / unexpected keys, same weights),
    so the key names of every layout are ones transformers really uses."""
    from transformers import LlavaForConditionalGeneration

    model, params, config, _ = reference
    path = write_checkpoint(tmp_path / layout, dict(export(table_for(params.config), params.weights, layout)), config)
    reloaded, info = LlavaForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not any(info.values()), info
    ours, theirs = model.state_dict(), reloaded.state_dict()
    assert sorted(ours) == sorted(theirs)
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_float16_hub_checkpoint(reference, tmp_path):
    """llava-hf files on the Hub are float16: they load as float32 or bfloat16."""
    _, params, config, _ = reference
    tensors = {k: v.astype(np.float16) for k, v in export(table_for(params.config), params.weights, "hub")}
    path = write_checkpoint(tmp_path / "f16", tensors, config, shards=2)
    expect = jax.tree.map(lambda a: np.asarray(a).astype(np.float16).astype(np.float32), params.weights)
    leaves_equal(io.load(path).weights, expect)
    loaded16 = io.load(path, dtype="bfloat16")
    leaves_equal(loaded16.weights, jax.tree.map(lambda a: a.astype("bfloat16"), expect))


# ------------------------------------------------------------------ progress, processor files, safe writes


def test_load_progress_names_the_path(reference, tmp_path, capsys):
    """`load(progress=True)`: a per-tensor bar "loading PATH" for HF directories, one line for orbax restores."""
    _, params, _, path = reference
    io.load(path, progress=True)
    err = capsys.readouterr().err
    n = sum(a.shape[0] if "/layers/" in p else 1 for p, a in flatten(params.weights).items())
    assert f"loading {path}" in err and f"{n}/{n}" in err
    io.save(params, str(tmp_path / "saved"))
    io.load(str(tmp_path / "saved"), progress=True)
    assert capsys.readouterr().err == f"loading {tmp_path / 'saved'} (orbax checkpoint)\n"
    io.load(str(tmp_path / "saved"))
    assert capsys.readouterr().err == ""


def test_converted_checkpoint_carries_its_processor(reference, tmp_path):
    """A real LLaVA processor saved beside the weights is copied by convert, and the converted directory
    tokenizes exactly like the source (so generate / eval need no --processor)."""
    from experiments.assets import llava_processor_dir

    _, _, _, path = reference
    src = tmp_path / "src"
    shutil.copytree(path, src)
    llava_processor_dir(src)
    assert convert_main([str(src), str(tmp_path / "dst"), "--quiet"]) == 0
    text = "USER: <image>\nWhat is in the picture? ASSISTANT:"
    image = np.zeros((40, 60, 3), np.uint8)
    a = jaxvlm.Processor.from_pretrained(src)(text=text, images=[image])
    b = jaxvlm.Processor.from_pretrained(tmp_path / "dst")(text=text, images=[image])
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_missing_layer_is_reported_once(reference):
    """A tensor missing from one layer is missing (once); missing from all layers, one line for all."""
    from converters.core import DictReader, plan

    _, params, _, _ = reference
    t = _hub_tensors(params)
    del t["language_model.model.layers.1.self_attn.k_proj.weight"]
    for k in [k for k in t if k.endswith("mlp.fc1.weight")]:
        del t[k]
    shapes = llava.weight_shapes(params.config)
    with pytest.raises(ConversionError) as e:
        plan(table_for(params.config), shapes, DictReader(t))
    msg = str(e.value)
    assert "'language_model.model.layers.1.self_attn.k_proj.weight'" in msg
    assert "'vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight (and layers 1..1)'" in msg
    assert "unexpected" not in msg and msg.count("k_proj") == 1


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(st.sampled_from([np.float32, np.float16]), hnp.array_shapes(max_dims=3, max_side=5),
                  elements=st.sampled_from([0.0, 1.5, -2.0, np.nan, np.inf, -np.inf])))
def test_check_finite_counts_nan_and_inf(a):
    from converters.core import check_finite

    for x in (a, a.astype(ml_dtypes.bfloat16)):
        nan, inf = int(np.isnan(a).sum()), int(np.isinf(a).sum())
        if nan + inf == 0:
            check_finite("t", x, "f")
        else:
            with pytest.raises(ConversionError, match=rf"tensor t in f has {nan} NaN and {inf} Inf value\(s\) of"):
                check_finite("t", x, "f")
    check_finite("ids", np.arange(3), "f")  # integer tensors hold no NaN


def test_leftovers_of_dead_runs_only(tmp_path):
    """Dead runs' work dirs go (an `.old-` copy whose destination vanished is put back); live runs', other
    hosts' and unrelated hidden dirs stay."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)

    def work(name, kind, pid, host=None):
        p = io.work_dir(str(tmp_path / name), kind, pid=pid)
        if host is not None:
            p = p.replace(f".{kind}-{io._host()}-", f".{kind}-{host}-")
        os.mkdir(p)
        (tmp_path / p / "f").write_text(name)
        return os.path.basename(p)

    os.mkdir(tmp_path / "present")
    gone = [work("a", "partial", dead_pid), work("present", "old", dead_pid)]
    restored = work("vanished", "old", dead_pid)
    kept = [work("b", "partial", os.getppid()), work("c", "partial", dead_pid, host="elsewhere"),
            work("d", "partial", os.getpid())]
    os.mkdir(tmp_path / ".d.partial-unrelated")
    assert sorted(io.remove_leftovers(str(tmp_path))) == sorted(gone + [restored])
    assert sorted(os.listdir(tmp_path)) == sorted(kept + [".d.partial-unrelated", "present", "vanished"])
    assert (tmp_path / "vanished" / "f").read_text() == "vanished"


def test_failed_swap_puts_the_old_copy_back(reference, tmp_path, monkeypatch):
    _, params, _, _ = reference
    dst = tmp_path / "dst"
    io.save(params, str(dst))
    before = sorted(os.listdir(dst))
    real_rename, calls = os.rename, []

    def rename(a, b):
        calls.append(b)
        if len(calls) == 2:  # the new copy into place
            raise OSError("device busy")
        real_rename(a, b)

    monkeypatch.setattr(io.os, "rename", rename)
    with pytest.raises(OSError, match="device busy"):
        io.save(params, str(dst), overwrite=True)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["dst"] and sorted(os.listdir(dst)) == before


def test_destination_rules(tmp_path):
    (tmp_path / "empty").mkdir()
    assert io.prepare_destination(str(tmp_path / "empty"), overwrite=True) == str(tmp_path / "empty")
    (tmp_path / "file").write_text("x")
    with pytest.raises(io.DestinationError, match="file exists and is not a jaxvlm directory"):
        io.prepare_destination(str(tmp_path / "file"), overwrite=True)
    with pytest.raises(io.DestinationError, match="empty exists; pass overwrite=True"):
        io.prepare_destination(str(tmp_path / "empty"))
    assert io.prepare_destination(str(tmp_path / "a"), src=str(tmp_path / "ab")) == str(tmp_path / "a")


def test_device_finiteness_reduction_flags_the_nan_leaf():
    """The accelerator path of the restore-time check (one jitted reduction) agrees with numpy."""
    flat = {"a/x": jax.numpy.ones((3, 2)), "b": jax.numpy.array([1.0, np.nan]).astype("bfloat16"),
            "c": jax.numpy.array([np.inf])}
    assert jax.device_get(io._all_finite(flat)) == {"a/x": True, "b": False, "c": False}
    assert io._nonfinite_leaves({"a": {"x": flat["a/x"]}, "b": flat["b"], "c": flat["c"]}) == ["b", "c"]


def test_force_onto_a_symlink_replaces_the_link_only(reference, tmp_path):
    """--force onto a link to a jaxvlm directory: the link becomes the new directory, the old one stays."""
    _, params, _, path = reference
    io.save(params, str(tmp_path / "target"))
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert convert_main([path, str(tmp_path / "link"), "--quiet", "--force", "--dtype", "bfloat16"]) == 0
    assert not (tmp_path / "link").is_symlink() and io.is_jaxvlm_dir(str(tmp_path / "link"))
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]
    leaves_equal(io.load(str(tmp_path / "target")).weights, params.weights)
