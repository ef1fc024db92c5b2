"""`jaxvlm eval` end to end on a tiny random model: results file, summary, resume after interruption."""

import json

import numpy as np
from PIL import Image

import jaxvlm
from experiments import assets, evaluate
from jaxvlm.model import random_params
from jaxvlm.models import llava


def _model_dir(tmp_path):
    tok = assets.train_tokenizer()
    hf = assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                                hidden=64, layers=3, heads=2, vision_hidden=32, vision_layers=1)
    jaxvlm.save(random_params(llava.parse_config(hf), seed=1), tmp_path / "model", hf_config=hf)
    assets.llava_processor_dir(tmp_path / "model")  # the processor files live beside the weights
    return tmp_path / "model"


def _data(tmp_path, n=5):
    (tmp_path / "images").mkdir()
    lines = []
    for i in range(n):
        name = assets.PHOTOS[i % 3]
        Image.fromarray(assets.photo(name)).save(tmp_path / "images" / f"{i}.png")
        lines.append({"id": f"q{i}", "image": f"images/{i}.png", "question": f"Is there a {name}?",
                      "answers": ["yes" if i % 2 else "no"], "benchmark": "pope"})
    path = tmp_path / "pope.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_eval_writes_results_and_resumes(tmp_path, capsys):
    model, data = _model_dir(tmp_path), _data(tmp_path)
    out = tmp_path / "results.jsonl"
    argv = ["--model", str(model), "--data", str(data), "--out", str(out), "--prune", "debiased_fastv:keep=32",
            "--batch-size", "2", "--max-new-tokens", "3", "--dtype", "float32"]
    # Simulate an interrupted run: only the first two samples are in the results file.
    samples = evaluate.read_samples(data, None)
    params = jaxvlm.load(model)
    processor = jaxvlm.Processor.from_pretrained(model)
    evaluate.evaluate(params, processor, samples[:2], out, schedule=jaxvlm.prune.parse_schedule("debiased_fastv:keep=32"),
                      batch_size=2, max_new_tokens=3, progress=False)
    first = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in first] == ["q0", "q1"]

    assert evaluate.main(argv) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "q3", "q4"]  # resumed, nothing redone
    assert rows[:2] == first
    assert all(r["kept"] == [32] for r in rows) and all(r["score"] in (0.0, 1.0) for r in rows)
    summary = json.loads((tmp_path / "results.jsonl.summary.json").read_text())
    assert summary["pope"]["samples"] == 5
    assert np.isclose(summary["pope"]["score"], 100 * np.mean([r["score"] for r in rows]))
    assert "pope" in capsys.readouterr().out


def test_parse_schedule_names_and_arguments():
    assert jaxvlm.prune.parse_schedule("none") is None
    assert jaxvlm.prune.parse_schedule("fastv:keep=64,layer=3") == jaxvlm.prune.fastv(keep=64, layer=3)
    try:
        jaxvlm.prune.parse_schedule("nosuchmethod")
    except ValueError as e:
        assert "nosuchmethod" in str(e)
    else:
        raise AssertionError("unknown schedule accepted")
