"""LLaVA-NeXT configs, weights and host-side inputs: the Hub configs parse, unknown attributes are refused by
name, `jax.eval_shape` parameter counts equal transformers' (meta device) for llava-v1.6-vicuna-7b and
llava-v1.6-mistral-7b, every key layout converts, `prepare` validates inputs and lays out the tokens."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxvlm
from converters.core import DictReader, convert, export
from converters.llava_next import table
from jaxvlm.config import UnsupportedConfigError
from jaxvlm.errors import UserError
from jaxvlm.model import random_params
from jaxvlm.models import llava_next
from llava_next_reference import build, hf_config_dict, make_inputs, torch_logits

CLIP_L_336 = {"hidden_size": 1024, "image_size": 336, "intermediate_size": 4096, "model_type": "clip_vision_model",
              "num_attention_heads": 16, "num_hidden_layers": 24, "patch_size": 14, "projection_dim": 768,
              "vocab_size": 32000}
HUB_TOP = {"architectures": ["LlavaNextForConditionalGeneration"], "ignore_index": -100,
           "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]],
           "image_token_index": 32000, "model_type": "llava_next", "projector_hidden_act": "gelu",
           "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.39.0.dev0",
           "use_image_newline_parameter": True, "vision_config": CLIP_L_336, "vision_feature_layer": -2,
           "vision_feature_select_strategy": "default", "vocab_size": 32064}


def vicuna_7b() -> dict:
    """llava-hf/llava-v1.6-vicuna-7b-hf's config.json."""
    text = {"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["LlamaForCausalLM"],
            "max_position_embeddings": 4096, "model_type": "llama", "pad_token_id": 0, "rms_norm_eps": 1e-05,
            "torch_dtype": "float16", "vocab_size": 32064}
    return copy.deepcopy({**HUB_TOP, "text_config": text})


def mistral_7b() -> dict:
    """llava-hf/llava-v1.6-mistral-7b-hf's config.json."""
    text = {"_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "architectures": ["MistralForCausalLM"],
            "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
            "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": None,
            "torch_dtype": "bfloat16", "vocab_size": 32064}
    return copy.deepcopy({**HUB_TOP, "text_config": text})


def qwen2_7b_text() -> dict:
    """A LLaVA-NeXT with a Qwen2-7B text model (q/k/v biases; the llava-next-interleave / 72b kind)."""
    text = {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
            "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "rope_theta": 1000000.0,
            "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "use_sliding_window": False,
            "sliding_window": 32768, "max_window_layers": 28, "tie_word_embeddings": False}
    return copy.deepcopy({**HUB_TOP, "image_token_index": 151646, "vocab_size": 152064, "text_config": text})


def hf_param_count(d: dict) -> int:
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration

    with torch.device("meta"):
        model = LlavaNextForConditionalGeneration(LlavaNextConfig(**{k: v for k, v in copy.deepcopy(d).items()
                                                                      if k != "model_type"}))
    return model.num_parameters()


def test_hub_configs():
    v, m = llava_next.parse_config(vicuna_7b()), llava_next.parse_config(mistral_7b())
    for cfg, make in ((v, vicuna_7b), (m, mistral_7b)):
        assert cfg.family == "llava_next" and cfg.image_token_id == 32000 and cfg.feature_layers == (-2,)
        assert cfg.image_grid_pinpoints == ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))
        assert (cfg.vision.image_size, cfg.vision.grid, cfg.text.vocab_size) == (336, 24, 32064)
        assert hash(cfg) == hash(llava_next.parse_config(make()))  # static / hashable for jit
        assert cfg != llava_next.parse_config({**make(), "image_grid_pinpoints": [[336, 672]]})
    assert (v.text.num_kv_heads, v.text.intermediate_size, v.text.rope.theta) == (32, 11008, 10000.0)
    assert (m.text.num_kv_heads, m.text.intermediate_size, m.text.rope.theta) == (8, 14336, 1e6)


@pytest.mark.parametrize("make", [vicuna_7b, mistral_7b, qwen2_7b_text], ids=["vicuna-7b", "mistral-7b", "qwen2-7b"])
def test_param_counts_match_transformers(make):
    d = make()
    cfg = llava_next.parse_config(d)
    structs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), llava_next.weight_shapes(cfg),
                           is_leaf=lambda s: isinstance(s, tuple))
    out = jax.eval_shape(lambda: jax.tree.map(jnp.zeros_like, structs))
    ours = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(out))
    theirs = hf_param_count(d)
    print(f"{make.__name__}: {ours:,} parameters (transformers {theirs:,})")
    assert ours == theirs


