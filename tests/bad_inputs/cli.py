"""Catalogue: the command line's error surface (generate, calibrate, analyze, bench, demo, trends, docs)."""

from __future__ import annotations

import functools
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bad_inputs import Case, expect_cli_error, run_cli

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def tiny_llava() -> tuple[Path, Path]:
    """(checkpoint dir, processor dir) of a tiny random LLaVA saved with jaxvlm.save (built once)."""
    import jaxvlm
    from experiments import assets
    from jaxvlm.model import random_params
    from jaxvlm.models import llava

    root = Path(tempfile.mkdtemp(prefix="catalogue-llava-"))
    proc_dir = assets.llava_processor_dir(root / "proc")
    tok = jaxvlm.Processor.from_pretrained(proc_dir).tokenizer
    hf = assets.llava_hf_config(len(tok), tok.convert_tokens_to_ids(assets.IMAGE_TOKEN), tok.pad_token_id,
                                hidden=64, layers=3, heads=4, vision_hidden=32, vision_layers=1)
    jaxvlm.save(random_params(llava.parse_config(hf), seed=0, std=0.05), root / "ckpt", hf_config=hf)
    return root / "ckpt", proc_dir


def photo(tmp: Path) -> Path:
    from PIL import Image

    path = tmp / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(path)
    return path


def generate_argv(tmp: Path, *extra: str) -> list[str]:
    ckpt, proc = tiny_llava()
    return ["generate", str(ckpt), "--processor", str(proc), "--image", str(photo(tmp)), "--prompt", "What?",
            "--max-new-tokens", "2", *extra]


def calibrated_trend(tmp: Path) -> Path:
    """A trend file written by `jaxvlm calibrate` from planted score vectors."""
    rng = np.random.default_rng(0)
    x = np.arange(576.0)
    scores = np.exp(0.004 * x) * np.exp(rng.normal(0, 0.1, (16, 576)))
    np.savez(tmp / "scores.npz", scores=scores)
    code, _, err = run_cli(["calibrate", str(tmp / "scores.npz"), "--out", str(tmp / "trend.json")])
    assert code == 0, err
    return tmp / "trend.json"


# ----------------------------------------------------------------------------------------- the cases


def _trend_file_in_prune_spec(tmp):
    trend = calibrated_trend(tmp)
    code, out, err = run_cli(generate_argv(tmp, "--prune", f"debiased_fastv:keep=32,trend={trend}"))
    assert code == 0, err
    assert "visual tokens kept per stage: 32" in err


def _trend_file_in_api(tmp):
    from jaxvlm import debias, prune

    trend = calibrated_trend(tmp)
    sched = prune.debiased(prune.fastv(layer=2, keep=32), trend=str(trend))
    assert sched[0].trend == debias.load_trend(trend)
    assert prune.debiased_fastv(trend=trend)[0].trend == debias.load_trend(trend)


def _missing_trend_file(tmp):
    expect_cli_error(generate_argv(tmp, "--prune", f"debiased_fastv:trend={tmp / 'nope.json'}"),
                     r"trend file .*nope\.json does not exist")


def _invalid_trend_file(tmp):
    (tmp / "bad.json").write_text('{"family": "exponential",\n "params": [1, 2}')
    expect_cli_error(generate_argv(tmp, "--prune", f"debiased_fastv:trend={tmp / 'bad.json'}"),
                     r"bad\.json:2: invalid JSON")


def _not_a_trend(tmp):
    (tmp / "other.json").write_text(json.dumps({"hello": 1}))
    expect_cli_error(generate_argv(tmp, "--prune", f"debiased_fastv:trend={tmp / 'other.json'}"),
                     r"other\.json: not a trend")


def _unknown_method(tmp):
    expect_cli_error(generate_argv(tmp, "--prune", "fastvv"), r"unknown pruning method 'fastvv'")


def _bad_prune_value(tmp):
    expect_cli_error(generate_argv(tmp, "--prune", "fastv:keep=abc"), r"keep must be a Python int")


def _bad_prune_keyword(tmp):
    expect_cli_error(generate_argv(tmp, "--prune", "fastv:kep=3"), r"unexpected keyword argument 'kep'")


def _missing_image(tmp):
    argv = generate_argv(tmp)
    argv[argv.index("--image") + 1] = str(tmp / "missing.jpg")
    expect_cli_error(argv, r"--image .*missing\.jpg: no such file")


