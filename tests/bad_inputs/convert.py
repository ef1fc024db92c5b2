"""Catalogue: checkpoint conversion and loading (`jaxvlm convert`, `python -m converters`, `jaxvlm.load`).

Every case works on a tiny random LLaVA in the Hub key layout (2 text layers, 1 vision layer, 336px /
patch 14), written as a Hugging Face directory with tokenizer / processor side files.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from llava_reference import IMAGE_TOKEN, hf_config_dict

from bad_inputs import Case, expect_cli_error, expect_user_error, run_cli

REPO = Path(__file__).resolve().parents[2]
SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
# Side files a Hub checkpoint carries (contents are only compared, never parsed, except processor_config).
SIDE = {
    "tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}',
    "tokenizer_config.json": '{"processor_class": "LlavaProcessor", "model_max_length": 4096}',
    "special_tokens_map.json": '{"bos_token": "<s>"}',
    "processor_config.json": '{"processor_class": "LlavaProcessor", "patch_size": 14}',
    "preprocessor_config.json": '{"image_processor_type": "CLIPImageProcessor", "crop_size": 336}',
    "chat_template.jinja": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    "generation_config.json": '{"bos_token_id": 1, "eos_token_id": 2}',
}
NAN_TENSOR = "language_model.model.layers.1.mlp.up_proj.weight"


def hf_config(**top) -> dict:
    return dict(hf_config_dict(gqa=True, text_layers=2, vision_layers=1), **top)


@functools.lru_cache(maxsize=None)
def _hub_tensors(config_json: str) -> dict:
    from converters import export, table_for
    from jaxvlm.model import random_params
    from jaxvlm.models import llava

    cfg = llava.parse_config(json.loads(config_json))
    params = random_params(cfg, seed=0, std=0.1)
    return {k: np.ascontiguousarray(v) for k, v in export(table_for(cfg), params.weights, "hub")}


def checkpoint(path: Path, config: dict | None = None, edit=None, side: bool = True) -> Path:
    """A Hugging Face LLaVA directory at `path`: config.json, two shards + index, SIDE files; `edit(tensors)`
    changes the (copied) tensors dict first."""
    from safetensors.numpy import save_file

    config = config or hf_config()
    tensors = {k: v.copy() for k, v in _hub_tensors(json.dumps(config, sort_keys=True)).items()}
    if edit is not None:
        edit(tensors)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    keys, weight_map = sorted(tensors), {}
    for s, name in enumerate(SHARDS):
        save_file({k: tensors[k] for k in keys[s::2]}, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in keys[s::2]})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    for name, text in SIDE.items() if side else ():
        (path / name).write_text(text)
    return path


def listing(path: Path) -> dict:
    """{relative file: bytes} of a directory tree (to show it is untouched)."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def convert(*args: str) -> tuple[int, str, str]:
    return run_cli(["convert", *map(str, args), "--quiet"])


def python_m_converters(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "converters", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


def assert_converted(dst: Path, src: Path) -> None:
    """`dst` is a jaxvlm directory holding `src`'s weights (bit-exact in float32)."""
    import jaxvlm
    from jaxvlm.io import META_FILE

    assert (dst / META_FILE).is_file()
    a, b = jaxvlm.load(dst), jaxvlm.load(src)
    for x, y in zip(*(jax_leaves(m.weights) for m in (a, b))):
        np.testing.assert_array_equal(x, y)


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


# ----------------------------------------------------------------------------------------- the cases


def _src_is_dst(tmp):
    src = checkpoint(tmp / "hf")
    before = listing(src)
    expect_cli_error(["convert", str(src), str(src), "--force"], r"is the source")
    assert listing(src) == before


def _dst_inside_src(tmp):
    src = checkpoint(tmp / "hf")
    before = listing(src)
    expect_cli_error(["convert", str(src), str(src / "jax")], r"hf/jax is inside the source")
    assert listing(src) == before


def _src_inside_dst(tmp):
    src = checkpoint(tmp / "outer" / "hf")
    before = listing(src)
    expect_cli_error(["convert", str(src), str(tmp / "outer"), "--force"], r"outer contains the source")
    assert listing(src) == before


def _dst_symlink_to_src(tmp):
    src = checkpoint(tmp / "hf")
    (tmp / "link").symlink_to(src)
    expect_cli_error(["convert", str(src), str(tmp / "link"), "--force"], r"link is the source")
    assert (tmp / "link").is_symlink() and "config.json" in listing(src)


def _dst_exists_refused_first(tmp):
    src = checkpoint(tmp / "hf")
    (src / SHARDS[1]).write_bytes(b"garbage")  # would fail if it were read: the destination is checked first
    (tmp / "out").mkdir()
    line = expect_cli_error(["convert", str(src), str(tmp / "out")], r"out exists; pass --force to replace it")
    assert "overwrite=True" not in line
    from converters.__main__ import convert_checkpoint

    expect_user_error(lambda: convert_checkpoint(str(src), str(tmp / "out")), r"exists; pass overwrite=True")


def _force_refuses_non_jaxvlm_dir(tmp):
    src = checkpoint(tmp / "hf")
    (tmp / "notes").mkdir()
    (tmp / "notes" / "thesis.tex").write_text("years of work")
    expect_cli_error(["convert", str(src), str(tmp / "notes"), "--force"], r"notes exists and is not a jaxvlm")
    assert (tmp / "notes" / "thesis.tex").read_text() == "years of work"


def _force_replaces_jaxvlm_dir(tmp):
    src = checkpoint(tmp / "hf")
    assert convert(src, tmp / "out")[0] == 0
    code, _, err = convert(src, tmp / "out", "--force", "--dtype", "bfloat16")
    assert code == 0, err
    assert json.loads((tmp / "out" / "jaxvlm.json").read_text())["dtype"] == "bfloat16"
    assert sorted(p.name for p in tmp.iterdir()) == ["hf", "out"]  # nothing left beside it


def _normal_permissions(tmp):
    src = checkpoint(tmp / "hf")
    old = os.umask(0o022)
    try:
        assert convert(src, tmp / "out")[0] == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp / "out" / "tokenizer.json").stat().st_mode) == 0o644


