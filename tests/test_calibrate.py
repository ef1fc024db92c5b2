"""`jaxvlm calibrate`: fits the planted trend from score vectors, padding excluded, with a held-out split."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import calibrate as cal
from jaxvlm import debias
from planted_trend import plant


def test_calibrate_cli_recovers_planted_trend(tmp_path, capsys):
    rng = np.random.default_rng(0)
    true = debias.release_trend("pdrop", "gqa")
    s, n = 96, 576
    mask = debias.pad_mask(rng.integers(200, 1200, (s, 2)))
    scale = np.exp(rng.normal(0, 0.5, (s, 1)))  # per-sample magnitude varies
    scores = scale * true(np.arange(n, dtype=float)) * np.exp(rng.normal(0, 0.2, (s, n)))
    scores = np.where(mask > 0, scores, 40.0)  # attention sink on padding
    npz = tmp_path / "scores.npz"
    np.savez(npz, scores=scores, pad_mask=mask)
    out = tmp_path / "trend.json"
    assert cal.main([str(npz), "--out", str(out), "--normalize"]) == 0
    printed = capsys.readouterr().out
    assert "72 fit, 24 held out" in printed
    report = json.loads(out.read_text())
    assert report["samples_fit"] == 72 and report["samples_holdout"] == 24
    assert report["padding_excluded"] > 0
    trend = debias.load_trend(out)
    assert trend.family == "exponential" and trend.params[2] == 0.0
    assert abs(trend.params[1] / true.params[1] - 1) < 0.05
    h = report["holdout"]
    assert h["r2"] > 0.9 and h["rank_corr_position_score"] > 0.9 and abs(h["rank_corr_after_detrend"]) < 0.3
    assert (tmp_path / "trend.png").stat().st_size > 10_000


def test_calibrate_polynomial_and_rank_correlation():
    x = np.arange(576.0)
    true = debias.release_trend("fastv")
    trend, report = cal.calibrate(np.tile(true(x), (8, 1)), family="polynomial", degree=3, holdout=0.25)
    np.testing.assert_allclose(trend(x), true(x), rtol=1e-6)
    assert report["samples_fit"] == 6 and report["holdout"]["r2"] > 0.999
    assert cal.rank_correlation(x, x**2) == 1.0 and cal.rank_correlation(x, -x) == -1.0


# ------------------------------------------------------------------ model mode: a trend planted in a model

PLANT_SIDE, PLANT_GRID = 112, 8  # 8 x 8 = 64 image tokens
PLANT_RATIO = 6.0  # T(63)/T(0) of the planted trend


def planted_llava(path):
    """A tiny LLaVA whose FastV score (layer-1 attention of the last token) is exactly exp(b * i) * noise,
    b = ln(6)/63 (tests/planted_trend.py; CLIP's feature layer is the pre-norm embeddings, and the projector
    passes v through: gelu(10 + u) - 10 = u)."""
    import jax.numpy as jnp

    import jaxvlm
    from experiments import assets
    from jaxvlm.model import VLM, random_params
    from jaxvlm.models import llava
    from transformers import LlavaImageProcessorPil, LlavaProcessor

    tok = assets.train_tokenizer()
    hf = assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                                hidden=64, layers=3, heads=4, vision_hidden=32, vision_layers=1)
    hf["vision_config"]["image_size"] = PLANT_SIDE
    hf["text_config"]["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e9}
    cfg = llava.parse_config(hf)
    w = {k: dict(v) if isinstance(v, dict) else v for k, v in random_params(cfg, seed=3, std=0.05).weights.items()}
    rng = np.random.default_rng(0)
    n = PLANT_GRID * PLANT_GRID
    vis, proj, text, slope = plant(w["vision"], w["text"], cfg.text.vocab_size, n, PLANT_RATIO, rng)
    weights = {"vision": vis, "projector": proj, "text": text}
    import jax

    params = VLM(weights=jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), weights), config=cfg)
    jaxvlm.save(params, path, hf_config=hf)
    ip = LlavaImageProcessorPil(do_pad=True, size={"shortest_edge": PLANT_SIDE},
                                crop_size={"height": PLANT_SIDE, "width": PLANT_SIDE})
    LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1, image_token=assets.IMAGE_TOKEN).save_pretrained(path)
    return path, slope


def image_folder(path, sizes):
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(5)
    for i, (wd, ht) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (ht, wd, 3), dtype=np.uint8)).save(path / f"img{i:02d}.png")
    return path


def kept_positions(params, proc, image, spec):
    import jaxvlm
    from jaxvlm.prune import parse_schedule
    from jaxvlm.processor import llava_prompt

    inputs = proc(text=[llava_prompt("Describe the image.")], images=[image])
    start = int(np.argmax(inputs["input_ids"][0] == params.config.image_token_id))
    kept = np.asarray(jaxvlm.forward(params, prune=parse_schedule(spec), **inputs).kept[0][0])
    return kept[kept >= 0] - start


def test_calibrate_model_recovers_planted_trend_end_to_end(tmp_path, capsys):
    """model -> `jaxvlm calibrate --model` -> trend file -> `--prune debiased_fastv:trend=FILE`."""
    from PIL import Image

    import jaxvlm

    ckpt, slope = planted_llava(tmp_path / "planted")
    sizes = [(112, 112)] * 6 + [(160, 112), (112, 150), (200, 112), (112, 112), (130, 112), (112, 112)]
    data = image_folder(tmp_path / "images", sizes)
    out = tmp_path / "trend.json"
    assert cal.main(["--model", str(ckpt), "--data", str(data), "--prompt", "Describe the image.",
                     "--prune", "debiased_fastv:keep=16", "--samples", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "chosen exponential" in printed and "9 fit, 3 held out" in printed
    report = json.loads(out.read_text())
    assert report["stage"]["type"] == "FastV" and report["stage"]["score_layer"] == 1
    assert report["per"] == "span" and "positions per span" in printed  # LLaVA-1.5: one span per image
    assert report["padding_excluded"] > 0  # the non-square images' padding patches (engine's pad flags)
    trend = debias.load_trend(out)
    assert abs(trend.params[1] / slope - 1) < 0.05, (trend.params, slope)
    assert report["candidates"]["exponential"]["holdout_r2"] > 0.95
    w = np.load(out.with_suffix(".npy"))
    assert w.shape == (64,) and w[0] == 1.0
    np.testing.assert_allclose(w, np.exp(-slope * np.arange(64)), rtol=0.1)
    # the file feeds --prune: raw FastV keeps the last rows of the image, the calibrated trend spreads it
    params = jaxvlm.load(str(ckpt))
    proc = jaxvlm.Processor.from_pretrained(str(ckpt))
    image = Image.open(data / "img00.png")
    raw = kept_positions(params, proc, image, "fastv:keep=16")
    fixed = kept_positions(params, proc, image, f"debiased_fastv:keep=16,trend={out}")
    assert raw.min() >= 40 and len(fixed) == 16
    assert 15 < fixed.mean() < 48 and fixed.min() < 24


def test_calibrate_model_mode_errors(tmp_path):
    from jaxvlm.errors import UserError

    with pytest.raises(UserError, match="either an .npz"):
        cal.main([])
    with pytest.raises(UserError, match="--model needs --data"):
        cal.main(["--model", str(tmp_path)])
    with pytest.raises(UserError, match="--families 'cubic'"):
        cal.main(["--model", str(tmp_path), "--data", str(tmp_path), "--families", "cubic"])
    with pytest.raises(UserError, match="give the question with --prompt"):
        cal.calibration_samples(str(tmp_path), None, None, 4, 0)


def test_calibrate_model_refuses_a_stage_beyond_the_model(tmp_path):
    import tiny_vlm
    from jaxvlm.errors import UserError

    data = image_folder(tmp_path / "images", [(112, 84), (84, 112)])
    with pytest.raises(UserError, match="prunes before layer 3, but tiny has 3 decoder layers"):
        cal.calibrate_model("tiny", str(data), "fastv:keep=4,layer=3", prompt="who", params=tiny_vlm.qwen())
