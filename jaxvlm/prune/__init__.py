"""Visual-token pruning schedules (PRUNING.md) and their attention debiasing (METHOD.md).

A schedule is a tuple of stages (frozen, hashable dataclasses implementing `jaxvlm.prune.base.Stage`); every
constructor below returns one, and schedules concatenate (`prune.fastv(2, 128) + ...` if layers increase):

    prune.fastv(layer=2, keep=128)              prune.pdrop(layers=(2, 10, 20), ratios=(.32, .16, .08))
    prune.sparsevlm(budget=128)                 prune.himap(text_keep=115, image_keep=90)
    prune.tokencarve(keep=64)                   prune.illava(layers=(8,), keep_ratio=0.7)
    prune.dart(keep=128)  prune.divprune(keep=64)  prune.visionzip()   (attention-free / before the LLM)
    prune.debiased(schedule, trend=..., pad_threshold=..., recency=True, padding=True, stages="first")
    prune.debiased_fastv() / _himap / _pdrop / _sparsevlm / _tokencarve / _illava   (the release's recipes)

The pure score/select functions of each method are exported too (usable alone, under jit/vmap).
"""

from jaxvlm.prune.base import Selection, Stage, StageContext
from jaxvlm.prune.spec import parse_schedule
from jaxvlm.prune.common import candidates, head_mean_probs, last_token_rows, pick_rows, top_k_slots
from jaxvlm.prune.debiased import (
    PRESETS,
    SETTINGS,
    Debiased,
    debiased,
    debiased_fastv,
    debiased_himap,
    debiased_illava,
    debiased_pdrop,
    debiased_sparsevlm,
    debiased_tokencarve,
)
from jaxvlm.prune.diversity import (
    DART,
    DivPrune,
    VisionZip,
    dart,
    dart_select,
    divprune,
    divprune_select,
    key_l1,
    visionzip,
    visionzip_select,
)
from jaxvlm.prune.fastv import FastV, fastv, fastv_scores
from jaxvlm.prune.himap import HiMAPImage, HiMAPText, himap, summed_scores
from jaxvlm.prune.illava import ILLaVAStage, fold_lowest, illava
from jaxvlm.prune.pdrop import PDropStage, pdrop, pdrop_keeps
from jaxvlm.prune.sparsevlm import (
    BUDGETS_V15,
    BUDGETS_V20,
    SparseVLMStage,
    density_peak_merge,
    gravity_scores,
    rater_relevance,
    rater_scores,
    raters_from_relevance,
    recycle_counts,
    sparsevlm,
)
from jaxvlm.prune.tokencarve import TokenCarve, borda_points, carve, svd_contributions, tokencarve

METHODS = {
    "fastv": fastv,
    "pdrop": pdrop,
    "sparsevlm": sparsevlm,
    "himap": himap,
    "tokencarve": tokencarve,
    "illava": illava,
    "dart": dart,
    "divprune": divprune,
    "visionzip": visionzip,
}

__all__ = [
    "parse_schedule",
    "BUDGETS_V15", "BUDGETS_V20", "DART", "Debiased", "DivPrune", "FastV", "HiMAPImage", "HiMAPText",
    "ILLaVAStage", "METHODS", "PDropStage", "PRESETS", "SETTINGS", "Selection", "SparseVLMStage", "Stage",
    "StageContext", "TokenCarve", "VisionZip", "borda_points", "candidates", "carve", "dart", "dart_select",
    "debiased", "debiased_fastv", "debiased_himap", "debiased_illava", "debiased_pdrop", "debiased_sparsevlm",
    "debiased_tokencarve", "density_peak_merge", "divprune", "divprune_select", "fastv", "fastv_scores",
    "fold_lowest", "gravity_scores", "head_mean_probs", "himap", "illava", "key_l1", "last_token_rows",
    "pdrop", "pdrop_keeps", "pick_rows", "rater_relevance", "rater_scores", "raters_from_relevance",
    "recycle_counts", "sparsevlm", "summed_scores", "svd_contributions", "tokencarve", "top_k_slots",
    "visionzip", "visionzip_select",
]