KILL_DURING_WRITE = ("import os, signal, sys; from jaxvlm import io; "
                     "io.json.dump = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
                     "from converters.__main__ import main; main(sys.argv[1:])")


def _killed_run_leftovers_removed(tmp):
    from jaxvlm import io

    src = checkpoint(tmp / "hf")
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(src), str(tmp / "out"), "--quiet"],
                            cwd=REPO, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    leftovers = [p.name for p in tmp.iterdir() if p.name.startswith(".out.partial-")]
    assert len(leftovers) == 1 and not (tmp / "out").exists()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # a concurrent run
    try:
        live_dir = Path(io.work_dir(str(tmp / "out"), "partial", pid=live.pid))
        live_dir.mkdir()
        assert convert(src, tmp / "out")[0] == 0
        assert sorted(p.name for p in tmp.iterdir()) == sorted(["hf", "out", live_dir.name])
    finally:
        live.kill()
        live.wait()


def _copies_processor_files(tmp):
    from jaxvlm.processor import detect_family

    src = checkpoint(tmp / "hf")
    assert convert(src, tmp / "out")[0] == 0
    for name in SIDE:
        assert (tmp / "out" / name).read_bytes() == (src / name).read_bytes(), name
    assert detect_family(str(tmp / "out")) == "llava"


def _missing_processor_says_processor(tmp):
    import jaxvlm

    src = checkpoint(tmp / "hf", side=False)
    assert convert(src, tmp / "out")[0] == 0
    expect_user_error(lambda: jaxvlm.Processor.from_pretrained(tmp / "out"), r"pass --processor DIR")