def test_eval_shape_forward_vicuna_7b():
    """The whole forward (5 tiles through the tower, packing, 32 layers, logits) traces at full size."""
    from jaxvlm.layers import causal_mask
    from jaxvlm.model import VLM
    from jaxvlm.models import decoder

    cfg = llava_next.parse_config(vicuna_7b())
    n = llava_next.grid_layout((672, 672), cfg).tokens
    ids = np.full((1, n + 20), 5, np.int64)
    ids[0, 10:10 + n] = cfg.image_token_id
    batch = llava_next.prepare(cfg, ids, pixel_values=np.zeros((1, 5, 3, 336, 336), np.float32),
                               image_sizes=[[672, 672]])
    structs = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.bfloat16), llava_next.weight_shapes(cfg),
                           is_leaf=lambda s: isinstance(s, tuple))

    def run(params, batch):
        emb = llava_next.embed(params, batch)
        cos, sin = decoder.rotary(emb.positions, cfg.text)
        x, _ = decoder.run_layers(params.weights["text"]["layers"], emb.embeds, cos, sin, causal_mask(emb.valid),
                                  cfg.text)
        return decoder.final_logits(params.weights["text"], x, cfg.text)

    out = jax.eval_shape(run, VLM(structs, cfg), batch)
    assert n == 2928 and out.shape == (1, n + 20, 32064) and out.dtype == jnp.float32


@pytest.mark.parametrize("where", ["top", "text_config", "vision_config"])
def test_unknown_attribute_is_refused_by_name(where):
    d = mistral_7b()
    (d if where == "top" else d[where])["frobnication_level"] = 3
    with pytest.raises(UnsupportedConfigError, match="frobnication_level"):
        llava_next.parse_config(d)


@pytest.mark.parametrize("change,match", [
    (lambda d: d["text_config"].update(sliding_window=4096), "sliding_window"),
    (lambda d: d["text_config"].pop("sliding_window"), "sliding_window"),  # MistralConfig's default is 4096
    (lambda d: d["text_config"].update(model_type="gemma"), "gemma"),
    (lambda d: d["text_config"].update(model_type="qwen2", sliding_window=None, use_sliding_window=True),
     "use_sliding_window"),
    (lambda d: d.update(vision_feature_select_strategy="full"), "vision_feature_select_strategy"),
    (lambda d: d.update(use_image_newline_parameter=False), "use_image_newline_parameter"),
    (lambda d: d.update(image_grid_pinpoints=[[336, 500]]), "image_grid_pinpoints"),
    (lambda d: d.update(image_grid_pinpoints=[]), "image_grid_pinpoints"),
    (lambda d: d.update(model_type="llava"), "model_type"),
    (lambda d: d["vision_config"].update(model_type="siglip_vision_model"), "llava_next.vision_config"),
])
def test_unsupported_values_are_refused(change, match):
    d = mistral_7b()
    change(d)
    with pytest.raises(UnsupportedConfigError, match=match):
        llava_next.parse_config(d)


# ------------------------------------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def cfg():
    return llava_next.parse_config(hf_config_dict())


def test_prepare_token_layout(cfg):
    """One 60x240 image (1 x 3 tiles of 8 x 8, rows 1..6 kept): 64 base tokens, then 6 rows of 24 + newline
    (span_layout "sequence"; the default "tile" in test_tile_span_layout)."""
    import dataclasses

    params = random_params(cfg)
    inputs = make_inputs(params, sizes=((60, 240),), text=(10,), padding="right")
    b = llava_next.prepare(dataclasses.replace(cfg, span_layout="sequence"), **inputs)
    vis = b["visual"][0]
    assert vis.sum() == 64 + 6 * 25 and b["pixel_values"].shape == (4, 3, 112, 112)
    fi, row, col, span = (b[k][0][vis] for k in ("feature_index", "row", "col", "span_index"))
    np.testing.assert_array_equal(span, np.arange(214))
    np.testing.assert_array_equal(fi[:64], np.arange(64))  # base tile first
    grid = fi[64:].reshape(6, 25)
    assert (grid[:, 24] == 4 * 64).all()  # newline = the row after the 4 tiles' features
    np.testing.assert_array_equal(grid[0, :8], 64 + 8 + np.arange(8))  # tile 1, patch row 1 (row 0 cut off)
    np.testing.assert_array_equal(grid[0, 8:16], 2 * 64 + 8 + np.arange(8))  # tile 2
    np.testing.assert_array_equal(row[64:].reshape(6, 25), np.repeat(np.arange(6), 25).reshape(6, 25))
    np.testing.assert_array_equal(col[64:].reshape(6, 25)[0], np.arange(25))
    assert (b["media"][0][vis] == 0).all() and (b["frame"][0][vis] == 0).all() and "image_sizes" not in b


