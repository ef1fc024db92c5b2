"""The evaluation harness: standard benchmarks read from the files users have, scored as the official code.

    from jaxvlm import evaluation
    bench = evaluation.benchmark("pope")                       # the module (see base.py for its contract)
    samples = bench.read(data_dir, benchmark="pope")
    result = bench.score(data_dir, answers, benchmark="pope")  # ScoreResult(metrics, per_question, artifacts)

One module per benchmark family holds its reader, prompt, scorer and export; `base.py` is the contract.
"""

from __future__ import annotations

import importlib

from jaxvlm.evaluation.base import DataError, Sample, ScoreResult  # noqa: F401

# CLI name -> module implementing it (modules serving several names take `benchmark=` in read/score).
BENCHMARKS = {
    "gqa": "jaxvlm.evaluation.gqa",
    "mmbench": "jaxvlm.evaluation.mmbench",
    "mmbench_cn": "jaxvlm.evaluation.mmbench",
    "mme": "jaxvlm.evaluation.mme",
    "mmvet": "jaxvlm.evaluation.mmvet",
    "pope": "jaxvlm.evaluation.pope",
    "scienceqa": "jaxvlm.evaluation.scienceqa",
    "textvqa": "jaxvlm.evaluation.textvqa",
    "vizwiz": "jaxvlm.evaluation.vizwiz",
    "vqav2": "jaxvlm.evaluation.vqav2",
    "msvd_qa": "jaxvlm.evaluation.video",
    "msrvtt_qa": "jaxvlm.evaluation.video",
    "activitynet_qa": "jaxvlm.evaluation.video",
    "tgif_qa": "jaxvlm.evaluation.video",
}


def benchmark(name: str):
    """The module of benchmark `name`; DataError listing the known names otherwise."""
    if name not in BENCHMARKS:
        raise DataError(f"unknown benchmark {name!r}; have {', '.join(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[name])