def _truncated_shard(tmp):
    src = checkpoint(tmp / "hf")
    shard = src / SHARDS[1]
    os.truncate(shard, shard.stat().st_size // 2)
    expect_cli_error(["convert", str(src), str(tmp / "out")], rf"{SHARDS[1]}: invalid safetensors header")
    assert not (tmp / "out").exists()


def _shard_header_cut(tmp):
    src = checkpoint(tmp / "hf")
    os.truncate(src / SHARDS[0], 5)
    expect_cli_error(["convert", str(src), str(tmp / "out")], rf"{SHARDS[0]}: invalid safetensors header")


def _index_invalid_json(tmp):
    src = checkpoint(tmp / "hf")
    (src / "model.safetensors.index.json").write_text('{"metadata": {},\n "weight_map": {')
    expect_cli_error(["convert", str(src), str(tmp / "out")],
                     r"model\.safetensors\.index\.json: invalid JSON at line 2")


def _index_without_weight_map(tmp):
    src = checkpoint(tmp / "hf")
    (src / "model.safetensors.index.json").write_text('{"metadata": {}}')
    expect_cli_error(["convert", str(src), str(tmp / "out")], r"index\.json: not a safetensors index")


def _index_names_missing_shard(tmp):
    src = checkpoint(tmp / "hf")
    (src / SHARDS[1]).unlink()
    expect_cli_error(["convert", str(src), str(tmp / "out")], rf"index\.json: shard file\(s\) \['{SHARDS[1]}'\]")


def _config_invalid_json(tmp):
    src = checkpoint(tmp / "hf")
    (src / "config.json").write_text('{"model_type": "llava",\n "text_config": ,\n}')
    expect_cli_error(["convert", str(src), str(tmp / "out")], r"config\.json: invalid JSON at line 2 column 17")
    import jaxvlm

    expect_user_error(lambda: jaxvlm.load(src), r"config\.json: invalid JSON at line 2")


def _missing_layer0_tensor(tmp):
    src = checkpoint(tmp / "hf", edit=lambda t: t.pop("language_model.model.layers.0.mlp.up_proj.weight"))
    line = expect_cli_error(["convert", str(src), str(tmp / "out"), "--quiet"],
                            r"missing tensor\(s\): \['language_model\.model\.layers\.0\.mlp\.up_proj\.weight'\]")
    assert "unexpected" not in line and "layers 1" not in line


def _nan_weight(tmp):
    def poison(t):
        t[NAN_TENSOR][3, 4] = np.nan
        t[NAN_TENSOR][0, 0] = np.inf

    src = checkpoint(tmp / "hf", edit=poison)
    expect_cli_error(["convert", str(src), str(tmp / "out"), "--quiet"],
                     rf"tensor {NAN_TENSOR} in .*\.safetensors has 1 NaN and 1 Inf value")
    assert not (tmp / "out").exists()
    import jaxvlm

    expect_user_error(lambda: jaxvlm.load(src), rf"tensor {NAN_TENSOR} .* 1 NaN")
    code, _, err = convert(src, tmp / "out", "--allow-nonfinite")
    assert code == 0, err


def _nan_weight_in_jaxvlm_dir(tmp):
    import jax.numpy as jnp

    import jaxvlm
    from jaxvlm.model import random_params
    from jaxvlm.models import llava

    params = random_params(llava.parse_config(hf_config()), seed=0)
    weights = dict(params.weights, projector=dict(params.weights["projector"], b1=jnp.full((64,), jnp.nan)))
    jaxvlm.save(type(params)(weights=weights, config=params.config), tmp / "saved")
    expect_user_error(lambda: jaxvlm.load(tmp / "saved"), r"tensor projector/b1 in .*saved/weights has 64 NaN")
    assert np.isnan(np.asarray(jaxvlm.load(tmp / "saved", allow_nonfinite=True).weights["projector"]["b1"])).all()


def _corrupt_orbax_weights(tmp):
    import jaxvlm

    assert convert(checkpoint(tmp / "hf"), tmp / "out")[0] == 0
    for f in (tmp / "out" / "weights").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:50])
    expect_user_error(lambda: jaxvlm.load(tmp / "out"), r"out/weights: cannot restore the orbax checkpoint")
    (tmp / "out" / "jaxvlm.json").write_text("{")
    expect_user_error(lambda: jaxvlm.load(tmp / "out"), r"out/jaxvlm\.json: invalid JSON at line 1")


def _full_strategy_stale_seq_length(tmp):
    import jaxvlm
    from jaxvlm.models import llava

    config = hf_config(vision_feature_select_strategy="full", image_seq_length=576)
    src = checkpoint(tmp / "hf", config=config)
    code, _, err = convert(src, tmp / "out")
    assert code == 0, err
    cfg = jaxvlm.load(tmp / "out").config
    assert cfg.feature_strategy == "full" and cfg.tokens_per_image == 577
    image = IMAGE_TOKEN
    pixels = np.zeros((1, 3, 336, 336), np.float32)
    ok = llava.prepare(cfg, np.array([[1] + [image] * 577 + [2]]), pixel_values=pixels)
    assert ok["visual"].sum() == 577
    with pytest.raises(ValueError, match=r"576 image tokens .* 577"):  # the count check on the actual ids
        llava.prepare(cfg, np.array([[1] + [image] * 576 + [2]]), pixel_values=pixels)


def _help_prog(tmp):
    code, out, _ = run_cli(["convert", "--help"])
    assert code == 0 and out.startswith("usage: jaxvlm convert ")
    proc = python_m_converters("--help")
    assert proc.returncode == 0 and proc.stdout.startswith("usage: python -m converters ")


def _python_m_converters_user_error(tmp):
    src = checkpoint(tmp / "hf")
    proc = python_m_converters(src, src)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("python -m converters: error: destination ") and "is the source" in proc.stderr