def _not_an_image(tmp):
    (tmp / "notes.jpg").write_text("not a picture")
    argv = generate_argv(tmp)
    argv[argv.index("--image") + 1] = str(tmp / "notes.jpg")
    expect_cli_error(argv, r"notes\.jpg: not a readable image")


def _missing_checkpoint(tmp):
    argv = generate_argv(tmp)
    argv[1] = str(tmp / "no-such-ckpt")
    expect_cli_error(argv, r"no-such-ckpt: no such directory")


def _zero_new_tokens(tmp):
    argv = generate_argv(tmp)
    argv[argv.index("--max-new-tokens") + 1] = "0"
    expect_cli_error(argv, r"--max-new-tokens 0: must be at least 1")


def _generate_ok(tmp):
    code, out, err = run_cli(generate_argv(tmp, "--prune", "fastv:layer=2,keep=32"))
    assert code == 0, err
    assert "loading" in err and "compiling" in err  # progress lines while loading and compiling


def _calibrate_missing_npz(tmp):
    expect_cli_error(["calibrate", str(tmp / "none.npz")], r"none\.npz: no such file")


def _calibrate_no_scores(tmp):
    np.savez(tmp / "x.npz", other=np.zeros(3))
    expect_cli_error(["calibrate", str(tmp / "x.npz")], r"x\.npz has no 'scores' array \(has \['other'\]\)")


def _calibrate_nan_scores(tmp):
    scores = np.ones((4, 10))
    scores[2, 7] = np.nan
    np.savez(tmp / "nan.npz", scores=scores)
    expect_cli_error(["calibrate", str(tmp / "nan.npz")], r"scores\[2, 7\] = nan is not finite")


def _calibrate_bad_holdout(tmp):
    np.savez(tmp / "s.npz", scores=np.ones((4, 10)))
    expect_cli_error(["calibrate", str(tmp / "s.npz"), "--holdout", "1.5"], r"--holdout 1.5")


def _analyze_without_gguf(tmp):
    # A fresh setup without the analysis extra: one line naming it, not an ImportError traceback.
    code = ("import sys; sys.modules['gguf'] = None\n"
            "from jaxvlm import cli; sys.exit(cli.main(['analyze', '--samples', '2']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert re.search(r"needs the Python package 'gguf'.*jaxvlm\[analysis\]", proc.stderr), proc.stderr


def _analyze_bad_layers(tmp):
    expect_cli_error(["analyze", "--layers", "1,x"], r"--layers '1,x': expected comma-separated")


def _analyze_layer_out_of_range(tmp):
    expect_cli_error(["analyze", "--layers", "1,40"], r"layers 0\.\.29")


def _bench_bad_keeps(tmp):
    expect_cli_error(["bench", "--keeps", "0,64"], r"--keeps '0,64': each budget must be in 1\.\.576")


def _demo_zero_tokens(tmp):
    expect_cli_error(["demo", "--max-new-tokens", "0"], r"--max-new-tokens 0")


def _unknown_command(tmp):
    code, _, err = run_cli(["frobnicate"])
    assert code == 2 and "unknown command 'frobnicate'" in err


def _docs_cite_only_files_in_the_clone(tmp):
    """Every `path/with.ext` a doc or docstring names that looks like a repository file exists."""
    cited = re.compile(r"`((?:docs|tests|jaxvlm|experiments|converters|dev)/[\w./-]+\.(?:md|py|json|sh))`"
                       r"|\b([A-Z]+\.md)\b")
    missing = []
    sources = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
               *sorted(p for d in ("jaxvlm", "experiments", "converters", "tests") for p in (REPO / d).rglob("*.py")
                      if "bad_inputs" not in p.parts)]  # the catalogue itself names the files it once cited
    for src in sources:
        for m in cited.finditer(src.read_text(encoding="utf-8")):
            rel = m.group(1) or m.group(2)
            if m.group(2) and (REPO / "docs" / rel).exists() or (REPO / rel).exists():
                continue
            missing.append(f"{src.relative_to(REPO)} cites {rel}")
    assert not missing, missing