def test_kept_maps_place_tokens_on_the_tiles(cfg):
    """kept_maps (the tile view of out.kept): all tokens kept -> the base tile, exactly the unpadded block of
    the tile grid and every newline; one kept token -> one cell, where its features come from."""
    params = random_params(cfg)
    sizes = ((60, 240), (330, 110))
    inputs = make_inputs(params, sizes=sizes, text=(10, 12))
    b = llava_next.prepare(cfg, **inputs)
    every = np.where(b["visual"], np.arange(b["visual"].shape[1]), -1)
    for m in llava_next.kept_maps(cfg, inputs["image_sizes"], b, every):
        lay = m["layout"]
        want = np.zeros_like(m["grid"])
        want[lay.r0:lay.r1, lay.c0:lay.c1] = True
        assert m["base"].all() and m["newlines"].all() and (m["grid"] == want).all()
    row0 = np.flatnonzero(b["visual"][0])
    one = np.full((2, 1), -1)
    one[0, 0] = row0[64 + 25 + 3]  # grid row 1 (full-grid row 2: row 0 is cut), column 3
    maps = llava_next.kept_maps(cfg, inputs["image_sizes"], b, one)
    assert maps[0]["grid"].sum() == 1 and maps[0]["grid"][2, 3] and not maps[1]["grid"].any()


def test_tile_span_layout(cfg):
    """span_layout "tile" (the default): raster index within the token's own tile; a newline takes the index
    of the patch it follows (row / col -1)."""
    import dataclasses

    assert cfg.span_layout == "tile"
    inputs = make_inputs(random_params(cfg), sizes=((60, 240),), text=(10,))
    b = llava_next.prepare(cfg, **inputs)
    vis = b["visual"][0]
    span, row, col = (b[k][0][vis] for k in ("span_index", "row", "col"))
    grid = span[64:].reshape(6, 25)
    np.testing.assert_array_equal(grid[:, 24], grid[:, 23])
    assert (row[64:].reshape(6, 25)[:, 24] == -1).all()
    np.testing.assert_array_equal(grid[0, :8], 8 + np.arange(8))  # patch row 1 of tile 1
    np.testing.assert_array_equal(grid[0, 8:16], 8 + np.arange(8))  # and of tile 2
    np.testing.assert_array_equal(span[:64], np.arange(64))
    assert (span[row >= 0] == row[row >= 0] * 8 + col[row >= 0]).all()
    seq = llava_next.prepare(dataclasses.replace(cfg, span_layout="sequence"), **inputs)
    np.testing.assert_array_equal(b["feature_index"], seq["feature_index"])


def test_prepare_errors_name_the_input(cfg):
    inputs = make_inputs(random_params(cfg), sizes=((60, 240), (100, 100)), text=(10, 12))
    with pytest.raises(UserError, match=r"image_sizes \[\[240, 60\], \[100, 100\]\] give \["):  # (w, h) by mistake
        llava_next.prepare(cfg, **dict(inputs, image_sizes=inputs["image_sizes"][:, ::-1]))
    with pytest.raises(UserError, match="needs image_sizes"):
        llava_next.prepare(cfg, **dict(inputs, image_sizes=None))
    with pytest.raises(UserError, match="do not fit image_sizes"):
        llava_next.prepare(cfg, **dict(inputs, pixel_values=inputs["pixel_values"][:, :2]))
    bad = inputs["pixel_values"].copy()
    bad[1, 0, 0, 5, 5] = np.nan
    with pytest.raises(UserError, match=r"pixel_values\[1, 0, 0, 5, 5\] = nan"):
        llava_next.prepare(cfg, **dict(inputs, pixel_values=bad))
    with pytest.raises(UserError, match="vocabulary"):
        llava_next.prepare(cfg, **dict(inputs, input_ids=inputs["input_ids"] + 1000))