def _source_already_converted(tmp):
    assert convert(checkpoint(tmp / "hf"), tmp / "out")[0] == 0
    expect_cli_error(["convert", str(tmp / "out"), str(tmp / "again")], r"out is already a jaxvlm directory")


def _convert_ok(tmp):
    src = checkpoint(tmp / "hf")
    code, out, err = convert(src, tmp / "out")
    assert code == 0, err
    assert f"converted {src} -> {tmp / 'out'}" in out
    assert_converted(tmp / "out", src)


def _missing_source(tmp):
    expect_cli_error(["convert", str(tmp / "nope"), str(tmp / "out")], r"nope is not a directory")
    (tmp / "out").mkdir()
    expect_cli_error(["convert", str(tmp / "nope"), str(tmp / "out")], r"nope is not a directory")


CASES = [
    Case("convert_src_is_dst", "jaxvlm convert SRC SRC --force",
         "exit 0; SRC replaced by the jaxvlm dir: weights, tokenizer, processor files deleted",
         "exit 2 'destination SRC is the source SRC; refusing ...'; SRC untouched", _src_is_dst),
    Case("convert_dst_inside_src", "jaxvlm convert SRC SRC/jax",
         "exit 0; jaxvlm dir written inside the source checkpoint",
         "exit 2 'destination SRC/jax is inside the source'; nothing written", _dst_inside_src),
    Case("convert_src_inside_dst", "jaxvlm convert DIR/hf DIR --force",
         "exit 0; DIR (holding the source) replaced: source deleted",
         "exit 2 'destination DIR contains the source'; source untouched", _src_inside_dst),
    Case("convert_dst_symlink_to_src", "jaxvlm convert SRC LINK --force (LINK -> SRC)",
         "exit 0; the symlink replaced by a jaxvlm dir",
         "exit 2 'destination LINK is the source' (resolved paths compared)", _dst_symlink_to_src),
    Case("convert_dst_exists", "jaxvlm convert SRC EXISTING",
         "read all of SRC first (here: traceback SafetensorError 'header too small' on its broken shard); with "
         "a good SRC, converted everything, then traceback FileExistsError '... pass overwrite=True' (exit 1)",
         "exit 2 'EXISTING exists; pass --force to replace it' before any tensor is read; API keeps "
         "'pass overwrite=True'", _dst_exists_refused_first),
    Case("convert_force_onto_other_dir", "jaxvlm convert SRC ~/notes --force (not a jaxvlm dir)",
         "exit 0; ~/notes and everything in it deleted",
         "exit 2 'notes exists and is not a jaxvlm directory; refusing to replace it'", _force_refuses_non_jaxvlm_dir),
    Case("convert_force_ok", "jaxvlm convert SRC DST --force (DST a jaxvlm dir)", "exit 0, replaced",
         "exit 0, replaced; nothing left beside it", _force_replaces_jaxvlm_dir, ok=True),
    Case("convert_permissions", "jaxvlm convert SRC DST (umask 022)", "DST mode 0700 (tempfile.mkdtemp)",
         "DST mode 0755, files 0644 (the umask's)", _normal_permissions),
    Case("convert_killed_leftovers", "SIGKILL during jaxvlm convert, then convert again",
         "hidden .DST.partial-XXXXXXXX (0700) left forever; later runs never remove it",
         "work dir named .DST.partial-HOST-PID-XXXXXXXX; the next run removes it (process dead), keeps a live "
         "run's", _killed_run_leftovers_removed),
    Case("convert_copies_processor_files", "jaxvlm convert SRC DST; jaxvlm generate DST ...",
         "only jaxvlm.json + weights/; generate: traceback ValueError 'cannot tell which processor'",
         "tokenizer / processor / chat template / generation config copied; processor detected",
         _copies_processor_files),
    Case("convert_processor_missing", "Processor.from_pretrained(converted dir without processor files)",
         "ValueError 'cannot tell which processor this is' (no hint)",
         "UserError '... pass --processor DIR (the original Hugging Face checkpoint ...)'",
         _missing_processor_says_processor),
    Case("convert_truncated_shard", "jaxvlm convert SRC DST, SRC's 2nd shard truncated to half",
         "traceback SafetensorError 'incomplete metadata, file not fully covered' (no file name), exit 1",
         "exit 2 'SRC/model-00002-of-00002.safetensors: invalid safetensors header (truncated or corrupt "
         "file?) ...'", _truncated_shard),
    Case("convert_shard_header_cut", "jaxvlm convert SRC DST, a shard cut to 5 bytes",
         "traceback SafetensorError 'header too small' (no file name), exit 1",
         "exit 2 naming the shard", _shard_header_cut),
    Case("convert_index_invalid_json", "jaxvlm convert SRC DST, index.json cut short",
         "traceback JSONDecodeError 'Expecting property name enclosed in double quotes: line 2 column 17' (no "
         "file name), exit 1",
         "exit 2 'SRC/model.safetensors.index.json: invalid JSON at line 2 column ...'", _index_invalid_json),
    Case("convert_index_no_weight_map", "jaxvlm convert SRC DST, index.json without weight_map",
         "traceback KeyError 'weight_map', exit 1",
         "exit 2 'SRC/model.safetensors.index.json: not a safetensors index'", _index_without_weight_map),
    Case("convert_index_missing_shard", "jaxvlm convert SRC DST, a shard the index names deleted",
         "exit 2 'SRC: shard file(s) [...] named by model.safetensors.index.json do not exist'",
         "exit 2 'SRC/model.safetensors.index.json: shard file(s) [...] named by the index do not exist'",
         _index_names_missing_shard),
    Case("convert_config_invalid_json", "jaxvlm convert SRC DST / jaxvlm.load(SRC), config.json broken",
         "traceback JSONDecodeError 'Expecting value: line 2 column 17' (no file name), exit 1",
         "exit 2 'SRC/config.json: invalid JSON at line 2 column 17 (Expecting value)'", _config_invalid_json),
    Case("convert_missing_layer0", "jaxvlm convert SRC DST, layers.0.mlp.up_proj.weight deleted",
         "missing '...layers.0.mlp.up_proj.weight (and layers 1..1)' AND unexpected '...layers.1.mlp.up_proj.weight'",
         "missing ['...layers.0.mlp.up_proj.weight'] only", _missing_layer0_tensor),
    Case("convert_nan_weight", "jaxvlm convert / jaxvlm.load of a checkpoint with a NaN and an Inf",
         "exit 0; the model loads and answers garbage",
         "exit 2 'tensor ...up_proj.weight in SRC/model-0000N-of-00002.safetensors has 1 NaN and 1 Inf value(s)'; "
         "--allow-nonfinite / allow_nonfinite=True convert it anyway", _nan_weight),
    Case("load_nan_in_jaxvlm_dir", "jaxvlm.load(a jaxvlm dir saved with NaN weights)", "loads silently",
         "UserError 'tensor projector/b1 in DIR/weights has 64 NaN ...'; allow_nonfinite=True loads it",
         _nan_weight_in_jaxvlm_dir),
    Case("load_corrupt_jaxvlm_dir", "jaxvlm.load(a converted dir whose weight files are cut / jaxvlm.json broken)",
         "traceback: tensorstore ValueError 'OUT_OF_RANGE: Error opening \"zarr\" driver ...' or a bare Exception "
         "'Encountered error while reading array index' / JSONDecodeError (no file name)",
         "UserError 'DIR/weights: cannot restore the orbax checkpoint (missing or corrupt file?) ...' / "
         "'DIR/jaxvlm.json: invalid JSON at line 1 ...'", _corrupt_orbax_weights),
    Case("convert_full_strategy_576", "LLaVA config: vision_feature_select_strategy='full', image_seq_length=576",
         "exit 2 'image_seq_length 576 != 577 tokens per image' (transformers runs it)",
         "converts and loads (transformers ignores image_seq_length); 577 image tokens in input_ids run, 576 "
         "are refused by the token count check", _full_strategy_stale_seq_length),
    Case("convert_help_prog", "jaxvlm convert --help / python -m converters --help",
         "both say 'usage: python -m converters'", "each says how it was invoked", _help_prog),
    Case("python_m_converters_error", "python -m converters SRC SRC",
         "traceback FileExistsError after converting everything, exit 1 (with --force: SRC deleted)",
         "exit 2, one line 'python -m converters: error: ...'", _python_m_converters_user_error),
    Case("convert_missing_source", "jaxvlm convert NOPE DST",
         "traceback FileNotFoundError 'NOPE: no config.json', exit 1", "exit 2 'NOPE is not a directory'",
         _missing_source),
    Case("convert_source_already_converted", "jaxvlm convert JAXVLM_DIR DST",
         "traceback FileNotFoundError 'no config.json (neither a Hugging Face checkpoint nor a jaxvlm directory)'",
         "exit 2 'JAXVLM_DIR is already a jaxvlm directory'", _source_already_converted),
    Case("convert_ok", "jaxvlm convert SRC DST (sharded, with side files)", "exit 0", "exit 0; same weights",
         _convert_ok, ok=True),
]
