"""`jaxvlm generate` end to end on a tiny random LLaVA saved with jaxvlm.save (offline processor)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxvlm.engine import cli


def test_parse_schedule():
    from jaxvlm import prune

    assert prune.parse_schedule("none") is None
    assert prune.parse_schedule("fastv:layer=3,keep=64") == prune.fastv(layer=3, keep=64)
    assert prune.parse_schedule("pdrop:layers=2/4/6,ratios=.5/.25/.125") == prune.pdrop(
        layers=(2, 4, 6), ratios=(0.5, 0.25, 0.125))
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune.parse_schedule("nope")


def test_generate_command(tmp_path, capsys):
    from PIL import Image

    import jaxvlm
    from experiments import assets
    from jaxvlm.model import random_params
    from jaxvlm.models import llava

    proc_dir = assets.llava_processor_dir(tmp_path / "proc")
    tok = jaxvlm.Processor.from_pretrained(proc_dir).tokenizer
    hf = assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                                hidden=64, layers=3, heads=4, vision_hidden=32, vision_layers=1)
    jaxvlm.save(random_params(llava.parse_config(hf), seed=0, std=0.05), tmp_path / "ckpt", hf_config=hf)
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(img)
    rc = cli.main([str(tmp_path / "ckpt"), "--processor", str(proc_dir), "--image", str(img), "--prompt",
                   "What is shown?", "--prune", "fastv:layer=2,keep=32", "--max-new-tokens", "4"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "visual tokens kept per stage: 32" in err