# ---------------------------------------------------------------------------------------- conversion


def test_every_key_layout_converts(cfg):
    params = random_params(cfg, seed=1, std=0.1)
    tab = table(cfg)
    for layout in tab.layouts:
        state = dict(export(tab, params.weights, layout))
        assert ("image_newline" in state) == layout.startswith(("hub", "save"))
        back = convert(tab, llava_next.weight_shapes(cfg), DictReader(state))
        for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params.weights)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_jaxvlm_directory_round_trip(tmp_path, cfg):
    """jaxvlm.save / jaxvlm.load: the config re-parsed from the stored HF config, weights bit-equal."""
    params = random_params(cfg, seed=2)
    loaded = jaxvlm.load(jaxvlm.save(params, str(tmp_path / "next")))
    assert loaded.config == cfg and loaded.config.family == "llava_next"
    for a, b in zip(jax.tree.leaves(loaded.weights), jax.tree.leaves(params.weights)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_feature_layer_list_parity():
    """vision_feature_layer as a list (hidden states concatenated before the projector), logits at 1e-4."""
    model, params, _ = build(text_layers=1, vision_layers=2, feature_layer=[-3, -1])
    inputs = make_inputs(params, sizes=((60, 240),), text=(12,))
    diff = np.abs(np.asarray(jaxvlm.forward(params, **inputs).logits) - torch_logits(model, inputs)).max()
    print(f"feature layers [-3, -1]: max |logit diff| = {diff:.2e}")
    assert diff < 1e-4


def test_load_save_pretrained_directory(tmp_path):
    """transformers' save_pretrained output loads through jaxvlm.load and gives transformers' logits."""
    model, params, config = build(text_layers=1, vision_layers=1, feature_layer=-1)
    model.save_pretrained(tmp_path)
    loaded = jaxvlm.load(str(tmp_path))
    assert loaded.config == params.config
    inputs = make_inputs(params, sizes=((100, 100),), text=(12,))
    diff = np.abs(np.asarray(jaxvlm.forward(loaded, **inputs).logits) - torch_logits(model, inputs)).max()
    assert diff < 1e-4


def test_transformers_processor_outputs_feed_forward():
    """transformers' LlavaNextProcessor (PIL image processor, a byte-level BPE tokenizer trained here) on real
    photographs of three aspect ratios: its input_ids / pixel_values (I, tiles, C, S, S) / image_sizes
    (height, width) go straight into jaxvlm.forward, whose logits equal transformers' model on the same inputs."""
    from skimage import data
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlavaNextImageProcessorPil, LlavaNextProcessor, PreTrainedTokenizerFast

    from llava_next_reference import SMALL, to_jax, torch_model

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["USER: What is shown in this picture? ASSISTANT: a cat."] * 10,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<image>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")
    d = hf_config_dict()
    d["text_config"]["vocab_size"] = len(tokenizer)
    d["image_token_index"], d["pad_token_id"] = tokenizer.convert_tokens_to_ids("<image>"), 0
    ip = LlavaNextImageProcessorPil(size={"shortest_edge": SMALL}, crop_size={"height": SMALL, "width": SMALL},
                                    image_grid_pinpoints=d["image_grid_pinpoints"])
    proc = LlavaNextProcessor(image_processor=ip, tokenizer=tokenizer, patch_size=14,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)
    photos = [data.astronaut(), data.coffee(), data.rocket()[:, 100:400]]  # 512x512, 400x600, 427x300
    text = [f"USER: <image>\nWhat is shown in this picture? ASSISTANT:{' a cat.' * k}" for k in (0, 2, 1)]
    out = {k: np.asarray(v) for k, v in proc(text=text, images=photos, padding=True, return_tensors="np").items()}
    np.testing.assert_array_equal(out["image_sizes"], [[512, 512], [400, 600], [427, 300]])
    inputs = {k: out[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_sizes")}
    model = torch_model(d)
    params = to_jax(model, d)
    diff = np.abs(np.asarray(jaxvlm.forward(params, **inputs).logits) - torch_logits(model, inputs))
    assert diff[inputs["attention_mask"].astype(bool)].max() < 1e-4