CASES = [
    Case("trend-file-in-prune-spec", "generate --prune debiased_fastv:keep=32,trend=trend.json (calibrate's output)",
         "AttributeError inside jit", "runs; the file is loaded as the stage's trend", _trend_file_in_prune_spec),
    Case("trend-file-in-api", "prune.debiased(fastv(), trend='trend.json'), debiased_fastv(trend=Path)",
         "stored the string; AttributeError at run time", "loaded into a Trend at construction", _trend_file_in_api),
    Case("trend-file-missing", "--prune debiased_fastv:trend=nope.json", "traceback (exit 1)",
         "one line 'trend file ... does not exist', exit 2", _missing_trend_file),
    Case("trend-file-invalid-json", "--prune ...:trend=bad.json (broken JSON)", "traceback (exit 1)",
         "one line 'bad.json:2: invalid JSON', exit 2", _invalid_trend_file),
    Case("trend-file-not-a-trend", "--prune ...:trend=other.json (JSON, no trend)", "traceback (exit 1)",
         "one line 'not a trend', exit 2", _not_a_trend),
    Case("prune-unknown-method", "--prune fastvv", "one line, exit 2", "one line, exit 2", _unknown_method, ok=True),
    Case("prune-bad-value", "--prune fastv:keep=abc", "one line, exit 2", "one line naming keep, exit 2",
         _bad_prune_value, ok=True),
    Case("prune-bad-keyword", "--prune fastv:kep=3", "one line, exit 2",
         "one line naming 'kep', exit 2", _bad_prune_keyword, ok=True),
    Case("generate-missing-image", "generate --image missing.jpg", "FileNotFoundError traceback after loading the model (exit 1)",
         "one line, exit 2, before loading", _missing_image),
    Case("generate-not-an-image", "generate --image notes.jpg (a text file)", "PIL traceback (exit 1)",
         "one line 'not a readable image', exit 2", _not_an_image),
    Case("generate-missing-checkpoint", "generate no-such-ckpt", "FileNotFoundError traceback (exit 1)",
         "one line 'no such directory', exit 2", _missing_checkpoint),
    Case("generate-zero-new-tokens", "generate --max-new-tokens 0", "ValueError traceback after loading (exit 1)",
         "one line, exit 2", _zero_new_tokens),
    Case("generate-ok-progress", "generate with a valid checkpoint, image and schedule",
         "silent while loading and compiling", "progress lines on stderr; answer on stdout", _generate_ok),
    Case("calibrate-missing-npz", "calibrate none.npz", "FileNotFoundError traceback (exit 1)",
         "one line, exit 2", _calibrate_missing_npz),
    Case("calibrate-no-scores", "calibrate x.npz without 'scores'", "argparse error (exit 2)",
         "one line listing the arrays, exit 2", _calibrate_no_scores, ok=True),
    Case("calibrate-nan-scores", "calibrate with a NaN score", "exit 0, NaN silently dropped, R^2 nan",
         "one line naming scores[2, 7], exit 2", _calibrate_nan_scores),
    Case("calibrate-bad-holdout", "calibrate --holdout 1.5", "ran, exit 0, held-out R^2 nan", "one line, exit 2",
         _calibrate_bad_holdout),
    Case("analyze-without-gguf", "analyze on a setup without gguf", "ImportError traceback (exit 1)",
         "one line naming jaxvlm[analysis], exit 2", _analyze_without_gguf),
    Case("analyze-bad-layers", "analyze --layers 1,x", "ValueError traceback (exit 1)", "one line, exit 2",
         _analyze_bad_layers),
    Case("analyze-layer-out-of-range", "analyze --layers 1,40", "IndexError after loading the model (exit 1)",
         "one line 'layers 0..29', exit 2", _analyze_layer_out_of_range),
    Case("bench-bad-keeps", "bench --keeps 0,64", "ValueError traceback after building the models (exit 1)",
         "one line, exit 2", _bench_bad_keeps),
    Case("demo-zero-tokens", "demo --max-new-tokens 0", "silently generated 4 tokens (0 read as unset)",
         "one line, exit 2", _demo_zero_tokens),
    Case("unknown-command", "jaxvlm frobnicate", "usage, exit 2", "usage, exit 2", _unknown_command, ok=True),
    Case("docs-cite-clone-files", "reading README / docs / docstrings on a clone",
         "cited API.md, METHOD.md, PRUNING.md, tests/reference.py (not in a clone)",
         "every cited repository file exists", _docs_cite_only_files_in_the_clone),
]
